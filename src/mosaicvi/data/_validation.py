"""Checks on the user's MuData, with errors that say what is wrong, where, and what to do.

Nothing here writes to the MuData or copies a count matrix: sparse matrices are checked on
their stored values, dense ones block by block, and a backed (on-disk) matrix is read in
blocks. ``docs/reliability.md`` lists what is checked and when.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scipy import sparse

from ._backed import BLOCK_ROWS, read_rows, value_blocks

#: Rows of each modality whose counts are re-checked before training and by every getter
#: (:func:`sample_rows`): ``SAMPLED_RUNS`` runs of ``SAMPLED_RUN_LENGTH`` consecutive rows.
SAMPLED_RUNS, SAMPLED_RUN_LENGTH = 8, 128


def check_is_mudata(mdata) -> None:
    """Raise unless ``mdata`` is a :class:`~mudata.MuData`."""
    if isinstance(mdata, AnnData):
        raise TypeError(
            "mosaicvi needs a MuData object with one AnnData per modality, got an AnnData. "
            "Build one with `mudata.MuData({'rna': adata_rna, 'protein': adata_protein})`."
        )
    if not isinstance(mdata, MuData):
        raise TypeError(f"Expected a mudata.MuData, got {type(mdata).__name__}.")


def _where(mod_key: str, layer: str | None) -> str:
    return f"mdata.mod['{mod_key}']" + (".X" if layer is None else f".layers['{layer}']")


def check_modality(mdata: MuData, mod_key: str, role: str) -> None:
    """Raise if ``mod_key`` is not a modality of ``mdata``."""
    if not isinstance(mod_key, str):
        raise TypeError(f"The modality name for {role} must be a string, got {mod_key!r}.")
    if mod_key not in mdata.mod:
        raise KeyError(
            f"Modality '{mod_key}' (given for {role}) is not in the MuData; its modalities are "
            f"{list(mdata.mod)}."
        )


def get_modality_matrix(mdata: MuData, mod_key: str, layer: str | None):
    """The matrix of ``mdata.mod[mod_key]`` at ``layer`` (``.X`` if ``None``), not copied."""
    adata = mdata.mod[mod_key]
    if layer is None:
        if adata.X is None:
            raise ValueError(f"{_where(mod_key, None)} is empty; pass the layer holding counts.")
        return adata.X
    if layer not in adata.layers:
        raise KeyError(
            f"Layer '{layer}' is not in mdata.mod['{mod_key}'].layers; available layers: "
            f"{list(adata.layers)}."
        )
    return adata.layers[layer]


def sample_rows(n_rows: int, seed: int = 0) -> np.ndarray:
    """Rows re-checked by :func:`check_count_matrix` with ``sampled=True``.

    Every row when there are at most ``SAMPLED_RUNS * SAMPLED_RUN_LENGTH`` (1,024) of them;
    otherwise ``SAMPLED_RUNS`` runs of ``SAMPLED_RUN_LENGTH`` consecutive rows at random
    starts (runs keep the reads of a backed file sequential).
    """
    if n_rows <= SAMPLED_RUNS * SAMPLED_RUN_LENGTH:
        return np.arange(n_rows)
    starts = np.random.default_rng(seed).integers(0, n_rows - SAMPLED_RUN_LENGTH, SAMPLED_RUNS)
    return np.unique((starts[:, None] + np.arange(SAMPLED_RUN_LENGTH)).ravel())


def check_count_matrix(
    mdata: MuData, mod_key: str, layer: str | None, sampled: bool = False, seed: int = 0
) -> bool:
    """Raise unless the modality holds non-negative integer counts (or NaN).

    NaN marks an entry that was not measured (``mosaicvi.data._features``); infinite
    values are refused.

    Every stored value is checked, or with ``sampled=True`` those of :func:`sample_rows`
    (the check run before training and by every getter, which catches a matrix normalised
    or log-transformed in place after setup). Boolean matrices (binarised ATAC) are counts.
    Returns whether the values checked hold NaN.
    """
    matrix = get_modality_matrix(mdata, mod_key, layer)
    where = _where(mod_key, layer)
    if matrix.shape[1] == 0:
        raise ValueError(
            f"{where} has no features (0 columns); drop modality '{mod_key}' from `modalities`."
        )
    if matrix.dtype == bool:
        return False
    if not np.issubdtype(matrix.dtype, np.number):
        raise TypeError(f"{where} has dtype {matrix.dtype}; raw counts must be numeric.")
    if sampled:
        block = read_rows(matrix, sample_rows(matrix.shape[0], seed))
        blocks = [block.data if sparse.issparse(block) else np.asarray(block)]
    else:
        blocks = value_blocks(matrix, BLOCK_ROWS)
    has_nan = False
    for block in blocks:
        has_nan = _check_count_values(block, where, sampled) or has_nan
    return has_nan


def _check_count_values(block: np.ndarray, where: str, sampled: bool) -> bool:
    after = (
        " (found in rows re-checked before training / by a getter: was the matrix normalised or "
        "transformed in place after `setup_mudata`? Keep raw counts in a layer and register it "
        "with `layers=`)"
        if sampled
        else ""
    )
    if np.isinf(block).any():
        raise ValueError(f"{where} contains infinite values; pass raw counts{after}.")
    has_nan = False
    if np.issubdtype(block.dtype, np.floating):  # NaN marks an unmeasured entry
        nan = np.isnan(block)
        has_nan = bool(nan.any())
        block = block[~nan]
    if (block < 0).any():
        raise ValueError(
            f"{where} contains negative values; mosaicvi's likelihoods need raw counts "
            f"(the layer before normalisation / log-transformation){after}."
        )
    if not np.array_equal(block, np.round(block)):
        raise ValueError(
            f"{where} contains non-integer values; mosaicvi's count likelihoods need raw "
            f"integer counts. Pass the layer that holds them with `layers=`{after}."
        )
    return has_nan


def column_order(registered, current, where: str) -> np.ndarray | None:
    """Position in ``current`` of each ``registered`` feature; ``None`` if they are equal.

    A modality whose features are the registered ones in another order is read in the
    registered order (nothing is copied); any other difference is an error that names the
    missing and unexpected features.
    """
    registered, current = pd.Index(np.asarray(registered).astype(str)), pd.Index(current)
    if current.equals(registered):
        return None
    if len(current) == len(registered) and current.is_unique and registered.is_unique:
        order = current.get_indexer(registered)
        if (order >= 0).all():
            return order
    missing, extra = registered.difference(current), current.difference(registered)
    if not len(missing) and not len(extra):
        raise ValueError(
            f"{where} has duplicated feature names, so its features cannot be matched to the "
            "model's by name; make them unique (`var_names_make_unique()`)."
        )
    raise ValueError(
        f"{where} does not have the features the model was set up with: {len(missing)} "
        f"missing (e.g. {list(missing[:3])}), {len(extra)} not in the model (e.g. "
        f"{list(extra[:3])}). Subset it to the model's features (same names; order does not "
        "matter)."
    )


def check_categorical_column(mdata: MuData, column: str, role: str) -> None:
    """Raise if ``mdata.obs[column]`` is missing or has missing values."""
    if column not in mdata.obs.columns:
        raise KeyError(
            f"Column '{column}' (given for {role}) is not in mdata.obs; columns are "
            f"{list(mdata.obs.columns)}. For MuData, put cell annotations in the global "
            "mdata.obs."
        )
    if pd.isna(mdata.obs[column]).any():
        raise ValueError(
            f"mdata.obs['{column}'] (given for {role}) has {int(pd.isna(mdata.obs[column]).sum())}"
            " missing value(s); every cell needs a category."
        )


def check_numeric_column(mdata: MuData, column: str) -> None:
    """Raise if ``mdata.obs[column]`` is missing, non-numeric or not finite."""
    if column not in mdata.obs.columns:
        raise KeyError(
            f"Continuous covariate '{column}' is not in mdata.obs; columns are "
            f"{list(mdata.obs.columns)}."
        )
    values = mdata.obs[column]
    if not pd.api.types.is_numeric_dtype(values):
        raise TypeError(f"Continuous covariate mdata.obs['{column}'] must be numeric.")
    if not np.isfinite(values.to_numpy(dtype=float)).all():
        raise ValueError(f"Continuous covariate mdata.obs['{column}'] has NaN or inf values.")
