"""Post-training methods of MosaicVI: latents given any modalities, imputation, predictive draws."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import sparse
import torch
from mudata import MuData

from mosaicvi._constants import MODULE_KEYS, REGISTRY_KEYS, counts_key
from mosaicvi.data._validation import check_int, check_is_mudata


def _check_indices(indices, n_obs: int, name: str = "indices") -> np.ndarray:
    """``indices`` (positions or a boolean mask over the cells) as checked positions.

    ``name`` is the argument's name in the errors.
    """
    if indices is None:
        return np.arange(n_obs)
    array = np.asarray(indices)
    if array.dtype == bool:
        if array.shape != (n_obs,):
            raise ValueError(
                f"A boolean `{name}` mask needs one value per cell ({n_obs}), got shape "
                f"{array.shape}."
            )
        array = np.flatnonzero(array)
    elif array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise TypeError(
            f"`{name}` must be integer positions of cells or a boolean mask over them, got "
            f"{array.dtype} of shape {array.shape}."
        )
    elif n_obs > 2 and array.shape == (n_obs,) and np.isin(array, (0, 1)).all():
        warnings.warn(
            f"`{name}` holds only 0 and 1, one value per cell: it is read as cell positions "
            "0 and 1. For a mask, pass booleans (`.astype(bool)`).",
            UserWarning,
            stacklevel=3,
        )
    if array.size == 0:
        raise ValueError(f"`{name}` selects no cell; pass at least one (or None for all).")
    if array.min() < 0 or array.max() >= n_obs:
        raise IndexError(
            f"`{name}` must be cell positions in [0, {n_obs}), got values from {array.min()} "
            f"to {array.max()}."
        )
    return array.astype(np.int64)


class MosaicPredictionMixin:
    """Latent representations and imputed modalities for every cell."""

    # ----------------------------------------------------------------- helpers
    def _check_given(self, given: Sequence[str] | None) -> list[str] | None:
        if given is None:
            return None
        if isinstance(given, str):
            given = [given]
        unknown = set(given) - set(self.registered_modalities)
        if unknown or not given:
            raise ValueError(
                f"`given` must be a non-empty subset of the registered modalities "
                f"{self.registered_modalities}, got {list(given)}."
            )
        return list(given)

    def _prepare(self, adata, indices, given, batch_size):
        """The validation gate of every getter.

        Returns the data (set up from the model's registry if new) re-checked by
        :meth:`~mosaicvi.data.MosaicDataManager.check_data`, the cells, ``given`` and a
        data loader.
        """
        if adata is not None:
            check_is_mudata(adata)
        if batch_size is not None:
            check_int("batch_size", batch_size)
        mdata = self._validate_anndata(adata)
        manager = self.get_anndata_manager(mdata, required=True)
        self._read_nan(manager.check_data())
        given = self._check_given(given)
        indices = _check_indices(indices, mdata.n_obs)
        if given is not None:
            cols = [self.registered_modalities.index(m) for m in given]
            lacking = ~manager.presence(indices)[:, cols].any(axis=1)
            if lacking.any():
                raise ValueError(
                    f"{int(lacking.sum())} of the requested cells have none of the modalities "
                    f"given={given}, so no latent can be inferred from them. Restrict `indices` "
                    "to cells that have them."
                )
        loader = self._make_data_loader(adata=mdata, indices=indices, batch_size=batch_size)
        return mdata, indices, given, loader

    def _read_nan(self, modalities: list[str]) -> None:
        """Let the heads of ``modalities`` read NaN as unmeasured entries.

        Data given to a getter (or changed in place) may hold NaN where the training data
        did not; a head finds NaN per minibatch only when told to (no cost otherwise).
        """
        for mod in modalities:
            if mod in self.module.heads:
                self.module.heads[mod].nan_entries = True

    def _feature_names(self, mod: str) -> np.ndarray:
        return np.asarray(self.adata_manager.get_state_registry(counts_key(mod))["column_names"])

    def _require(self, mod: str) -> None:
        if mod not in self.registered_modalities:
            raise ValueError(
                f"This model was not set up with '{mod}'; registered: {self.registered_modalities}."
            )

    def _decode_batches(self, mdata: MuData, mod: str, transform_batch) -> tuple[list, np.ndarray]:
        """Batch codes to decode ``mod`` with, and which batch measured which feature.

        Returns the reference codes (those of ``transform_batch``, or every batch that has
        cells measured in ``mod``) and a boolean ``(n_batch, n_features)`` table: whether
        each batch measured ``mod`` and, in its panel, each feature (all False with
        ``transform_batch``: every cell is decoded under the reference batches).
        """
        manager = self.get_anndata_manager(mdata, required=True)
        categories = manager.batch_categories()
        n_features = len(self._feature_names(mod))
        if transform_batch is not None:
            single = isinstance(transform_batch, str) or np.ndim(transform_batch) == 0
            wanted = [str(b) for b in ([transform_batch] if single else transform_batch)]
            missing = [b for b in wanted if b not in categories]
            if missing or not wanted:
                raise ValueError(
                    f"`transform_batch` must name batches of the model (compared as strings), "
                    f"got {transform_batch!r}; the batches are {categories}."
                )
            return [categories.index(b) for b in wanted], np.zeros(
                (len(categories), n_features), bool
            )
        measured = np.isin(categories, self.measured_batches_[mod])
        table = np.repeat(measured[:, None], n_features, axis=1)
        panel = manager.feature_masks().get(mod)
        if panel is not None:
            table &= panel
        return list(np.flatnonzero(measured)), table

    @torch.inference_mode()
    def _denoised(
        self,
        mod: str,
        adata,
        indices,
        given,
        transform_batch,
        n_samples: int,
        batch_size: int | None,
        include_background: bool = False,
        sample_latent: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Denoised values of ``mod`` for the requested cells, from the latent given ``given``.

        With ``n_samples=1`` the latent is the posterior mean, or one posterior sample with
        ``sample_latent`` (differential analysis); with more, the average over samples.

        Without ``transform_batch``, a cell's feature is decoded with its own batch when
        that batch measured ``mod`` and that feature; otherwise the decodings under the
        batches that measured the feature are averaged (a batch that never measured a
        feature has no learned effect on it).
        """
        mdata, indices, given, loader = self._prepare(adata, indices, given, batch_size)
        blocks = self._denoised_blocks(
            mod, mdata, loader, given, transform_batch, n_samples, include_background,
            sample_latent,
        )  # fmt: skip
        return np.concatenate(list(blocks)), mdata.obs_names[indices]

    @torch.inference_mode()  # also while the caller iterates (torch wraps generators)
    def _denoised_blocks(
        self,
        mod: str,
        mdata: MuData,
        loader,
        given,
        transform_batch,
        n_samples: int,
        include_background: bool = False,
        sample_latent: bool = False,
        columns: slice | None = None,
    ):
        """The values of :meth:`_denoised` one minibatch of ``loader`` at a time.

        ``columns``: only these features of each minibatch are kept (copied off the device),
        so that the caller never holds more than the rows times the columns it asked for.
        """
        self._require(mod)
        check_int("n_samples", n_samples)
        reference, table = self._decode_batches(mdata, mod, transform_batch)
        # per reference batch and feature, its weight in the average: the batches that
        # measured the feature, or every reference batch if none did
        weights = table[reference].astype(np.float32)
        counts = weights.sum(0, keepdims=True)
        weights = np.where(counts > 0, weights / np.maximum(counts, 1), 1.0 / len(reference))
        module = self.module
        module.eval()
        for tensors in loader:
            posterior = module.posterior(tensors, given)
            qz, context = posterior[MODULE_KEYS.QZ], posterior[MODULE_KEYS.CONTEXT][mod]
            covariates = posterior[MODULE_KEYS.COVARIATES]
            own = covariates.batch
            use_own = torch.as_tensor(table, device=own.device)[own.view(-1).long()]
            w = torch.as_tensor(weights, device=own.device)
            total = 0.0
            for _ in range(n_samples):
                z = qz.loc if n_samples == 1 and not sample_latent else qz.sample()
                args = (mod, z, context, covariates, include_background)
                decoded = self._decode_under(own, *args) if use_own.any() else None
                if not use_own.all():
                    averaged = sum(
                        w[i] * self._decode_under(torch.full_like(own, b), *args)
                        for i, b in enumerate(reference)
                    )
                    decoded = (
                        averaged if decoded is None else torch.where(use_own, decoded, averaged)
                    )
                total = total + decoded
            values = total / n_samples
            yield (values if columns is None else values[:, columns]).cpu().numpy()

    def _decode_under(
        self, batch, mod, z, context, covariates, include_background: bool
    ) -> torch.Tensor:
        """Denoised ``mod`` (or its likelihood mean) decoded from ``z`` as if in ``batch``."""
        out = self.module.decode(mod, z, context, covariates.with_batch(batch))
        return out.px.mean if include_background else out.denoised

    def _frame(self, values, obs_names, mod, feature_list, return_numpy):
        names = self._feature_names(mod)
        if feature_list is not None:
            keep = np.isin(names, feature_list)
            values, names = values[:, keep], names[keep]
        if return_numpy:
            return values
        return pd.DataFrame(values, index=obs_names, columns=names)

    # ------------------------------------------------------------------ public
    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        given: Sequence[str] | None = None,
        give_mean: bool = True,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Latent representation of each cell.

        To use it with scanpy / muon: ``mdata.obsm["X_mosaicvi"] = model.get_latent_representation()``
        then ``sc.pp.neighbors(mdata, use_rep="X_mosaicvi")``.

        Parameters
        ----------
        adata
            MuData set up like the training data; the training data if ``None``.
        indices
            Cells to use; all if ``None``.
        given
            ``None``: the joint posterior from every modality each cell has. A list such as
            ``["rna"]``: the posterior from only those modalities (each cell must have at
            least one of them).
        give_mean
            Return the posterior mean; otherwise one sample.
        batch_size
            Minibatch size for inference.

        Returns
        -------
        ``(n_cells, n_latent)`` array.
        """
        self._check_if_trained(warn=False)
        _, _, given, loader = self._prepare(adata, indices, given, batch_size)
        module = self.module
        module.eval()
        latents = []
        for tensors in loader:
            qz = module.posterior(tensors, given)[MODULE_KEYS.QZ]
            latents.append((qz.loc if give_mean else qz.sample()).cpu().numpy())
        return np.concatenate(latents)

    def get_normalized_expression(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        given: Sequence[str] | None = None,
        transform_batch: str | Sequence[str] | None = None,
        gene_list: Sequence[str] | None = None,
        library_size: float = 1.0,
        n_samples: int = 1,
        batch_size: int | None = None,
        return_numpy: bool = False,
    ) -> pd.DataFrame | np.ndarray:
        """Denoised, normalised gene expression for every cell, measured in RNA or not.

        Parameters
        ----------
        adata, indices, given, batch_size
            As in :meth:`get_latent_representation`.
        transform_batch
            Decode as if cells were in this batch (or the average over these batches). By
            default a cell's own batch, or all batches with RNA if its own has none.
        gene_list
            Return only these genes.
        library_size
            Scale of the output: 1 gives frequencies, 1e4 counts per 10k.
        n_samples
            Latent samples to average; 1 uses the posterior mean.
        return_numpy
            Return an array instead of a DataFrame.

        Returns
        -------
        ``(n_cells, n_genes)`` DataFrame (cells by genes) or array.
        """
        self._check_if_trained(warn=False)
        values, names = self._denoised(
            "rna", adata, indices, given, transform_batch, n_samples, batch_size
        )
        return self._frame(values * library_size, names, "rna", gene_list, return_numpy)

    def get_accessibility_estimates(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        given: Sequence[str] | None = None,
        transform_batch: str | Sequence[str] | None = None,
        region_list: Sequence[str] | None = None,
        normalize_regions: bool = False,
        n_samples: int = 1,
        batch_size: int | None = None,
        return_numpy: bool = False,
    ) -> pd.DataFrame | np.ndarray:
        """Probability that each region is accessible (Bernoulli) or its frequency (Poisson).

        Parameters
        ----------
        adata, indices, given, transform_batch, n_samples, batch_size, return_numpy
            As in :meth:`get_normalized_expression`.
        region_list
            Return only these regions.
        normalize_regions
            Multiply by the learned region factors (Bernoulli likelihood only), giving the
            probability of observing the region at full cell depth.

        Returns
        -------
        ``(n_cells, n_regions)`` DataFrame or array.
        """
        self._check_if_trained(warn=False)
        values, names = self._denoised(
            "atac", adata, indices, given, transform_batch, n_samples, batch_size
        )
        if normalize_regions:
            values = self.module.heads["atac"].normalize_regions(values)
        return self._frame(values, names, "atac", region_list, return_numpy)

    def get_protein_expression(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        given: Sequence[str] | None = None,
        transform_batch: str | Sequence[str] | None = None,
        protein_list: Sequence[str] | None = None,
        include_background: bool = False,
        n_samples: int = 1,
        batch_size: int | None = None,
        return_numpy: bool = False,
    ) -> pd.DataFrame | np.ndarray:
        """Denoised protein (the foreground part of totalVI's mixture), in counts.

        Defined for every cell, including cells without protein data (imputation).

        Parameters
        ----------
        adata, indices, given, transform_batch, n_samples, batch_size, return_numpy
            As in :meth:`get_normalized_expression`.
        protein_list
            Return only these proteins.
        include_background
            Return the expected count including the background component (totalVI's
            ``include_protein_background``), i.e. the mixture mean, instead of the foreground.

        Returns
        -------
        ``(n_cells, n_proteins)`` DataFrame or array.
        """
        self._check_if_trained(warn=False)
        values, names = self._denoised(
            "protein",
            adata,
            indices,
            given,
            transform_batch,
            n_samples,
            batch_size,
            include_background,
        )
        return self._frame(values, names, "protein", protein_list, return_numpy)

    @torch.inference_mode()
    def posterior_predictive_sample(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        modality: str | None = None,
        given: Sequence[str] | None = None,
        n_samples: int = 1,
        feature_list: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> sparse.GCXS | dict[str, sparse.GCXS]:
        """Counts drawn from the posterior predictive distribution, for every cell.

        Each draw samples the latent from the cell's posterior (given its modalities, or
        ``given``), then counts from the likelihood, as scvi-tools'
        ``posterior_predictive_sample``. A modality a cell lacks is drawn too (imputed
        counts): its context is a typical value of the cell's batch (e.g. the running mean
        log library size of the batch's measured cells), and a cell whose batch never
        measured the modality is decoded under one of the batches that did, chosen at random
        for each draw.

        Parameters
        ----------
        adata, indices, given, batch_size
            As in :meth:`get_latent_representation`.
        modality
            Data type to draw (e.g. ``"rna"``); ``None``: every registered modality.
        n_samples
            Draws per cell.
        feature_list
            Return only these features (with ``modality``).

        Returns
        -------
        Sparse array (:class:`sparse.GCXS`) of shape ``(n_cells, n_features)`` if
        ``n_samples == 1``, else ``(n_cells, n_features, n_samples)``; a dict of them by
        modality when ``modality`` is ``None``.
        """
        self._check_if_trained(warn=False)
        check_int("n_samples", n_samples)
        if modality is None and feature_list is not None:
            raise ValueError("`feature_list` needs `modality`: features are per modality.")
        modalities = self.registered_modalities if modality is None else [modality]
        for mod in modalities:
            self._require(mod)
        mdata, _, given, loader = self._prepare(adata, indices, given, batch_size)
        keep = {mod: slice(None) for mod in modalities}
        if feature_list is not None:
            keep[modality] = np.isin(self._feature_names(modality), feature_list)
        draws = {mod: [] for mod in modalities}
        for samples in self._predictive_draws(mdata, loader, modalities, given, n_samples):
            for mod, x in samples.items():  # (n_samples, n_cells, n_features)
                x = x.permute(1, 2, 0)[:, keep[mod]].numpy()
                draws[mod].append(sparse.GCXS.from_numpy(x[..., 0] if n_samples == 1 else x))
        out = {mod: sparse.concatenate(d, axis=0) for mod, d in draws.items()}
        return out if modality is None else out[modality]

    def _predictive_draws(self, mdata, loader, modalities, given, n_samples):
        """Per minibatch, posterior predictive counts ``(n_samples, n_cells, n_features)``.

        A cell whose batch never measured a modality is decoded under one of the batches that
        did, chosen at random for each draw.
        """
        references = {mod: self._decode_batches(mdata, mod, None) for mod in modalities}
        module = self.module
        module.eval()
        for tensors in loader:
            own = tensors[REGISTRY_KEYS.BATCH].long()
            batch = {}
            for mod, (reference, table) in references.items():
                pick = torch.randint(len(reference), (n_samples, *own.shape))
                other = torch.as_tensor(reference)[pick]
                # a draw's batch is per cell: a batch that measured part of the panel
                # draws every feature under its own batch
                use_own = torch.as_tensor(table.any(1))[own.view(-1)].view_as(own)
                batch[mod] = torch.where(use_own[None], own[None], other)
            yield module.sample(tensors, n_samples, given, modalities, batch)

    @torch.inference_mode()
    def posterior_predictive_quantiles(
        self,
        modality: str,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        given: Sequence[str] | None = None,
        quantiles: Sequence[float] = (0.05, 0.5, 0.95),
        n_samples: int = 100,
        feature_list: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> dict[float, pd.DataFrame]:
        """Quantiles of the posterior predictive counts of ``modality``, per cell and feature.

        ``n_samples`` draws of :meth:`posterior_predictive_sample` (a latent from the cell's
        posterior given its modalities or ``given``, then counts from the likelihood) give,
        for every cell and feature, empirical quantiles on the count scale: e.g. the 5% and
        95% quantiles bound a nominal 90% predictive interval of a count the cell was not
        measured in. The quantiles are draws themselves (``method="nearest"``), so counts. Draws
        are reduced per minibatch, never held for every cell.

        Parameters
        ----------
        modality
            Data type to predict (e.g. ``"protein"``).
        adata, indices, given, batch_size
            As in :meth:`get_latent_representation`.
        quantiles
            Levels in [0, 1].
        n_samples
            Draws per cell (the quantiles' resolution: at least 20 for a 90% interval).
        feature_list
            Return only these features.

        Returns
        -------
        dict
            One ``(n_cells, n_features)`` DataFrame of counts per quantile level.
        """
        self._check_if_trained(warn=False)
        self._require(modality)
        check_int("n_samples", n_samples)
        levels = [float(q) for q in np.atleast_1d(quantiles)]
        if not levels or not all(0.0 <= q <= 1.0 for q in levels):
            raise ValueError(f"`quantiles` must be levels in [0, 1], got {quantiles!r}.")
        n_features = len(self._feature_names(modality))
        if batch_size is None:  # draws of one minibatch: at most ~2e7 values
            batch_size = int(max(1, min(128, 2e7 // (n_samples * n_features))))
        mdata, indices, given, loader = self._prepare(adata, indices, given, batch_size)
        keep = slice(None)
        if feature_list is not None:
            keep = np.isin(self._feature_names(modality), feature_list)
        parts = []
        for samples in self._predictive_draws(mdata, loader, [modality], given, n_samples):
            x = samples[modality][:, :, keep].cpu().numpy()
            parts.append(np.quantile(x, levels, axis=0, method="nearest"))
        values = np.concatenate(parts, axis=1)  # (n_levels, n_cells, n_features)
        names = self._feature_names(modality)[keep]
        cells = mdata.obs_names[indices]
        return {
            q: pd.DataFrame(values[i], index=cells, columns=names) for i, q in enumerate(levels)
        }
