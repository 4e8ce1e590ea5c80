"""Label prediction of MosaicANVI: probabilities, temperature scaling and conformal sets.

Calibration is fit per *combination of modalities* a prediction reads (e.g. ``"rna"``,
``"protein"``, ``"protein+rna"``): a held-out labeled cell measured in RNA and protein is
classified from each non-empty subset of its modalities, so that an RNA-only donor's
predictions are calibrated on predictions from RNA alone, the situation they are used in.
"""

from __future__ import annotations

import itertools
import logging
import math
import numbers
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from mudata import MuData
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from mosaicvi._checks import check_bool
from mosaicvi._constants import REGISTRY_KEYS
from mosaicvi.data._labels import label_categories as _categories
from mosaicvi.metrics import expected_calibration_error

from ._gate import _cells_by_name, _check_indices

logger = logging.getLogger(__name__)

#: Calibration cells kept per combination of modalities (a random subset above it).
MAX_CALIBRATION_CELLS = 20_000
#: Below this many held-out labeled cells, ``train`` does not calibrate (it warns).
MIN_CALIBRATION_CELLS = 10


def combination_key(modalities: Sequence[str]) -> str:
    """The key of a combination of modalities, e.g. ``"protein+rna"`` (sorted names)."""
    return "+".join(sorted(modalities))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature ``T`` minimising the negative log-likelihood of ``softmax(logits / T)``.

    Temperature scaling (Guo et al. 2017), searched over ``log T`` in ``[-3, 3]``.
    """

    def nll(log_t: float) -> float:
        logp = log_softmax(logits / math.exp(log_t), axis=1)
        return -float(logp[np.arange(len(labels)), labels].mean())

    result = minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded")
    return float(math.exp(result.x))


def conformal_threshold(scores: np.ndarray, level: float) -> float:
    """Split-conformal threshold: the ``ceil((n + 1) level)``-th smallest score (inf past n)."""
    n = len(scores)
    rank = math.ceil((n + 1) * level)
    if rank > n:
        return math.inf
    return float(np.sort(scores)[rank - 1])


class MosaicLabelMixin:
    """``predict``, ``calibrate`` and ``predict_sets`` of :class:`~mosaicvi.MosaicANVI`."""

    @property
    def label_categories(self) -> list[str]:
        """The label categories, in the order of ``predict(soft=True)``'s columns."""
        return _categories(self.adata_manager.get_state_registry(REGISTRY_KEYS.LABELS))

    def _label_codes(self, mdata: MuData, indices: np.ndarray) -> np.ndarray:
        manager = self.get_anndata_manager(mdata, required=True)
        field = next(f for f in manager.fields if f.registry_key == REGISTRY_KEYS.LABELS)
        state = manager.get_state_registry(REGISTRY_KEYS.LABELS)
        return field.cell_data(mdata, state)[indices, 0]

    @torch.inference_mode()
    def _label_logits(self, adata, indices, given, batch_size):
        """Logits of the cells and the key of the modalities each prediction reads."""
        self._check_if_trained(warn=False)
        mdata, indices, given, loader = self._prepare(adata, indices, given, batch_size)
        self.module.eval()
        logits = np.concatenate(
            [self.module.predict_logits(t, given).cpu().numpy() for t in loader]
        ).astype(np.float64)
        manager = self.get_anndata_manager(mdata, required=True)
        modalities = self.registered_modalities
        used = manager.presence(indices).copy()
        if given is not None:
            used &= np.isin(modalities, given)[None, :]
        patterns, inverse = np.unique(used, axis=0, return_inverse=True)
        names = [combination_key([m for m, u in zip(modalities, p) if u]) for p in patterns]
        keys = np.asarray(names, dtype=object)[inverse.reshape(-1)]
        return mdata, indices, logits, keys

    def _temperatures(self, keys: np.ndarray) -> np.ndarray:
        calibration = getattr(self, "label_calibration_", {}) or {}
        missing = sorted(set(keys) - set(calibration))
        if missing:
            warnings.warn(
                f"No calibration for predictions from {missing}: their probabilities are the "
                f"classifier's, uncalibrated (calibrated: {sorted(calibration) or 'none'}). "
                "`calibrate` with held-out labeled cells measured in these modalities.",
                UserWarning,
                stacklevel=3,
            )
        return np.array([calibration.get(k, {}).get("temperature", 1.0) for k in keys])

    def predict(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        *,
        given: Sequence[str] | None = None,
        soft: bool = False,
        batch_size: int | None = None,
        calibrated: bool = True,
    ) -> np.ndarray | pd.DataFrame:
        """Predicted label of each cell, from the modalities it has (or ``given``).

        Parameters
        ----------
        adata
            MuData set up like the training data (a query after
            :meth:`~mosaicvi.MosaicANVI.load_query_data`, new data, or ``None``: the
            model's).
        indices
            Cells to predict; all if ``None``.
        given
            Predict from only these modalities (each cell must have one of them); ``None``:
            every modality a cell has.
        soft
            Return the probability of each label (a DataFrame, cells x labels) instead of
            the most probable label.
        batch_size
            Minibatch size for inference.
        calibrated
            Scale the probabilities by the temperature fit on held-out labeled cells for
            the combination of modalities each prediction reads (:meth:`calibrate`); the
            most probable label is the same either way.

        Returns
        -------
        An array of labels (as strings: the registered categories), or with ``soft`` a
        DataFrame of probabilities.
        """
        check_bool("soft", soft)
        check_bool("calibrated", calibrated)
        mdata, indices, logits, keys = self._label_logits(adata, indices, given, batch_size)
        labels = np.asarray(self.label_categories, dtype=object)
        if not soft:
            return labels[logits.argmax(1)]
        temperature = self._temperatures(keys) if calibrated else np.ones(len(keys))
        probs = softmax(logits / temperature[:, None], axis=1)
        return pd.DataFrame(probs, index=mdata.obs_names[indices], columns=labels)

    def predict_sets(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        *,
        given: Sequence[str] | None = None,
        level: float = 0.9,
        batch_size: int | None = None,
    ) -> pd.DataFrame:
        """Conformal prediction sets: the labels each cell may have, at coverage ``level``.

        Split-conformal prediction (Vovk et al.; Sadinle et al. 2019's least-ambiguous sets):
        the score of a held-out labeled cell is one minus the classifier's probability of
        its label, from the same combination of modalities as the prediction; a cell's set
        holds every label whose score is at most the ``ceil((n + 1) level)``-th smallest of
        the ``n`` calibration scores. A set may be empty (no label probable enough) when
        the classifier is more accurate than ``level`` asks: the sets then cover ``level``
        of the cells, not more; ask a higher level for sets that always hold a label. When the
        calibration cells and the predicted cells are exchangeable (same donors, batches
        and cell-type proportions), the set holds the true label with probability at least
        ``level``; cells from other batches or donors get no such guarantee (the benchmark
        reports the coverage measured on other donors, ``docs/benchmarks.md``).

        Parameters
        ----------
        adata, indices, given, batch_size
            As :meth:`predict`.
        level
            Target coverage, in (0, 1).

        Returns
        -------
        Boolean DataFrame, cells x labels: ``True`` for the labels in each cell's set
        (``.sum(1)`` is the set size).
        """
        if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < level < 1:
            raise ValueError(f"`level` must be a number in (0, 1), got {level!r}.")
        mdata, indices, logits, keys = self._label_logits(adata, indices, given, batch_size)
        calibration = getattr(self, "label_calibration_", {}) or {}
        missing = sorted(set(keys) - set(calibration))
        if missing:
            raise ValueError(
                f"No calibration for predictions from {missing} (calibrated: "
                f"{sorted(calibration) or 'none'}). Prediction sets need held-out labeled "
                "cells measured in these modalities: train with `train_size` below 1 (the "
                "labeled validation cells are used), or call `calibrate(adata, indices)`."
            )
        probs = softmax(logits, axis=1)
        sets = np.zeros(probs.shape, bool)
        for key in np.unique(keys):
            cells = keys == key
            scores = np.asarray(calibration[key]["scores"])
            threshold = conformal_threshold(scores, level)
            if math.isinf(threshold):
                warnings.warn(
                    f"{len(scores)} calibration cells for predictions from '{key}' are too few "
                    f"for level {level}: its sets hold every label (at least "
                    f"{math.ceil(level / (1 - level))} are needed).",
                    UserWarning,
                    stacklevel=2,
                )
            sets[cells] = 1.0 - probs[cells] <= threshold
        return pd.DataFrame(sets, index=mdata.obs_names[indices], columns=self.label_categories)

    def calibrate(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        *,
        labels: Sequence[str] | None = None,
        batch_size: int | None = None,
    ) -> pd.DataFrame:
        """Fit the temperature and the conformal scores on held-out labeled cells.

        For each non-empty subset of the modalities the cells have, the labeled cells
        measured in all of its modalities are classified from that subset alone; the
        temperature minimising the negative log-likelihood of their labels (temperature
        scaling) and their conformal scores (:meth:`predict_sets`) are stored in
        ``label_calibration_`` (saved with the model), replacing an earlier calibration.
        :meth:`~mosaicvi.MosaicANVI.train` calls it on the labeled cells of its
        validation set.

        The cells must not have been trained on with their labels: by default the
        labeled cells of the last training's validation set (held out of training
        entirely). Those come from the labeled batches; for predictions on other batches
        or donors (a query, an unlabeled donor), calibrate in that situation instead: mark
        a labeled batch unlabeled in ``labels_key`` for training and pass its cells and
        true ``labels`` here (``docs/model.md``, "Labels").

        Parameters
        ----------
        adata
            MuData set up like the training data, with labels; ``None``: the model's.
        indices
            Labeled cells to calibrate on (unlabeled ones among them are skipped);
            ``None`` with ``adata=None``: the last training's validation cells.
        labels
            The true label of each cell of ``indices`` (known labels of the model), when
            the data's ``labels_key`` column marks them unlabeled; ``None``: read from it.
        batch_size
            Minibatch size for inference.

        Returns
        -------
        One row per combination of modalities: number of cells, temperature, ECE of the
        classifier's probabilities and of the calibrated ones on these cells.
        """
        self._check_if_trained(warn=False)
        if adata is None and indices is None:
            names = getattr(self, "_held_out_cells", None)
            if names is None or len(names) == 0:
                raise ValueError(
                    "No held-out labeled cells are known to this model (it was loaded, or its "
                    "last training held none out: `train_size=1` and no "
                    "`calibration_batches`). Pass `indices` (and `labels`) of labeled cells "
                    "whose labels it did not train on."
                )
            indices = _cells_by_name(
                self.adata.obs_names, names, "labeled cells held out in training"
            )
        mdata = self._validate_anndata(adata)
        indices = _check_indices(indices, mdata.n_obs)
        if len(np.unique(indices)) != len(indices):
            raise ValueError(
                "`indices` repeats cells: each calibration cell must count once (the "
                "prediction sets' coverage assumes it)."
            )
        if labels is None and mdata is self.adata:
            trained = getattr(self, "_trained_label_cells", None)
            if trained is not None:
                seen = np.isin(self.adata.obs_names[indices], trained)
                if seen.any():
                    warnings.warn(
                        f"{int(seen.sum())} of the cells to calibrate on trained the classifier "
                        "with their labels: their probabilities are over-confident, so the "
                        "temperature and the prediction sets will be too (sets under-cover). "
                        "Calibrate on held-out labeled cells.",
                        UserWarning,
                        stacklevel=2,
                    )
        n_labels = len(self.label_categories)
        if labels is None:
            codes = self._label_codes(mdata, indices)
        else:
            labels = np.asarray(labels, dtype=object).astype(str)
            if labels.shape != indices.shape:
                raise ValueError(
                    f"`labels` must give one label per cell of `indices` ({len(indices)}), "
                    f"got {labels.shape[0] if labels.ndim else 'a scalar'}."
                )
            codes = pd.Categorical(labels, categories=self.label_categories).codes.astype(np.int64)
            if (codes < 0).any():
                raise ValueError(
                    f"`labels` holds labels the model does not know: "
                    f"{list(pd.unique(labels[codes < 0])[:5])}; known: {self.label_categories}."
                )
        indices, codes = indices[codes < n_labels], codes[codes < n_labels]
        if len(indices) == 0:
            raise ValueError("None of the cells to calibrate on is labeled.")
        presence = self.get_anndata_manager(mdata, required=True).presence(indices)
        modalities = self.registered_modalities
        rng = np.random.default_rng(0)
        calibration, rows = {}, []
        for size in range(1, len(modalities) + 1):
            for subset in itertools.combinations(range(len(modalities)), size):
                cells = presence[:, list(subset)].all(1)
                if not cells.any():
                    continue
                chosen = np.flatnonzero(cells)
                if len(chosen) > MAX_CALIBRATION_CELLS:
                    chosen = np.sort(rng.choice(chosen, MAX_CALIBRATION_CELLS, replace=False))
                given = [modalities[j] for j in subset]
                _, _, logits, _ = self._label_logits(mdata, indices[chosen], given, batch_size)
                truth = codes[chosen]
                key = combination_key(given)
                temperature = fit_temperature(logits, truth)
                if len(chosen) < MIN_CALIBRATION_CELLS:
                    warnings.warn(
                        f"Only {len(chosen)} held-out labeled cell(s) for predictions from "
                        f"'{key}': no temperature is fit (probabilities stay the classifier's) "
                        f"and their prediction sets rest on these few; at least "
                        f"{MIN_CALIBRATION_CELLS} are needed.",
                        UserWarning,
                        stacklevel=2,
                    )
                    temperature = 1.0
                elif abs(math.log(temperature)) > 2.99:
                    warnings.warn(
                        f"The temperature for predictions from '{key}' ran to the end of its "
                        f"range ({temperature:.3g}) on {len(chosen)} cells (e.g. every one "
                        "predicted right): not used (probabilities stay the classifier's).",
                        UserWarning,
                        stacklevel=2,
                    )
                    temperature = 1.0
                raw = softmax(logits, axis=1)
                scaled = softmax(logits / temperature, axis=1)
                scores = 1.0 - raw[np.arange(len(truth)), truth]
                calibration[key] = {
                    "n_cells": len(chosen),
                    "temperature": temperature,
                    "scores": [round(float(s), 7) for s in np.sort(scores)],
                }
                rows.append(
                    {
                        "modalities": key,
                        "n_cells": len(chosen),
                        "temperature": temperature,
                        "ece": expected_calibration_error(raw, truth),
                        "ece_calibrated": expected_calibration_error(scaled, truth),
                    }
                )
        self.label_calibration_ = calibration
        table = pd.DataFrame(rows).set_index("modalities")
        logger.info("Label calibration on held-out labeled cells:\n%s", table.to_string())
        return table
