"""``calibrate_intervals``: the scales of predictive intervals, fit on cells with the truth."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
from mudata import MuData
from scipy import sparse

from mosaicvi._checks import check_int
from mosaicvi.data._validation import check_is_mudata

from ._gate import _cells_by_name, _check_indices
from ._interval_scores import (
    CALIBRATION_FORMAT,
    SITUATIONS,
    _bin_of,
    _binarised,
    _check_levels,
    _fit_scales,
    _level_key,
    _mean_or_nan,
    _scaled,
    _scores,
)

#: Fewest calibration cells accepted.
MIN_CALIBRATION_CELLS = 20
#: Stratifications of the calibration (``calibrate_intervals(stratify=)``).
STRATIFY = (None, "feature", "predicted")


class MosaicIntervalCalibrationMixin:
    """:meth:`~mosaicvi.MosaicVI.calibrate_intervals` (the method notes: ``_intervals``)."""

    def _remember_split(self, failed: bool = False) -> None:
        """Keep, by name and in memory, the cells training fit on and the validation cells.

        The default calibration cells are this training's validation cells that no training
        of this model fit on (a model trained again draws a new split). By name, so that a
        model given other data (``load(adata=...)``) never reads positions of the old data.
        A run that ``failed`` part-way may have fit on any cell: every cell counts as fitted.
        """
        names = self.adata.obs_names
        if failed:
            self._fitted_cells, self._validation_cells = names, names[:0]
            return
        if getattr(self, "_fitted_cells", None) is None:
            self._fitted_cells = names[:0]
        fit = getattr(self, "train_indices", None)
        fitted = self._fitted_cells
        if fit is not None:
            fitted = fitted.union(names[np.asarray(fit, dtype=np.int64)])
        self._fitted_cells = fitted
        validation = getattr(self, "validation_indices", None)
        if validation is None:
            self._validation_cells = None
            return
        cells = names[np.asarray(validation, dtype=np.int64)]
        self._validation_cells = cells[~cells.isin(fitted)]

    def _weights_of_unknown_history(self, fitted=None) -> None:
        """Weights from elsewhere (``load``, another model): which cells they fit is unknown.

        ``fitted``: the cell names known to be fitted (another model's, this session); by
        default every cell of the data counts as fitted, so that no default calibration
        cell can be one the weights were trained on.
        """
        self._fitted_cells = self.adata.obs_names if fitted is None else fitted
        self._validation_cells = None

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
            Calibration cells. ``None``: the cells of the last training's validation split
            that no training of this model fit on and that have ``modality`` and every
            ``given`` modality (known in the session that trained the model, not after
            ``load``: pass ``indices`` then).
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
        usable = manager.cells_with([modality, *given], every=True)
        if indices is None:
            names = getattr(self, "_validation_cells", None)
            if adata is not None or names is None:
                raise ValueError(
                    "Pass `indices`: the calibration cells of `adata` (a model knows its "
                    "validation cells only in the session it was trained in, not after `load`)."
                )
            if len(names) == 0:
                raise ValueError(
                    "No validation cell is left that no training of this model fit on "
                    "(`train_size=1`, a run that failed part-way, weights loaded or taken from "
                    "another model, whose training cells are unknown, or every cell fit on in "
                    "some training): pass `indices` of cells the model was not trained on."
                )
            cells = _cells_by_name(self.adata.obs_names, names, "validation cells")
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
