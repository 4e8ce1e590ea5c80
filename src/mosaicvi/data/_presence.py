"""Which cell has which modality, whether paired cells agree, and whether a modality looks padded.

Membership comes from MuData itself (``mdata.obsm`` / ``mdata.obsmap``), optionally restricted
by a boolean presence column of ``mdata.obs`` for padded MuData. Nothing here writes to the
MuData; matrices are read in blocks.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from mudata import MuData
from scipy import sparse

from ._backed import BLOCK_ROWS, csr_indptr, is_backed, row_blocks


def modality_rows(mdata: MuData, mod_key: str, presence_key: str | None) -> np.ndarray:
    """Row of each MuData cell in ``mdata.mod[mod_key]``; ``-1`` where the cell lacks it.

    Membership comes from ``mdata.obsm[mod_key]`` (maintained by MuData), optionally restricted
    by the boolean column ``mdata.obs[presence_key]`` for padded MuData.
    """
    stale = (
        f"The MuData is out of date: mdata.obsmap['{mod_key}'] does not match "
        f"mdata.mod['{mod_key}'] (a modality replaced or subset after the MuData was built?). "
        "Call `mdata.update()` after changing its modalities."
    )
    if mod_key not in mdata.obsmap or mod_key not in mdata.obsm:
        raise ValueError(stale)
    rows = np.asarray(mdata.obsmap[mod_key]).reshape(-1).astype(np.int64) - 1
    member = np.asarray(mdata.obsm[mod_key]).reshape(-1).astype(bool)
    adata = mdata.mod[mod_key]
    if (
        len(rows) != mdata.n_obs
        or not np.array_equal(member, rows >= 0)
        or rows.max(initial=-1) >= adata.n_obs
        or not np.array_equal(
            np.asarray(adata.obs_names)[rows[member]], np.asarray(mdata.obs_names)[member]
        )
    ):
        raise ValueError(stale)
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
    if values.dtype != bool and not isinstance(values.dtype, pd.BooleanDtype):
        raise TypeError(
            f"Presence column mdata.obs['{column}'] for modality '{mod_key}' must be boolean "
            f"(True where the cell was measured), got dtype {values.dtype}."
        )
    if values.isna().any():
        raise ValueError(
            f"Presence column mdata.obs['{column}'] for modality '{mod_key}' has "
            f"{int(values.isna().sum())} missing value(s); say True or False for every cell."
        )
    return values.to_numpy(dtype=bool)


def check_pairing(mdata: MuData, mod_keys: list[str], rows: dict[str, np.ndarray]) -> None:
    """Raise if cells paired by MuData disagree on an annotation their modalities both carry.

    MuData pairs the observations of its modalities by name: an RNA-only cell and a
    protein-only cell that share a barcode become one cell "measured" in both. When both
    modalities' own ``obs`` hold the same categorical column (e.g. ``sample``, ``batch``,
    ``donor``) with different values for such a cell, the pairing is false.
    """
    for i, a in enumerate(mod_keys):
        for b in mod_keys[i + 1 :]:
            both = (rows[a] >= 0) & (rows[b] >= 0)
            if not both.any():
                continue
            obs_a, obs_b = mdata.mod[a].obs, mdata.mod[b].obs
            for column in obs_a.columns.intersection(obs_b.columns):
                if pd.api.types.is_numeric_dtype(obs_a[column]) and not isinstance(
                    obs_a[column].dtype, pd.CategoricalDtype
                ):
                    continue
                va = obs_a[column].astype(str).to_numpy()[rows[a][both]]
                vb = obs_b[column].astype(str).to_numpy()[rows[b][both]]
                differ = va != vb
                if differ.any():
                    k = int(np.flatnonzero(differ)[0])
                    name = np.asarray(mdata.obs_names)[both][k]
                    raise ValueError(
                        f"{int(differ.sum())} cell(s) are paired across modalities '{a}' and "
                        f"'{b}' but have different '{column}' in them (e.g. '{name}': "
                        f"'{va[k]}' vs '{vb[k]}'). MuData pairs observations by name, so "
                        "different cells that share a barcode become one cell measured in "
                        "both. Make barcodes unique per sample (e.g. prefix the sample name) "
                        "before building the MuData."
                    )


def zero_rows(matrix, rows: np.ndarray) -> np.ndarray:
    """Whether each of the rows ``rows`` of ``matrix`` is empty (read in blocks).

    A CSR row is empty when it stores no value (read from ``indptr`` alone); other formats
    are read in blocks and a row is empty when all its values are 0.
    """
    if sparse.issparse(matrix) and matrix.format == "csr":
        return np.diff(matrix.indptr)[rows] == 0
    if is_backed(matrix) and getattr(matrix, "format", None) == "csr":
        return np.diff(csr_indptr(matrix))[rows] == 0
    out = np.empty(len(rows), dtype=bool)
    for start, block in row_blocks(matrix, rows, BLOCK_ROWS):
        out[start : start + BLOCK_ROWS] = np.asarray((block != 0).sum(1)).ravel() == 0
    return out


def warn_if_padded(
    matrix, rows: np.ndarray, batches: np.ndarray, categories: list[str], data_type: str
) -> None:
    """Warn when a modality without a presence column looks padded with all-zero rows.

    ``rows`` are the rows of ``matrix`` of the cells that have the modality, ``batches``
    their batch codes.

    Padded MuData (every cell in every modality, zeros where a cell was not measured) is
    what MULTIVI-style pipelines produce; without ``presence_keys`` mosaicvi models those
    zeros as measured. The heuristic: a batch of at least 10 cells whose rows are all empty,
    or more than a quarter of all rows empty.
    """
    if len(rows) < 10:
        return
    empty = zero_rows(matrix, rows)
    cells = np.bincount(batches, minlength=len(categories))
    empty_cells = np.bincount(batches, weights=empty, minlength=len(categories))
    whole = [categories[b] for b in np.flatnonzero((cells >= 10) & (empty_cells == cells))]
    if whole or empty.mean() > 0.25:
        what = (
            f"every cell of batch(es) {whole[:5]} has"
            if whole
            else f"{empty.mean():.0%} of the cells have"
        )
        warnings.warn(
            f"In '{data_type}', {what} no counts. If these cells were not measured in "
            f"'{data_type}' (a padded MuData), pass `presence_keys={{'{data_type}': column}}` "
            "with a boolean column of mdata.obs that is False for them; otherwise they are "
            "modelled as measured cells with zero counts.",
            UserWarning,
            stacklevel=3,
        )
