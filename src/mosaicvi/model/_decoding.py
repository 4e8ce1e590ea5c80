"""Which batches decode a modality, the decoded values of every cell, their frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from mudata import MuData

from mosaicvi._checks import check_int
from mosaicvi._constants import MODULE_KEYS


class MosaicDecodingMixin:
    """Decoding under the batches that measured a modality (and a feature), in blocks."""

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
