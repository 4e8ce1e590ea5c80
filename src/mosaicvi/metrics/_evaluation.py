"""Evaluation helpers: label transfer across a mosaic, calibration and imputation accuracy."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from scipy import sparse, stats
from sklearn.neighbors import KNeighborsClassifier
from torchmetrics.functional.classification import multiclass_calibration_error


def knn_label_transfer_accuracy(
    embedding: np.ndarray,
    labels: np.ndarray,
    reference: np.ndarray,
    query: np.ndarray,
    n_neighbors: int = 15,
) -> float:
    """Accuracy of a k-NN classifier fit on reference cells and applied to query cells.

    Measures whether cells measured in different modalities land with their own cell type:
    e.g. fit on paired donors and predict an RNA-only donor.

    Parameters
    ----------
    embedding
        ``(n_cells, n_dims)`` representation (a latent space, PCA …).
    labels
        Cell-type label of each cell.
    reference, query
        Boolean masks (or indices) of the cells to fit on and to predict.
    n_neighbors
        Number of neighbours.

    Returns
    -------
    float
        Fraction of query cells whose predicted label equals their label.
    """
    labels = np.asarray(labels)
    clf = KNeighborsClassifier(n_neighbors=n_neighbors).fit(
        embedding[reference], labels[reference]
    )
    return float((clf.predict(embedding[query]) == labels[query]).mean())


def feature_correlation(
    predicted: np.ndarray,
    observed: np.ndarray,
    method: str = "pearson",
    axis: int = 0,
) -> np.ndarray:
    """Correlation between predicted and observed values per feature (``axis=0``) or per cell.

    Features (or cells) that are constant in either matrix, or hold NaN, get NaN; with a
    single cell (or feature) every correlation is NaN.

    Parameters
    ----------
    predicted, observed
        ``(n_cells, n_features)`` arrays, e.g. ``log1p`` imputed and held-out counts.
    method
        ``"pearson"`` or ``"spearman"``.
    axis
        0: one correlation per feature (column); 1: one per cell (row).

    Returns
    -------
    The correlations.
    """
    if method not in ("pearson", "spearman"):
        raise ValueError(f"`method` must be 'pearson' or 'spearman', got {method!r}.")
    if isinstance(axis, bool) or axis not in (0, 1):
        raise ValueError(f"`axis` must be 0 (per feature) or 1 (per cell), got {axis!r}.")
    if sparse.issparse(predicted) or sparse.issparse(observed):
        raise TypeError("`predicted` and `observed` must be dense arrays (`.toarray()`).")
    a, b = np.asarray(predicted, dtype=float), np.asarray(observed, dtype=float)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(
            f"`predicted` and `observed` must be 2-D arrays of the same shape, got {a.shape} "
            f"and {b.shape}."
        )
    if a.shape[axis] < 2:  # one cell (or feature): no correlation
        return np.full(a.shape[1 - axis], np.nan)
    if method == "spearman":  # Pearson of the ranks, per column (or row)
        a, b = stats.rankdata(a, axis=axis), stats.rankdata(b, axis=axis)
    with warnings.catch_warnings():  # a constant column is NaN, as documented
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return stats.pearsonr(a, b, axis=axis).statistic


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, n_bins: int = 15
) -> float:
    """Expected calibration error of predicted class probabilities (top-label, L1).

    The cells are binned by the probability of their predicted class into ``n_bins`` equal
    bins of [0, 1]; the ECE is the cell-weighted mean over bins of ``|accuracy - mean
    confidence|`` (Guo et al. 2017; computed by torchmetrics).

    Parameters
    ----------
    probabilities
        ``(n_cells, n_classes)`` probabilities (rows sum to 1), e.g.
        ``MosaicANVI.predict(soft=True)``.
    labels
        True class index of each cell, ``(n_cells,)`` integers in ``[0, n_classes)``.
    n_bins
        Number of confidence bins.
    """
    probs = np.asarray(probabilities, dtype=np.float64)
    values = np.asarray(labels)
    if not np.issubdtype(values.dtype, np.integer):
        as_float = np.asarray(values, dtype=np.float64) if values.dtype.kind in "fb" else None
        if as_float is None or not np.array_equal(as_float, np.round(as_float)):
            raise ValueError(
                "`labels` must be class indices (integers: the column of each cell's label "
                f"in `probabilities`), got {values.dtype} values."
            )
    if probs.ndim == 2 and (
        not np.isfinite(probs).all()
        or (probs < 0).any()
        or (probs > 1).any()
        or not np.allclose(probs.sum(1), 1.0, atol=1e-4)
    ):
        raise ValueError(
            "`probabilities` must be finite, in [0, 1], each row summing to 1 (predicted "
            "class probabilities)."
        )
    probs = torch.as_tensor(probs.astype(np.float32))
    target = torch.as_tensor(values.astype(np.int64))
    if probs.ndim != 2 or target.shape != (probs.shape[0],):
        raise ValueError(
            "`probabilities` must be (n_cells, n_classes) and `labels` (n_cells,), got "
            f"{tuple(probs.shape)} and {tuple(target.shape)}."
        )
    if target.numel() == 0:
        raise ValueError("No cell to score.")
    if target.min() < 0 or target.max() >= probs.shape[1]:
        raise ValueError(f"`labels` must be class indices in [0, {probs.shape[1]}).")
    return float(
        multiclass_calibration_error(
            probs, target, num_classes=probs.shape[1], n_bins=n_bins, norm="l1"
        )
    )
