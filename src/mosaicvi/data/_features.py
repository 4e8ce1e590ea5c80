"""Which features each batch measured: mosaic data at the feature level.

CITE-seq studies combine antibody panels of different sizes, targeted RNA panels cover part
of the transcriptome, and peak sets differ between studies. Concatenated, a batch's
unmeasured features arrive as zero (or NaN) columns. ``FeatureMaskField`` (``_feature_field``)
records, per modality, which features each batch did **not** measure, so that the model leaves
them out of the likelihood and out of its experts' evidence, and imputes them
(``docs/model.md``, *Features unmeasured in a batch*):

- from the user (``setup_mudata(..., feature_masks=...)``);
- else, unless ``infer_feature_masks=False``, from the counts, as totalVI's protein batch
  mask: a feature with no count at all in a batch of at least ``MIN_BATCH_CELLS`` measured
  cells is unmeasured there, **if** the other batches' counts of that feature predict at
  least ``MIN_EXPECTED_COUNT`` counts in that batch (so a gene or peak that is merely rare is
  not masked) and, for RNA and ATAC, the batch lacks at least ``DEFAULT_MIN_SHARE`` of the
  modality's features that way (a smaller panel, not a few biological zeros; ``MIN_SHARE``), with
  a warning naming the batch, the modality and the number of features;
- NaN in a count matrix marks single entries as unmeasured (per cell and feature); the
  model finds them in each minibatch.

The registry keeps names (batch and feature names), so that a query's or a loaded model's
data are matched by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from mudata import MuData
from scipy import sparse

from ._backed import BLOCK_ROWS, row_blocks

#: Fewest measured cells of a batch for the heuristic to call a zero feature unmeasured.
MIN_BATCH_CELLS = 10
#: Fewest counts the other batches' mean predicts in the batch for the same.
MIN_EXPECTED_COUNT = 10.0
#: Fewest of a modality's features a batch must lack for the heuristic to mask them, by data
#: type (default ``DEFAULT_MIN_SHARE``). A protein panel loses single antibodies (totalVI masks
#: any); a gene or peak with no count where others predict some is more often biology (a
#: donor's genotype, a cell type the batch lacks: KIR3DL1, platelet genes in the PBMC donors)
#: than a smaller panel, which lacks a block of features.
MIN_SHARE = {"protein": 0.0}
DEFAULT_MIN_SHARE = 0.1
#: Key of ``mdata.mod[m].uns`` listing features that every cell of that AnnData lacks
#: (written by :meth:`~mosaicvi.MosaicVI.prepare_query_mudata` for a smaller query panel).
UNMEASURED_UNS_KEY = "mosaicvi_unmeasured_features"


def unmeasured_features(feature_masks, modalities) -> dict[str, dict[str, list[str]]]:
    """The user's ``feature_masks`` as ``{data type: {batch: [unmeasured feature names]}}``.

    Each value is a :class:`pandas.DataFrame` of booleans, batches by features, ``True``
    where the batch measured the feature (batches and features not in it: measured), or that
    dict form itself. Checked here; the names are checked against the data at registration.
    """
    if feature_masks is None:
        return {}
    if not isinstance(feature_masks, Mapping):
        raise TypeError(
            "`feature_masks` must be a dict from data type to a DataFrame of booleans (batches "
            f"by features, True where measured), got {type(feature_masks).__name__}."
        )
    extra = set(feature_masks) - set(modalities)
    if extra:
        raise ValueError(
            f"`feature_masks` names data type(s) {sorted(extra)} not in `modalities`."
        )
    out = {}
    for mod, value in feature_masks.items():
        if isinstance(value, pd.DataFrame):
            values = value.to_numpy()
            if values.dtype != bool:
                raise TypeError(
                    f"`feature_masks['{mod}']` must hold booleans (True where the batch "
                    f"measured the feature), got dtype {values.dtype}."
                )
            if not value.index.is_unique or not value.columns.is_unique:
                raise ValueError(
                    f"`feature_masks['{mod}']` has repeated batches or features: its index "
                    "(batches) and columns (features) must be unique."
                )
            out[mod] = {
                str(batch): [str(f) for f in value.columns[~row]]
                for batch, row in zip(value.index, values)
                if not row.all()
            }
        elif isinstance(value, Mapping):
            out[mod] = {}
            for batch, names in value.items():
                if isinstance(names, str) or not isinstance(names, Iterable):
                    raise TypeError(
                        f"`feature_masks['{mod}'][{batch!r}]` must be a list of the feature names "
                        f"that batch did not measure, got {type(names).__name__} {names!r}."
                    )
                names = list(names)
                bad = [n for n in names if not isinstance(n, str)]
                if bad:
                    raise TypeError(
                        f"`feature_masks['{mod}'][{batch!r}]` must list feature names (strings, "
                        f"as in var_names), got {bad[:3]!r}."
                    )
                if names:
                    out[mod][str(batch)] = list(dict.fromkeys(names))
        else:
            raise TypeError(
                f"`feature_masks['{mod}']` must be a DataFrame of booleans (batches by "
                f"features, True where measured), got {type(value).__name__}."
            )
    return out


def _batch_names(mdata: MuData, batch_key: str | None) -> np.ndarray:
    if batch_key is None:
        return np.full(mdata.n_obs, "0", dtype=object)
    return mdata.obs[batch_key].astype(str).to_numpy()


def batch_feature_totals(matrix, rows: np.ndarray, codes: np.ndarray, n_batch: int, order):
    """Per batch, each feature's total count (NaN as 0), ``(n_batch, n_features)``.

    ``rows`` are the matrix rows of the measured cells, ``codes`` their batch codes, ``order``
    the column of each registered feature (``None``: stored order). Read in blocks (backed
    matrices too).
    """
    n_features = matrix.shape[1] if order is None else len(order)
    totals = np.zeros((n_batch, n_features))
    for start, block in row_blocks(matrix, rows, BLOCK_ROWS):
        block_codes = codes[start : start + block.shape[0]]
        indicator = sparse.csr_matrix(
            (np.ones(len(block_codes)), (block_codes, np.arange(len(block_codes)))),
            shape=(n_batch, len(block_codes)),
        )
        if sparse.issparse(block):
            block = sparse.csr_matrix(block, dtype=np.float64)
            block.data[np.isnan(block.data)] = 0.0
        else:
            block = np.nan_to_num(np.asarray(block, dtype=np.float64), nan=0.0)
        summed = indicator @ block
        summed = summed.toarray() if sparse.issparse(summed) else np.asarray(summed)
        totals += summed if order is None else summed[:, order]
    return totals


def infer_unmeasured(totals: np.ndarray, n_cells: np.ndarray) -> np.ndarray:
    """Where the heuristic calls a feature unmeasured in a batch, ``(n_batch, n_features)``.

    A feature is unmeasured in batch ``b`` when ``b`` has at least ``MIN_BATCH_CELLS``
    measured cells, no count of it, and the other batches' mean count per cell times ``b``'s
    cells is at least ``MIN_EXPECTED_COUNT``.
    """
    other_totals = totals.sum(0, keepdims=True) - totals
    other_cells = (n_cells.sum() - n_cells)[:, None]
    expected = n_cells[:, None] * other_totals / np.maximum(other_cells, 1)
    return (n_cells[:, None] >= MIN_BATCH_CELLS) & (totals == 0) & (expected >= MIN_EXPECTED_COUNT)


__all__ = [
    "MIN_BATCH_CELLS",
    "MIN_EXPECTED_COUNT",
    "MIN_SHARE",
    "UNMEASURED_UNS_KEY",
    "infer_unmeasured",
    "unmeasured_features",
]
