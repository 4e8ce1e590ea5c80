"""Checks on the user's MuData, with errors that say what is wrong, where, and what to do.

Nothing here writes to the MuData or copies a count matrix: sparse matrices are checked on
their stored values, dense ones block by block, and a backed (on-disk) matrix is read in
blocks. ``docs/reliability.md`` lists what is checked and when.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scipy import sparse

from ._backed import csr_indptr, is_backed, read_rows, row_blocks, value_blocks

_BLOCK_ROWS = 4096
#: Rows of each modality whose counts are re-checked before training and by every getter
#: (:func:`sample_rows`): ``SAMPLED_RUNS`` runs of ``SAMPLED_RUN_LENGTH`` consecutive rows.
SAMPLED_RUNS, SAMPLED_RUN_LENGTH = 8, 128


def check_int(name: str, value, minimum: int = 1) -> None:
    """Raise unless the argument ``name`` is an integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"`{name}` must be an integer, got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be at least {minimum}, got {value!r}.")


def check_bool(name: str, value) -> None:
    """Raise unless the argument ``name`` is ``True`` or ``False`` (NumPy's bool too)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"`{name}` must be True or False, got {value!r}.")


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
        blocks = value_blocks(matrix, _BLOCK_ROWS)
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
    for start, block in row_blocks(matrix, rows, _BLOCK_ROWS):
        out[start : start + _BLOCK_ROWS] = np.asarray((block != 0).sum(1)).ravel() == 0
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
