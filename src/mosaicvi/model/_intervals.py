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

import math
import warnings
from collections.abc import Sequence
from numbers import Real

import numpy as np
import pandas as pd
import torch
from mudata import MuData
from scipy import sparse

from mosaicvi._constants import REGISTRY_KEYS
from mosaicvi.data._validation import check_int, check_is_mudata

from ._gate import _check_indices

#: Fewest calibration cells accepted.
MIN_CALIBRATION_CELLS = 20
#: Version of the calibration stored in ``interval_calibration_``.
CALIBRATION_FORMAT = 2
#: Situations of a cell lacking the modality (see the module notes).
SITUATIONS = ("cell", "batch")
STRATIFY = (None, "feature", "predicted")


def _level_key(level: float) -> str:
    return repr(float(level))  # distinct levels, distinct keys (0.9 and 0.9000001)


def _check_level(level, name: str = "level") -> float:
    """``level`` as a float in (0, 1), or an error naming ``name``."""
    if isinstance(level, bool) or not isinstance(level, Real) or not 0.0 < float(level) < 1.0:
        raise ValueError(
            f"`{name}` must be one nominal coverage, a number in (0, 1) such as 0.9, got "
            f"{level!r}."
        )
    return float(level)


def _check_levels(levels) -> list[float]:
    if isinstance(levels, (str, bytes)) or not isinstance(levels, Sequence) or not levels:
        raise ValueError(
            f"`levels` must be a non-empty sequence of numbers in (0, 1), got {levels!r}."
        )
    return sorted({_check_level(v, "levels") for v in levels})


def _log_interval(lower, mean, upper):
    """Centre (the predictive mean) and the two half-widths of the interval on ``log1p``.

    The half-widths reach the bounds' outer half-count edges, ``lower - 1/2`` and
    ``upper + 1/2`` (so scale 1 is the raw interval, and a count at a bound does not score
    exactly 1 everywhere), and are at least half the ``log1p`` step from the mean to one count
    more, so that a degenerate side can grow.
    """
    m = np.log1p(mean)
    floor = 0.5 * (np.log1p(mean + 1.0) - m)
    below = np.maximum(m - np.log(lower + 0.5), floor)
    above = np.maximum(np.log(upper + 1.5) - m, floor)
    return m, below, above


def _scores(lower, median, upper, mean, truth) -> np.ndarray:
    """The scale at which each count enters its interval; 0 for the median count."""
    m, below, above = _log_interval(lower, mean, upper)
    y = np.log1p(truth)
    scores = np.where(y < m, (m - y) / below, (y - m) / above)
    return np.where(truth == median, 0.0, scores)


def _scaled(lower, median, upper, mean, scale) -> tuple[np.ndarray, np.ndarray]:
    """Count bounds of the interval at ``scale``: the counts whose score is at most it."""
    m, below, above = _log_interval(lower, mean, upper)
    low, high = np.expm1(m - scale * below), np.expm1(m + scale * above)
    # a count whose score equals the scale is inside: the log1p / expm1 round trip (float32
    # draws) moves a bound by a few ulps of the count, more than an absolute 1e-6 when large
    low = np.clip(np.ceil(low - 1e-6 - 1e-6 * np.abs(low)), 0.0, None)
    high = np.floor(high + 1e-6 + 1e-6 * np.abs(high))
    return np.minimum(low, median), np.maximum(high, median)


def _pooled_scale(scores: np.ndarray, n_cells: int, level: float) -> float:
    """Smallest scale covering ``level * (n_cells + 1) / n_cells`` of the pooled scores.

    Conformal risk control with one unit per cell (the fraction of its pairs uncovered as its
    loss); above 1 (too few cells for the level), the largest score.
    """
    if scores.size == 0:
        return float("inf")
    target = level * (n_cells + 1) / n_cells
    flat = np.sort(scores, axis=None)
    if target > 1.0:
        return float(flat[-1])
    k = min(flat.size, max(1, math.ceil(target * flat.size - 1e-9)))
    return float(flat[k - 1])


def _fit_scales(scores, use, level, stratify, bins, n_bins) -> float | list[float]:
    """The calibrated scale(s) of one level from the scores of the pairs in ``use``.

    Pooled: :func:`_pooled_scale` over the cells with a pair in ``use``. Per feature: the
    ``ceil((n + 1) level)``-th smallest score of its ``n`` cells (split conformal over cells);
    a feature with too few cells for the level gets the pooled scale. Per bin of the
    predicted mean: the pooled scale of the bin's pairs (an empty bin: the pooled scale).
    """
    overall = _pooled_scale(scores[use], int(use.any(1).sum()), level)
    if stratify is None:
        return overall
    out = []
    if stratify == "feature":
        for j in range(scores.shape[1]):
            column = scores[use[:, j], j]
            k = math.ceil((column.size + 1) * level)
            out.append(float(np.partition(column, k - 1)[k - 1]) if k <= column.size else overall)
        return out
    for b in range(n_bins):
        inside = use & (bins == b)
        n_b = int(inside.any(1).sum())
        out.append(_pooled_scale(scores[inside], n_b, level) if n_b else overall)
    return out


def _binarised(head) -> bool:
    """Whether ``head`` models binarised counts (a Bernoulli ATAC head): compare ``x > 0``."""
    return getattr(head, "likelihood", None) == "bernoulli"


def _mean_or_nan(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else float("nan")


def _bin_of(mean: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    return np.searchsorted(np.asarray(edges), np.log1p(mean), side="right")


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

    def calibrate_intervals(
        self,
        modality: str,
        given: Sequence[str],
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        levels: Sequence[float] = (0.5, 0.8, 0.9),
        stratify: str | None = None,
        n_bins: int = 5,
        target: str = "all",
        n_samples: int = 100,
        batch_size: int | None = None,
    ) -> pd.DataFrame:
        """Fit the scales that make predictive intervals of ``modality`` from ``given`` cover.

        Cells measured in ``modality`` and in ``given`` are predicted from ``given`` only,
        decoded as if they lacked ``modality`` (the plug-in context; their own batch, or the
        other batches that measured ``modality``), and their intervals compared with their
        measured counts. One scale per level, situation and stratum is fit by split conformal
        prediction with one exchangeable unit per cell (see the module notes and
        ``docs/analysis.md``). The scales are stored in ``interval_calibration_`` (saved with
        the model) and used by :meth:`predictive_intervals`.

        Parameters
        ----------
        modality
            Data type whose intervals to calibrate.
        given
            The modalities it is predicted from, as it will be for cells that lack it.
        adata
            MuData holding the calibration cells; ``None``: the model's.
        indices
            Calibration cells. ``None``: the cells of the model's validation split (never
            trained on) that have ``modality`` and every ``given`` modality.
        levels
            Nominal coverages to calibrate.
        stratify
            ``None``: one scale per level; ``"feature"``: one per feature; ``"predicted"``:
            one per bin of the predicted mean count.
        n_bins
            Bins of the predicted mean count (``stratify="predicted"``).
        target
            The counts whose coverage is fit: ``"all"``, or ``"nonzero"``: only the calibration
            pairs with a non-zero count (the intervals stay functions of the prediction only).
            Where most counts are 0, intervals that contain the median count 0 cover the
            zeros, so the coverage of all counts is then above the level.
        n_samples
            Posterior predictive draws per cell.
        batch_size
            Minibatch size.

        Returns
        -------
        One row per situation (``"cell"``, ``"batch"``) and level: the scale (the mean over
        strata when stratified), the coverage of the calibration pairs before and after
        overall and on non-zero counts, the mean interval widths (counts) before and after,
        and the number of cells.
        """
        self._check_if_trained(warn=False)
        self._require(modality)
        check_int("n_samples", n_samples)
        check_int("n_bins", n_bins)
        levels = _check_levels(levels)
        if stratify not in STRATIFY:
            raise ValueError(
                f"`stratify` must be None, 'feature' or 'predicted', got {stratify!r}."
            )
        if target not in ("all", "nonzero"):
            raise ValueError(f"`target` must be 'all' or 'nonzero', got {target!r}.")
        given = self._check_given(given)
        if not given or modality in given:
            raise ValueError(
                f"`given` must list the modalities '{modality}' is predicted from (not "
                f"'{modality}' itself), e.g. ['rna'], got {given!r}."
            )
        if adata is not None:
            check_is_mudata(adata)
        mdata = self._validate_anndata(adata)
        manager = self.get_anndata_manager(mdata, required=True)
        presence = manager.presence()
        cols = [self.registered_modalities.index(m) for m in [modality, *given]]
        usable = presence[:, cols].all(axis=1)
        if indices is None:
            if adata is not None or getattr(self, "validation_indices", None) is None:
                raise ValueError("Pass `indices`: the calibration cells of `adata`.")
            cells = np.asarray(self.validation_indices, dtype=np.int64)
            cells = np.sort(cells[usable[cells]])
            source = "validation cells"
        else:
            cells = _check_indices(indices, mdata.n_obs)
            if len(np.unique(cells)) != len(cells):
                raise ValueError(
                    "`indices` lists a calibration cell more than once: each cell is one "
                    "exchangeable unit of the calibration. Pass each cell once."
                )
            if not usable[cells].all():
                raise ValueError(
                    f"{int((~usable[cells]).sum())} calibration cell(s) lack '{modality}' or a "
                    f"modality of given={given}: each must be measured in both."
                )
            source = "cells given"
        n = len(cells)
        if n < MIN_CALIBRATION_CELLS:
            raise ValueError(
                f"{n} {source} are measured in '{modality}' and {given}; calibration "
                f"needs at least {MIN_CALIBRATION_CELLS}. Pass `indices` with more."
            )
        rows = manager.modality_rows()[modality][cells]
        reader, _, _ = manager.measured_counts(modality)  # rows read in the model's order
        block = reader[rows]
        truth = block.toarray() if sparse.issparse(block) else np.asarray(block)
        # only measured entries calibrate: not a batch's unmeasured features, not NaN
        measured = ~np.isnan(truth) if np.issubdtype(truth.dtype, np.floating) else None
        batch_mask = manager.feature_masks().get(modality)
        if batch_mask is not None:
            by_batch = batch_mask[manager.batch_codes()[cells]]
            measured = by_batch if measured is None else measured & by_batch
        if measured is None:
            measured = np.ones(truth.shape, dtype=bool)
        truth = np.where(measured, truth, 0)
        if _binarised(self.module.heads[modality]):
            truth = (truth > 0).astype(truth.dtype)
        nonzero = (truth > 0) & measured
        quantiles = [0.5] + [q for lv in levels for q in ((1 - lv) / 2, (1 + lv) / 2)]
        use = nonzero if target == "nonzero" else measured
        if not use.any(1).sum() >= MIN_CALIBRATION_CELLS:
            raise ValueError(
                f"Fewer than {MIN_CALIBRATION_CELLS} calibration cells have a non-zero count of "
                f"'{modality}': target='nonzero' cannot be fit on them."
            )
        features = np.arange(truth.shape[1])
        scales, table, edges = {}, [], None
        for situation in SITUATIONS:
            _, _, q, mean, _ = self._interval_stats(
                modality, adata, cells, given, quantiles, n_samples, batch_size, situation
            )
            if stratify == "predicted" and edges is None:
                inner = np.linspace(0, 1, n_bins + 1)[1:-1]
                edges = np.unique(np.quantile(np.log1p(mean), inner)).tolist()
            bins = _bin_of(mean, edges) if stratify == "predicted" else None
            scales[situation] = {}
            stored = {"stratify": stratify, "bin_edges": edges, "scales": scales}
            for i, level in enumerate(levels):
                lower, median, upper = q[1 + 2 * i], q[0], q[2 + 2 * i]
                scores = _scores(lower, median, upper, mean, truth)
                n_strata = None if edges is None else len(edges) + 1
                scale = _fit_scales(scores, use, level, stratify, bins, n_strata)
                at_median = float((scores[use] == 0).mean())
                if target == "all" and at_median >= level and situation == SITUATIONS[0]:
                    warnings.warn(
                        f"{at_median:.0%} of the calibration counts of '{modality}' equal their "
                        f"predictive median (e.g. zeros), which every interval holds: the "
                        f"coverage of all counts cannot be brought down to {level:g}, and the "
                        "intervals shrink to the median, leaving the other counts uncovered. "
                        "target='nonzero' fits the coverage of the non-zero counts instead.",
                        UserWarning,
                        stacklevel=2,
                    )
                scales[situation][_level_key(level)] = scale
                each = self._scale_of(stored, situation, level, mean, features)
                low, high = _scaled(lower, median, upper, mean, each)
                before = (truth >= lower) & (truth <= upper)
                after = (truth >= low) & (truth <= high)
                table.append(
                    {
                        "situation": situation,
                        "level": level,
                        "scale": float(np.mean(scale)),
                        "coverage_before": _mean_or_nan(before[measured]),
                        "coverage_after": _mean_or_nan(after[measured]),
                        "coverage_nonzero_before": _mean_or_nan(before[nonzero]),
                        "coverage_nonzero_after": _mean_or_nan(after[nonzero]),
                        "width_before": float((upper - lower).mean()),
                        "width_after": float((high - low).mean()),
                        "n_cells": n,
                    }
                )
        calibration = dict(getattr(self, "interval_calibration_", None) or {})
        calibration[modality] = {
            "format": CALIBRATION_FORMAT,
            "given": list(given),
            "stratify": stratify,
            "target": target,
            "bin_edges": edges,
            "scales": scales,
            "n_cells": n,
        }
        self.interval_calibration_ = calibration
        return pd.DataFrame(table).set_index(["situation", "level"])
