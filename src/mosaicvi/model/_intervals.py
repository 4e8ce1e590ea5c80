"""Predictive intervals of imputed counts, and their calibration on cells with the truth.

The posterior predictive intervals of :meth:`~mosaicvi.MosaicVI.posterior_predictive_quantiles`
may be too narrow or too wide for a modality inferred from others. :meth:`calibrate_intervals`
fits, on cells that were measured in the modality, one *scale* per interval level by split
conformal prediction, in the situation the intervals are used in:

- **The modality hidden.** The calibration cells are predicted from ``given`` only and
  decoded as if they lacked the modality: with the plug-in context (e.g. a typical library
  size, not their own) and the batch policy of the cells the intervals are for. Two
  situations are fit: ``"cell"``, a cell lacking the modality in a batch that measured it
  (decoded under its own batch, with its batch's plug-in), and ``"batch"``, a cell of a batch
  that never measured it (decoded under the *other* batches that measured it, at random for
  each draw, with the average of their plug-ins). :meth:`predictive_intervals` applies to
  each cell the scale of its situation.
- **A score that can narrow and widen.** On the ``log1p`` scale, with ``c = log1p(mean)``
  the predictive mean and ``[a, b]`` the raw central interval (two draws), a count ``y``
  scores the factor by which the interval's half-width on its side must be scaled to reach
  it: ``(c - log1p(y)) / (c - log(a + 1/2))`` below the mean, ``(log1p(y) - c) /
  (log(b + 3/2) - c)`` above (the half-widths reach the bounds' outer half-count edges and
  are at least half a count), and 0 for the predictive median count, which every interval
  holds. The interval at scale ``s`` is the counts whose score is at most ``s``; ``s = 1`` is
  the raw interval, ``s < 1`` narrows it. The centre and half-widths vary continuously from
  pair to pair, so the scores of discrete counts have few ties and a scale can reach most
  coverages; the exception is a modality whose counts mostly equal the median (zeros of
  sparse RNA or ATAC), whose coverage of all counts cannot fall below that fraction.
- **One exchangeable unit per cell.** Pairs of one cell are not exchangeable, cells are. The
  pooled scale (``stratify=None``) is the smallest ``s`` whose coverage of the calibration
  pairs is at least ``level * (n + 1) / n`` for ``n`` cells: conformal risk control
  (Angelopoulos et al., 2022) with the fraction of a cell's features left uncovered as the
  cell's loss, which bounds the expected coverage of a new cell's features by ``level``.
  ``stratify="feature"``: one scale per feature, the ``ceil((n + 1) level)``-th smallest of
  its ``n`` cells' scores (split conformal per feature). ``stratify="predicted"``: one scale
  per bin of the predicted mean count (quantile bins over the calibration pairs), each as
  the pooled scale over the cells' pairs in the bin. ``target="nonzero"`` fits the coverage
  of the non-zero counts instead of all (the intervals remain functions of the prediction).

Coverage of new cells is then about ``level`` when they are exchangeable with the calibration
cells (same kind of cells, donors and batches); the validation split of the model's own data
is the default.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from mudata import MuData

from mosaicvi._checks import check_int
from mosaicvi._constants import REGISTRY_KEYS

from ._interval_scores import (
    CALIBRATION_FORMAT,
    SITUATIONS,
    _bin_of,
    _check_level,
    _level_key,
    _scaled,
)


class MosaicIntervalMixin:
    """``predictive_intervals`` and ``calibrate_intervals``."""

    # ---------------------------------------------------------------- draws
    def _interval_draws(self, mdata, loader, modality, given, n_samples, situation):
        """Per minibatch, ``(n_samples, n_cells, n_features)`` predictive counts and batches.

        ``situation=None``: as :meth:`posterior_predictive_sample` (a cell's own context).
        ``"cell"`` / ``"batch"``: decoded as if the cells lacked ``modality`` (see the module
        notes). Also yields whether each cell's batch measured ``modality``.
        """
        reference, table = self._decode_batches(mdata, modality, None)
        measured = table.any(1)  # the batches that measured the modality (whole-cell draws)
        refs = torch.as_tensor(reference)
        measured_t = torch.as_tensor(measured)
        module = self.module
        module.eval()
        head = module.heads[modality]
        for tensors in loader:
            own = tensors[REGISTRY_KEYS.BATCH].long()  # (n_cells, 1)
            use_own = measured_t[own.view(-1)]
            context = None
            if situation == "batch":
                # the batches that measured the modality, less the cell's own where others
                # exist: the cell is decoded as one of a batch that never measured it
                others = refs[None, :] != own
                others = torch.where(others.any(1, keepdim=True), others, torch.ones_like(others))
                weights = others.to(torch.float32)
                pick = torch.multinomial(weights, n_samples, replacement=True)  # (cells, draws)
                batch = refs[pick].T[..., None]
                table = head.plugin(refs.to(head.plugin_context.device)).cpu()
                ctx = (weights @ table.to(torch.float32)) / weights.sum(1, keepdim=True)
                context = {modality: ctx}
                use_own = torch.zeros_like(use_own)
            else:
                pick = torch.randint(len(reference), (n_samples, *own.shape))
                batch = torch.where(use_own.view_as(own)[None], own[None], refs[pick])
                if situation == "cell":
                    ctx = head.plugin(own.to(head.plugin_context.device)).cpu()
                    context = {modality: ctx}
            draws = module.sample(
                tensors, n_samples, given, [modality], {modality: batch}, context
            )[modality]
            yield draws, use_own.numpy()

    def _interval_stats(
        self, modality, adata, indices, given, quantiles, n_samples, batch_size, situation
    ):
        """Quantiles ``(n_q, n_cells, n_features)`` and means of the draws, and situations.

        The quantiles are draws (``method="nearest"``, as
        :meth:`~mosaicvi.MosaicVI.posterior_predictive_quantiles`).
        """
        n_features = len(self._feature_names(modality))
        if batch_size is None:  # draws of one minibatch: at most ~2e7 values
            batch_size = int(max(1, min(128, 2e7 // (n_samples * n_features))))
        mdata, indices, given, loader = self._prepare(adata, indices, given, batch_size)
        position = torch.as_tensor(
            np.round(np.asarray(quantiles) * (n_samples - 1)).astype(np.int64)
        )
        parts, means, own = [], [], []
        for draws, use_own in self._interval_draws(
            mdata, loader, modality, given, n_samples, situation
        ):
            draws = draws.to(torch.float32)
            parts.append(torch.sort(draws, dim=0).values[position].numpy())
            means.append(draws.mean(0).numpy())
            own.append(use_own)
        return (
            mdata,
            indices,
            np.concatenate(parts, axis=1),
            np.concatenate(means),
            np.concatenate(own),
        )

    # ----------------------------------------------------------- calibration
    def _stored_calibration(self, modality, level, given, calibrated) -> dict | None:
        """The calibration to apply (``None``: raw), or an error saying why there is none."""
        stored = (getattr(self, "interval_calibration_", None) or {}).get(modality)
        if calibrated is False:
            return None
        if stored is not None and stored.get("format") != CALIBRATION_FORMAT:
            raise ValueError(
                f"The stored calibration of '{modality}' intervals was fit by an older version "
                "of mosaicvi (offsets on measured cells) and is no longer used. Run "
                "`calibrate_intervals` again, or pass calibrated=False."
            )
        given = self._check_given(given)
        usable = (
            stored is not None
            and _level_key(level) in stored["scales"][SITUATIONS[0]]
            and given is not None
            and sorted(stored["given"]) == sorted(given)
        )
        if usable:
            return stored
        if calibrated is None:
            return None
        have = (
            "none"
            if stored is None
            else f"levels {list(stored['scales'][SITUATIONS[0]])} given {stored['given']}"
        )
        raise ValueError(
            f"No calibration of '{modality}' intervals at level {level:g} with "
            f"given={given} (calibrated: {have}). Run `calibrate_intervals` first."
        )

    @staticmethod
    def _scale_of(stored, situation, level, mean, features) -> np.ndarray | float:
        """The calibrated scale of each pair: per feature, bin or one for all."""
        scale = stored["scales"][situation][_level_key(level)]
        if stored["stratify"] == "feature":
            return np.asarray(scale, dtype=np.float64)[features][None, :]
        if stored["stratify"] == "predicted":
            return np.asarray(scale, dtype=np.float64)[_bin_of(mean, stored["bin_edges"])]
        return float(scale)

    def _calibrated_bounds(self, stored, level, lower, median, upper, mean, own, features):
        """Calibrated bounds: each cell scaled as in its situation."""
        low = np.empty_like(lower)
        high = np.empty_like(upper)
        for situation, rows in (("cell", own), ("batch", ~own)):
            if not rows.any():
                continue
            scale = self._scale_of(stored, situation, level, mean[rows], features)
            low[rows], high[rows] = _scaled(
                lower[rows], median[rows], upper[rows], mean[rows], scale
            )
        return low, high

    # ---------------------------------------------------------------- public
    def predictive_intervals(
        self,
        modality: str,
        level: float = 0.9,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        given: Sequence[str] | None = None,
        n_samples: int = 100,
        calibrated: bool | None = None,
        feature_list: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Central predictive interval of the counts of ``modality``, per cell and feature.

        The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the posterior predictive
        draws (as :meth:`~mosaicvi.MosaicVI.posterior_predictive_quantiles`), scaled about
        the predictive median by the scale that :meth:`calibrate_intervals` fit for this
        modality, level and ``given``: the scale of the ``"cell"`` situation for a cell whose
        batch measured ``modality``, of the ``"batch"`` situation otherwise.

        Parameters
        ----------
        modality
            Data type to predict.
        level
            Nominal coverage, one number in (0, 1), e.g. ``0.9``.
        adata, indices, given, n_samples, feature_list, batch_size
            As in :meth:`~mosaicvi.MosaicVI.posterior_predictive_quantiles`.
        calibrated
            ``None``: calibrated when :meth:`calibrate_intervals` was run for this modality,
            level and ``given``, raw otherwise; ``True``: calibrated, or an error; ``False``:
            raw.

        Returns
        -------
        ``(lower, upper)``, two ``(n_cells, n_features)`` DataFrames of counts.
        """
        self._check_if_trained(warn=False)
        self._require(modality)
        level = _check_level(level)
        check_int("n_samples", n_samples)
        if calibrated is not None and not isinstance(calibrated, bool):
            raise TypeError(f"`calibrated` must be None, True or False, got {calibrated!r}.")
        stored = self._stored_calibration(modality, level, given, calibrated)
        bounds = self._interval_bounds(
            modality, [level], adata, indices, given, n_samples, batch_size, stored
        )
        names = self._feature_names(modality)
        keep = np.ones(len(names), bool)
        if feature_list is not None:
            keep = np.isin(names, feature_list)
        low, high = bounds["raw" if stored is None else "calibrated"][level]
        cells = bounds["obs_names"]
        return (
            pd.DataFrame(low[:, keep], index=cells, columns=names[keep]),
            pd.DataFrame(high[:, keep], index=cells, columns=names[keep]),
        )

    def _interval_bounds(
        self, modality, levels, adata, indices, given, n_samples, batch_size, stored
    ) -> dict:
        """Raw (and with ``stored``, calibrated) bounds at ``levels`` from one set of draws.

        Returns ``{"raw": {level: (low, high)}, "calibrated": {...}, "obs_names": ...}``.
        """
        quantiles = [0.5] + [q for lv in levels for q in ((1 - lv) / 2, (1 + lv) / 2)]
        mdata, cells, q, mean, own = self._interval_stats(
            modality, adata, indices, given, quantiles, n_samples, batch_size, None
        )
        features = np.arange(q.shape[2])
        out = {"raw": {}, "calibrated": {}, "obs_names": mdata.obs_names[cells]}
        for i, level in enumerate(levels):
            lower, upper = q[1 + 2 * i], q[2 + 2 * i]
            out["raw"][level] = (lower, upper)
            if stored is not None:
                out["calibrated"][level] = self._calibrated_bounds(
                    stored, level, lower, q[0], upper, mean, own, features
                )
        return out
