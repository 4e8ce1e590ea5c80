"""Posterior predictive draws of any modality for every cell, and their quantiles."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import sparse
import torch
from mudata import MuData

from mosaicvi._checks import check_int
from mosaicvi._constants import REGISTRY_KEYS


class MosaicPredictiveMixin:
    """``posterior_predictive_sample`` and ``posterior_predictive_quantiles``."""

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
