"""Post-training methods of MosaicVI: latents given any modalities, and imputation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from mudata import MuData

from mosaicvi._constants import MODALITY_REGISTRY_KEYS, MODULE_KEYS, REGISTRY_KEYS


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

    def _field(self, registry_key: str, mdata: MuData) -> tuple:
        """The registered field under ``registry_key`` for ``mdata``, and its state registry."""
        manager = self.get_anndata_manager(mdata, required=True)
        field = next(f for f in manager.fields if f.registry_key == registry_key)
        return field, manager.get_state_registry(registry_key)

    def _presence(self, mdata: MuData, indices) -> np.ndarray:
        field, _ = self._field(REGISTRY_KEYS.PRESENCE, mdata)
        mask = field.mask(mdata)
        return mask if indices is None else mask[indices]

    def _batch_codes(self, mdata: MuData) -> tuple[np.ndarray, list[str]]:
        """Batch code of each cell of ``mdata`` and the batch categories, in code order."""
        field, state = self._field(REGISTRY_KEYS.BATCH, mdata)
        categories = [str(c) for c in next(iter(state["mappings"].values()), ["0"])]
        return field.cell_data(mdata, state)[:, 0], categories

    def _prepare(self, adata, indices, given, batch_size):
        mdata = self._validate_anndata(adata)
        given = self._check_given(given)
        if indices is None:
            indices = np.arange(mdata.n_obs)
        indices = np.asarray(indices)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        if given is not None:
            cols = [self.registered_modalities.index(m) for m in given]
            lacking = ~self._presence(mdata, indices)[:, cols].any(axis=1)
            if lacking.any():
                raise ValueError(
                    f"{int(lacking.sum())} of the requested cells have none of the modalities "
                    f"given={given}, so no latent can be inferred from them. Restrict `indices` "
                    "to cells that have them."
                )
        loader = self._make_data_loader(adata=mdata, indices=indices, batch_size=batch_size)
        return mdata, indices, given, loader

    def _feature_names(self, mod: str) -> np.ndarray:
        key = MODALITY_REGISTRY_KEYS[mod]
        return np.asarray(self.adata_manager.get_state_registry(key)["column_names"])

    def _require(self, mod: str) -> None:
        if mod not in self.registered_modalities:
            raise ValueError(
                f"This model was not set up with '{mod}'; registered: {self.registered_modalities}."
            )

    def _decode_batches(self, mdata: MuData, mod: str, transform_batch) -> tuple[list, np.ndarray]:
        """Batch codes to decode ``mod`` with, and which batches measured it.

        Returns the reference codes (those of ``transform_batch``, or every batch that has
        cells measured in ``mod``) and, per batch code, whether it measured ``mod``.
        """
        _, categories = self._batch_codes(mdata)
        if transform_batch is not None:
            wanted = [transform_batch] if isinstance(transform_batch, str) else transform_batch
            missing = [b for b in wanted if b not in categories]
            if missing:
                raise ValueError(f"transform_batch {missing} not among batches {categories}.")
            return [categories.index(b) for b in wanted], np.zeros(len(categories), bool)
        measured = np.isin(categories, self.measured_batches_[mod])
        return list(np.flatnonzero(measured)), measured

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
    ) -> tuple[np.ndarray, np.ndarray]:
        """Denoised values of ``mod`` for the requested cells, from the latent given ``given``.

        Without ``transform_batch``, a cell is decoded with its own batch when that batch has
        cells measured in ``mod``; otherwise the decodings under every batch that measured
        ``mod`` are averaged (a batch never measured in ``mod`` has no learned effect on it).
        """
        self._require(mod)
        mdata, indices, given, loader = self._prepare(adata, indices, given, batch_size)
        reference, measured = self._decode_batches(mdata, mod, transform_batch)
        module = self.module
        module.eval()
        out = []
        for tensors in loader:
            inference = module.inference(
                **module._get_inference_input(tensors), given=given, training_terms=False
            )
            generative_inputs = module._get_generative_input(tensors, inference)
            own = generative_inputs["batch_index"]
            use_own = torch.as_tensor(measured, device=own.device)[own.view(-1).long()]
            qz = inference[MODULE_KEYS.QZ]
            total = 0.0
            for _ in range(n_samples):
                inputs = {**generative_inputs, "z": qz.loc if n_samples == 1 else qz.sample()}
                decoded = None
                if use_own.any():
                    decoded = self._decode_one(mod, inputs, own, include_background)
                if not use_own.all():
                    averaged = sum(
                        self._decode_one(mod, inputs, torch.full_like(own, b), include_background)
                        for b in reference
                    ) / len(reference)
                    decoded = (
                        averaged
                        if decoded is None
                        else torch.where(use_own[:, None], decoded, averaged)
                    )
                total = total + decoded
            out.append((total / n_samples).cpu().numpy())
        return np.concatenate(out), mdata.obs_names[indices]

    def _decode_one(
        self, mod: str, inputs: dict, batch_index: torch.Tensor, include_background: bool
    ) -> torch.Tensor:
        """Denoised ``mod`` (or its likelihood mean) decoded from ``inputs`` under a batch."""
        outputs = self.module.generative(
            **{**inputs, "batch_index": batch_index, "components": None},
            sample_background=False,
            modalities=[mod],
        )
        if include_background:
            return outputs[MODULE_KEYS.PX][mod].mean
        return outputs[MODULE_KEYS.DENOISED][mod]

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
            outputs = module.inference(
                **module._get_inference_input(tensors), given=given, training_terms=False
            )
            qz = outputs[MODULE_KEYS.QZ]
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
        decoder = self.module.decoders["atac"]
        if normalize_regions and decoder.likelihood == "bernoulli":
            values = values * torch.sigmoid(decoder.region_factors).detach().cpu().numpy()
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
