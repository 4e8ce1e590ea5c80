"""Predictive intervals of imputed counts, and their calibration on cells with the truth.

The posterior predictive intervals of :meth:`~mosaicvi.MosaicVI.posterior_predictive_quantiles`
may be too narrow (or too wide) for a modality inferred from others. :meth:`calibrate_intervals`
fits, on cells that were measured in the modality but are predicted from ``given`` modalities
only, one offset per interval level by split conformal prediction on conformalised quantile
regression scores (Romano, Patterson & Candès, 2019) on the ``log1p`` scale. With ``n``
calibration pairs, the offset is the ``ceil((n + 1) * level) / n`` empirical quantile of the
scores ``max(log1p(lower) - log1p(y), log1p(y) - log1p(upper))``; the calibrated interval is
``[expm1(log1p(lower) - offset), expm1(log1p(upper) + offset)]``, rounded outwards to counts.
Coverage of new cells is then at least ``level`` when they are exchangeable with the
calibration cells (same kind of cells, donors and batches): the validation split of the
model's own data is the default.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from mudata import MuData
from scipy import sparse

from mosaicvi.data._validation import check_int

from ._mixins import _check_indices

#: Fewest calibration cells accepted.
MIN_CALIBRATION_CELLS = 20


def _level_key(level: float) -> str:
    return f"{level:g}"


def _check_levels(levels) -> list[float]:
    values = [float(v) for v in np.atleast_1d(levels)]
    if not values or not all(0.0 < v < 1.0 for v in values):
        raise ValueError(f"Interval levels must be in (0, 1), e.g. 0.9, got {levels!r}.")
    return values


def _widen(lower: np.ndarray, upper: np.ndarray, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """``[lower, upper]`` moved outwards by ``offset`` on the ``log1p`` scale, as counts."""
    low = np.floor(np.expm1(np.maximum(np.log1p(lower) - offset, 0.0)) + 1e-9)
    high = np.ceil(np.expm1(np.log1p(upper) + offset) - 1e-9)
    return np.minimum(low, high), high


def _scores(lower: np.ndarray, upper: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Conformity scores of conformalised quantile regression, on the ``log1p`` scale."""
    y = np.log1p(truth)
    return np.maximum(np.log1p(lower) - y, y - np.log1p(upper)).ravel()


class MosaicIntervalMixin:
    """``predictive_intervals`` and ``calibrate_intervals``."""

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

        The ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of
        :meth:`~mosaicvi.MosaicVI.posterior_predictive_quantiles`, widened (or narrowed) by
        the offset that :meth:`calibrate_intervals` fit for this modality, level and
        ``given``.

        Parameters
        ----------
        modality
            Data type to predict.
        level
            Nominal coverage, e.g. ``0.9``.
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
        (level,) = _check_levels(level)
        offset = self._interval_offset(modality, level, given, calibrated)
        quantiles = ((1 - level) / 2, (1 + level) / 2)
        q = self.posterior_predictive_quantiles(
            modality,
            adata=adata,
            indices=indices,
            given=given,
            quantiles=quantiles,
            n_samples=n_samples,
            feature_list=feature_list,
            batch_size=batch_size,
        )
        lower, upper = q[quantiles[0]], q[quantiles[1]]
        if offset is None:
            return lower, upper
        low, high = _widen(lower.to_numpy(), upper.to_numpy(), offset)
        return (
            pd.DataFrame(low, index=lower.index, columns=lower.columns),
            pd.DataFrame(high, index=upper.index, columns=upper.columns),
        )

    def calibrate_intervals(
        self,
        modality: str,
        given: Sequence[str],
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        levels: Sequence[float] = (0.5, 0.8, 0.9),
        n_samples: int = 100,
        batch_size: int | None = None,
    ) -> pd.DataFrame:
        """Fit the offsets that make predictive intervals of ``modality`` from ``given`` cover.

        Cells measured in ``modality`` and in ``given`` are predicted from ``given`` only and
        their intervals compared with their measured counts; one offset per level is fit by
        split conformal prediction (see the module notes and ``docs/analysis.md``). The
        offsets are stored in ``interval_calibration_`` (saved with the model) and used by
        :meth:`predictive_intervals`.

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
        n_samples
            Posterior predictive draws per cell.
        batch_size
            Minibatch size.

        Returns
        -------
        One row per level: the offset, the coverage of the calibration pairs before and after,
        and the number of cells and (cell, feature) pairs.
        """
        self._check_if_trained(warn=False)
        self._require(modality)
        check_int("n_samples", n_samples)
        levels = _check_levels(levels)
        given = self._check_given(given)
        if not given or modality in given:
            raise ValueError(
                f"`given` must list the modalities '{modality}' is predicted from (not "
                f"'{modality}' itself), e.g. ['rna'], got {given!r}."
            )
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
            if not usable[cells].all():
                raise ValueError(
                    f"{int((~usable[cells]).sum())} calibration cell(s) lack '{modality}' or a "
                    f"modality of given={given}: each must be measured in both."
                )
            source = "cells given"
        if len(cells) < MIN_CALIBRATION_CELLS:
            raise ValueError(
                f"{len(cells)} {source} are measured in '{modality}' and {given}; calibration "
                f"needs at least {MIN_CALIBRATION_CELLS}. Pass `indices` with more."
            )
        quantiles = sorted({q for lv in levels for q in ((1 - lv) / 2, (1 + lv) / 2)})
        q = self.posterior_predictive_quantiles(
            modality,
            adata=adata,
            indices=cells,
            given=given,
            quantiles=quantiles,
            n_samples=n_samples,
            batch_size=batch_size,
        )
        rows = manager.modality_rows()[modality][cells]
        reader, _, _ = manager.measured_counts(modality)  # rows read in the model's order
        block = reader[rows]
        truth = block.toarray() if sparse.issparse(block) else np.asarray(block)
        offsets, table = {}, []
        for level in levels:
            lower = q[(1 - level) / 2].to_numpy()
            upper = q[(1 + level) / 2].to_numpy()
            scores = _scores(lower, upper, truth)
            n = scores.size
            rank = min(1.0, math.ceil((n + 1) * level) / n)
            offset = float(np.quantile(scores, rank, method="higher"))
            low, high = _widen(lower, upper, offset)
            offsets[_level_key(level)] = offset
            table.append(
                {
                    "level": level,
                    "offset": offset,
                    "coverage_before": float(((truth >= lower) & (truth <= upper)).mean()),
                    "coverage_after": float(((truth >= low) & (truth <= high)).mean()),
                    "n_cells": len(cells),
                    "n_pairs": n,
                }
            )
        calibration = dict(getattr(self, "interval_calibration_", None) or {})
        calibration[modality] = {"given": list(given), "offsets": offsets, "n_cells": len(cells)}
        self.interval_calibration_ = calibration
        return pd.DataFrame(table).set_index("level")

    def _interval_offset(self, modality, level, given, calibrated) -> float | None:
        stored = (getattr(self, "interval_calibration_", None) or {}).get(modality)
        given = self._check_given(given)
        usable = (
            stored is not None
            and _level_key(level) in stored["offsets"]
            and given is not None
            and sorted(stored["given"]) == sorted(given)
        )
        if calibrated is False or (calibrated is None and not usable):
            return None
        if not usable:
            have = (
                "none"
                if stored is None
                else f"levels {list(stored['offsets'])} given {stored['given']}"
            )
            raise ValueError(
                f"No calibration of '{modality}' intervals at level {level:g} with "
                f"given={given} (calibrated: {have}). Run `calibrate_intervals` first."
            )
        return float(stored["offsets"][_level_key(level)])
