"""Checks on the user's MuData, with errors that say what is wrong, where, and what to do.

Nothing here writes to the MuData or copies a count matrix: sparse matrices are checked on
their stored values, dense ones block by block, and a backed (on-disk) matrix is read in
blocks.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData

from ._backed import value_blocks

_BLOCK_ROWS = 4096


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


def check_count_matrix(mdata: MuData, mod_key: str, layer: str | None) -> None:
    """Raise unless the modality holds finite, non-negative integer counts."""
    matrix = get_modality_matrix(mdata, mod_key, layer)
    where = _where(mod_key, layer)
    if not np.issubdtype(matrix.dtype, np.number):
        raise TypeError(f"{where} has dtype {matrix.dtype}; raw counts must be numeric.")
    for block in value_blocks(matrix, _BLOCK_ROWS):
        if not np.isfinite(block).all():
            raise ValueError(f"{where} contains NaN or infinite values; pass raw counts.")
        if (block < 0).any():
            raise ValueError(
                f"{where} contains negative values; mosaicvi's likelihoods need raw counts "
                "(the layer before normalisation / log-transformation)."
            )
        if not np.array_equal(block, np.round(block)):
            raise ValueError(
                f"{where} contains non-integer values; mosaicvi's count likelihoods need raw "
                "integer counts. Pass the layer that holds them with the `*_layer` argument."
            )


def modality_rows(mdata: MuData, mod_key: str, presence_key: str | None) -> np.ndarray:
    """Row of each MuData cell in ``mdata.mod[mod_key]``; ``-1`` where the cell lacks it.

    Membership comes from ``mdata.obsm[mod_key]`` (maintained by MuData), optionally restricted
    by the boolean column ``mdata.obs[presence_key]`` for padded MuData.
    """
    rows = np.asarray(mdata.obsmap[mod_key]).reshape(-1).astype(np.int64) - 1
    member = np.asarray(mdata.obsm[mod_key]).reshape(-1).astype(bool)
    if not np.array_equal(member, rows >= 0):
        raise ValueError(
            f"mdata.obsm['{mod_key}'] and mdata.obsmap['{mod_key}'] disagree; the MuData is "
            "out of date. Call `mdata.update()` after changing its modalities."
        )
    if presence_key is None:
        return rows
    flag = check_presence_column(mdata, presence_key, mod_key)
    if (flag & ~member).any():
        raise ValueError(
            f"mdata.obs['{presence_key}'] marks {int((flag & ~member).sum())} cell(s) as having "
            f"modality '{mod_key}' that are not observations of mdata.mod['{mod_key}']."
        )
    return np.where(flag, rows, -1)


def check_presence_column(mdata: MuData, column: str, mod_key: str) -> np.ndarray:
    """Return ``mdata.obs[column]`` as a boolean array, or raise if it is not boolean."""
    if column not in mdata.obs.columns:
        raise KeyError(
            f"Presence column '{column}' for modality '{mod_key}' is not in mdata.obs; "
            f"columns are {list(mdata.obs.columns)}."
        )
    values = mdata.obs[column]
    if values.dtype != bool:
        raise TypeError(
            f"Presence column mdata.obs['{column}'] for modality '{mod_key}' must be boolean "
            f"(True where the cell was measured), got dtype {values.dtype}."
        )
    return values.to_numpy()


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
