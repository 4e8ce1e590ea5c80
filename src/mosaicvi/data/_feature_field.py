"""FeatureMaskField: which features each batch measured, in the registry (names only)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import rich.table
from mudata import MuData
from scvi.data.fields import BaseAnnDataField

from . import _features as rules  # the heuristic's constants, read where defined
from ._features import (
    UNMEASURED_UNS_KEY,
    _batch_names,
    batch_feature_totals,
    infer_unmeasured,
)
from ._presence import modality_rows
from ._validation import column_order, get_modality_matrix


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
            min_share = rules.MIN_SHARE.get(mod, rules.DEFAULT_MIN_SHARE)
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
                    f"{rules.MIN_EXPECTED_COUNT:g} there; they are treated as not measured in this "
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
