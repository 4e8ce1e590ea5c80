"""Which features each batch measured: mosaic data at the feature level.

CITE-seq studies combine antibody panels of different sizes, targeted RNA panels cover part
of the transcriptome, and peak sets differ between studies. Concatenated, a batch's
unmeasured features arrive as zero (or NaN) columns. :class:`FeatureMaskField` records, per
modality, which features each batch did **not** measure, so that the model leaves them out of
the likelihood and out of its experts' evidence, and imputes them
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

import warnings
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
import rich.table
from mudata import MuData
from scipy import sparse
from scvi.data.fields import BaseAnnDataField

from ._backed import row_blocks
from ._validation import _BLOCK_ROWS, column_order, get_modality_matrix, modality_rows

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
    for start, block in row_blocks(matrix, rows, _BLOCK_ROWS):
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


class FeatureMaskField(BaseAnnDataField):
    """Which features each batch measured, per modality (a registry state, not loader data).

    The state holds ``unmeasured`` (``{data type: {batch: [feature names]}}``, the user's
    masks and the heuristic's) and ``inferred`` (the heuristic's part). Which count matrices
    hold NaN (single unmeasured entries) is recorded by
    :class:`~mosaicvi.data.ModalityCountsField`, whose check reads every value.

    Parameters
    ----------
    registry_key
        Key in the registry.
    modalities
        Data type -> modality name in ``mdata.mod``.
    layers
        Data type -> layer with the counts (``.X`` where absent).
    presence_keys
        Data type -> presence column (padded MuData).
    batch_key
        Column of ``mdata.obs`` with the batches (``None``: one batch, ``"0"``).
    feature_masks
        The user's masks, as :func:`unmeasured_features` returns them.
    infer
        Whether the heuristic runs for the modalities without a user mask.
    """

    UNMEASURED_KEY = "unmeasured"
    INFERRED_KEY = "inferred"
    BATCHES_KEY = "batches"
    NAMES_KEY = "column_names"

    def __init__(
        self,
        registry_key: str,
        modalities: dict[str, str],
        layers: dict[str, str | None],
        presence_keys: dict[str, str] | None,
        batch_key: str | None,
        feature_masks: dict[str, dict[str, list[str]]],
        infer: bool = True,
    ) -> None:
        super().__init__()
        self._registry_key = registry_key
        self.modalities = dict(modalities)
        self.layers = dict(layers)
        self.presence_keys = dict(presence_keys or {})
        self.batch_key = batch_key
        self.feature_masks = feature_masks
        self.infer = infer

    @property
    def registry_key(self) -> str:
        return self._registry_key

    @property
    def attr_name(self) -> str:
        return "obs"

    @property
    def attr_key(self) -> str | None:
        return None

    @property
    def is_empty(self) -> bool:
        return False

    def get_data_registry(self) -> dict:
        return {}  # nothing for the data loader: the model reads the state

    def validate_field(self, mdata: MuData) -> None:
        pass

    def register_field(self, mdata: MuData) -> dict:
        return self._state(mdata, None, set())

    def transfer_field(self, state_registry: dict, mdata_target: MuData, **kwargs) -> dict:
        """The source's masks for its batches; new batches (a query) get their own."""
        return self._state(mdata_target, state_registry, set(state_registry[self.BATCHES_KEY]))

    def _state(self, mdata: MuData, source: dict | None, known: set[str]) -> dict:
        names = _batch_names(mdata, self.batch_key)
        if source is None:
            absent = {b for m in self.feature_masks.values() for b in m} - set(names)
            if absent:
                where = (
                    f"mdata.obs['{self.batch_key}'] (batches: {sorted(set(names))[:10]})"
                    if self.batch_key is not None
                    else "the data: without `batch_key` the one batch is named '0'"
                )
                raise ValueError(
                    f"`feature_masks` names batch(es) {sorted(absent)[:5]} not found in {where}."
                )
        unmeasured = {mod: {} for mod in self.modalities}
        inferred = {mod: {} for mod in self.modalities}
        for mod, mod_key in self.modalities.items():
            matrix = get_modality_matrix(mdata, mod_key, self.layers.get(mod))
            registered = mdata.mod[mod_key].var_names
            order = None
            if source is not None:
                unmeasured[mod] = {b: list(f) for b, f in source[self.UNMEASURED_KEY][mod].items()}
                inferred[mod] = {b: list(f) for b, f in source[self.INFERRED_KEY][mod].items()}
                registered = pd.Index(source[self.NAMES_KEY][mod])
                order = column_order(registered, mdata.mod[mod_key].var_names, mod_key)
            rows = modality_rows(mdata, mod_key, self.presence_keys.get(mod))
            present = rows >= 0
            batches = pd.Index(pd.unique(names[present]))
            user = self.feature_masks.get(mod, {})
            registered_set = set(registered)
            unknown = list(
                dict.fromkeys(f for b in user.values() for f in b if f not in registered_set)
            )
            if unknown:
                raise ValueError(
                    f"`feature_masks['{mod}']` names features that '{mod_key}' does not have: "
                    f"{unknown[:5]}."
                )
            listed = set(mdata.mod[mod_key].uns.get(UNMEASURED_UNS_KEY, []))
            new = [b for b in batches if b not in known]
            clash = [b for b in batches if b in known and listed - set(unmeasured[mod].get(b, []))]
            if clash:
                raise ValueError(
                    f"mdata.mod['{mod_key}'] lacks {len(listed)} of the model's features "
                    f"(uns['{UNMEASURED_UNS_KEY}']), but its batch(es) {clash[:5]} are batches "
                    "the model knows, whose features it treats as measured. Give the query's "
                    "cells batch names of their own."
                )
            for b in new:
                given = set(user.get(b, [])) | listed
                if len(given & registered_set) == len(registered):
                    raise ValueError(
                        f"Every '{mod}' feature is marked unmeasured in batch '{b}': its cells "
                        f"were not measured in '{mod}' at all. Leave them out of "
                        f"mdata.mod['{mod_key}'] (unpadded MuData) or pass `presence_keys`."
                    )
                if given:
                    unmeasured[mod][b] = [f for f in registered if f in given]
            if source is None:
                self._warn_never_measured(mod, unmeasured[mod], batches)
            if not self.infer or mod in self.feature_masks or not new:
                continue
            codes = pd.Index(batches).get_indexer(names[present])
            totals = batch_feature_totals(matrix, rows[present], codes, len(batches), order)
            n_cells = np.bincount(codes, minlength=len(batches)).astype(float)
            min_share = MIN_SHARE.get(mod, DEFAULT_MIN_SHARE)
            if source is not None:  # a query's batches: no counts of the reference to compare
                self._warn_zero_columns(
                    mod, new, batches, totals, unmeasured[mod], min_share, pd.Index(registered)
                )
            if len(batches) < 2:
                continue
            flagged = infer_unmeasured(totals, n_cells)
            for b in new:
                i = batches.get_loc(b)
                if not flagged[i].any() or flagged[i].mean() < min_share or flagged[i].all():
                    continue  # all: a batch not measured in the modality (the padding warning)
                found = [str(f) for f in registered[flagged[i]]]
                already = set(unmeasured[mod].get(b, []))
                extra = [f for f in found if f not in already]
                if not extra:
                    continue
                both = already | set(extra)
                unmeasured[mod][b] = [f for f in registered if f in both]
                inferred[mod][b] = extra
                warnings.warn(
                    f"Batch '{b}': {len(extra)} of the {len(registered)} '{mod}' features "
                    f"(e.g. {extra[:3]}) have no count in its {int(n_cells[i])} cells although "
                    "the other batches' counts predict at least "
                    f"{MIN_EXPECTED_COUNT:g} there; they are treated as not measured in this "
                    "batch (left out of the likelihood and imputed). Pass `feature_masks` to say "
                    "which features each batch measured, or `infer_feature_masks=False` to "
                    "model them as measured zeros.",
                    UserWarning,
                    stacklevel=6,
                )
        return {
            self.UNMEASURED_KEY: unmeasured,
            self.INFERRED_KEY: inferred,
            self.BATCHES_KEY: sorted(known | set(names)),
            self.NAMES_KEY: {
                mod: (
                    list(source[self.NAMES_KEY][mod])
                    if source is not None
                    else [str(f) for f in mdata.mod[key].var_names]
                )
                for mod, key in self.modalities.items()
            },
        }

    @staticmethod
    def _warn_zero_columns(mod, new, batches, totals, unmeasured, min_share, registered) -> None:
        """Warn about a new (query) batch's features with no count that nothing masks.

        The heuristic compares a batch with the others of the data registered; a query's
        batches may all lack the same features (one panel), so it cannot see them.
        """
        for b in new:
            i = batches.get_loc(b)
            zero = (totals[i] == 0) & ~registered.isin(unmeasured.get(b, []))
            n_zero = int(zero.sum())
            if n_zero > 0 and n_zero >= min_share * len(zero) and not (totals[i] == 0).all():
                warnings.warn(
                    f"Query batch '{b}': {n_zero} '{mod}' feature(s) have no count in its "
                    "cells and are modelled as measured zeros. If its panel lacks them, "
                    "`prepare_query_mudata` marks a query's missing features (or list them in "
                    f"the modality's `uns['{UNMEASURED_UNS_KEY}']`).",
                    UserWarning,
                    stacklevel=6,
                )

    @staticmethod
    def _warn_never_measured(mod, unmeasured, batches) -> None:
        """Warn about features that no batch with cells in ``mod`` measured."""
        masked = [set(unmeasured.get(b, [])) for b in batches]
        never = set.intersection(*masked) if masked else set()
        if never:
            warnings.warn(
                f"{len(never)} '{mod}' feature(s) (e.g. {sorted(never)[:3]}) are unmeasured in "
                "every batch: the model has no data for them, and their imputed values come "
                "from untrained decoder outputs. Drop them from the modality.",
                UserWarning,
                stacklevel=6,
            )

    def get_summary_stats(self, state_registry: dict) -> dict:
        return {}

    def view_state_registry(self, state_registry: dict) -> rich.table.Table | None:
        rows = [
            (mod, batch, len(names))
            for mod, by_batch in state_registry[self.UNMEASURED_KEY].items()
            for batch, names in by_batch.items()
        ]
        if not rows:
            return None
        t = rich.table.Table(title="Features not measured")
        t.add_column("Modality")
        t.add_column("Batch")
        t.add_column("Features")
        for mod, batch, n in rows:
            t.add_row(mod, batch, str(n))
        return t


def measured_array(state: dict, mod: str, categories: list[str], features) -> np.ndarray:
    """Boolean ``(n_batch, n_features)``: whether each batch measured each feature."""
    out = np.ones((len(categories), len(features)), dtype=bool)
    index = pd.Index([str(f) for f in features])
    for b, names in state[FeatureMaskField.UNMEASURED_KEY].get(mod, {}).items():
        if b in categories:
            columns = index.get_indexer(names)
            out[categories.index(b), columns[columns >= 0]] = False
    return out


__all__ = [
    "FeatureMaskField",
    "MIN_BATCH_CELLS",
    "MIN_EXPECTED_COUNT",
    "MIN_SHARE",
    "UNMEASURED_UNS_KEY",
    "infer_unmeasured",
    "measured_array",
    "unmeasured_features",
]
