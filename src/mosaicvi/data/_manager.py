"""MosaicDataManager: the registered MuData's facts (presence, rows, orders, masks), computed once."""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import numpy as np
from scvi.data import AnnDataManager, AnnDataManagerValidationCheck
from torch.utils.data import Subset

from mosaicvi._constants import REGISTRY_KEYS, counts_key

from ._backed import RowReader
from ._dataset import MosaicTorchDataset
from ._feature_field import FeatureMaskField, measured_array
from ._fields import (
    COLUMN_NAMES_KEY,
    HAS_NAN_KEY,
    ModalityCountsField,
    ModalityPresenceField,
)
from ._presence import warn_if_padded
from ._validation import check_count_matrix


class MosaicDataManager(AnnDataManager):
    """:class:`~scvi.data.AnnDataManager` whose torch dataset reads unpadded MuData.

    scvi-tools' check that every modality holds every cell is turned off: presence is handled
    by :class:`~mosaicvi.data.ModalityPresenceField`.
    """

    def __init__(
        self,
        fields: list | None = None,
        setup_method_args: dict | None = None,
        validation_checks: AnnDataManagerValidationCheck | None = None,
    ) -> None:
        if validation_checks is None:
            validation_checks = AnnDataManagerValidationCheck(check_fully_paired_mudata=False)
        super().__init__(fields, setup_method_args, validation_checks)

    def register_fields(self, adata, source_registry=None, **transfer_kwargs) -> None:
        if source_registry is not None and REGISTRY_KEYS.FEATURE_MASKS not in source_registry.get(
            "field_registries", {}
        ):
            # a model saved before feature masks existed: it measured every feature, and
            # data registered from it must not get masks it was not trained with
            for field in self.fields:
                if isinstance(field, FeatureMaskField):
                    field.feature_masks, field.infer = {}, False
        self._facts = None
        super().register_fields(adata, source_registry, **transfer_kwargs)
        self._current_facts()
        categories = self.batch_categories()
        presence = self._presence_field()
        for mod in self.modalities:
            if mod not in presence.presence_keys:
                _, rows, batches = self.measured_counts(mod)
                warn_if_padded(self.count_matrices()[mod], rows, batches, categories, mod)

    def check_data(self) -> list[str]:
        """The validation gate run before training and by every getter.

        Setup checked everything; this re-checks what a user may have changed in place since:
        the counts of ``sample_rows`` of each modality (1,024 rows, or all if fewer), every
        time; and, when the MuData's cells, features or presence columns changed (see
        ``_current_facts``), which cells have which modality (every cell needs one) and
        the features of each modality (matched to the model's by name; read in the model's
        order when only the order changed). Batches and categories are checked when the data
        loader encodes them.

        Returns the data types whose counts hold NaN (unmeasured entries): those found at
        registration and those found in the rows checked now.
        """
        nan = set(self.nan_modalities())
        for field in self.fields:
            if isinstance(field, ModalityCountsField):
                if check_count_matrix(self.adata, field.mod_key, field.attr_key, sampled=True):
                    nan.add(field.data_type)
        self._current_facts()
        return sorted(nan)

    def _presence_field(self) -> ModalityPresenceField:
        return next(f for f in self.fields if isinstance(f, ModalityPresenceField))

    def _data_state(self) -> tuple[list, list[np.ndarray]]:
        """What the rows and column orders are computed from, to tell when they change.

        The cell and feature names (pandas indexes: immutable, so a change replaces the
        object; compared by identity), each modality's AnnData, and MuData's maps from cells
        to rows and the presence columns (compared by value: they can be changed in place).
        """
        mdata = self.adata
        presence = self._presence_field()
        objects, values = [mdata.obs_names], []
        for mod, mod_key in presence.modalities.items():
            adata = mdata.mod.get(mod_key)
            objects += [adata, *((adata.obs_names, adata.var_names) if adata is not None else ())]
            for attr in (mdata.obsmap, mdata.obsm):
                values.append(np.asarray(attr[mod_key]) if mod_key in attr else None)
            key = presence.presence_keys.get(mod)
            if key is not None:
                column = mdata.obs[key] if key in mdata.obs.columns else None
                values.append(None if column is None else column.to_numpy())  # copied if cached
        return objects, values

    def _current_facts(self) -> dict:
        """Rows, column orders and presence, recomputed (and re-checked) when the data change.

        Computed once per state of the MuData (``_data_state``): held as weak references
        to the objects and copies of the maps and presence columns, and compared on every
        call (identity for the objects, values for the rest: a few comparisons of one value
        per cell, not of the cell names). A changed state recomputes them with their checks
        (a stale MuData, a cell with no modality, changed features raise).
        """
        objects, values = self._data_state()
        cached = getattr(self, "_facts", None)
        if cached is not None and _same_state(cached["state"], objects, values):
            return cached
        self._facts = None
        presence = self._presence_field()
        rows = presence.row_indices(self.adata)
        presence.validate_rows(self.adata, rows)
        orders = {
            f.data_type: f.column_order(self.adata, self.get_state_registry(f.registry_key))
            for f in self.fields
            if isinstance(f, ModalityCountsField)
        }
        mask = presence.presence_mask(rows)
        for array in [mask, *rows.values()]:  # shared by every caller: read-only
            array.flags.writeable = False
        state = ([_reference(o) for o in objects], [_copy(v) for v in values])
        self._facts = {"state": state, "rows": rows, "orders": orders, "presence": mask}
        return self._facts

    def column_orders(self) -> dict[str, np.ndarray | None]:
        """Per data type, the column holding each registered feature (``None``: same order)."""
        return self._current_facts()["orders"]

    # Facts about the registered MuData, computed once per state of it (_current_facts) and
    # shared by the data loader, the model and its getters.
    @property
    def modalities(self) -> list[str]:
        """The registered data types, in the order of the presence mask's columns."""
        return list(self._presence_field().modalities)

    def modality_rows(self) -> dict[str, np.ndarray]:
        """Row of each cell in each modality's AnnData (``-1`` where it lacks it), by data type."""
        return self._current_facts()["rows"]

    def presence(self, indices: np.ndarray | None = None) -> np.ndarray:
        """Boolean ``(n_cells, n_modalities)`` presence mask of the cells ``indices`` (all)."""
        mask = self._current_facts()["presence"]
        return mask if indices is None else mask[indices]

    def cells_with(
        self, modalities: list[str], indices: np.ndarray | None = None, every: bool = False
    ) -> np.ndarray:
        """Which cells (``indices``, all) have any (``every``: all) of ``modalities``, boolean."""
        columns = [self.modalities.index(m) for m in modalities]
        present = self.presence(indices)[:, columns]
        return present.all(axis=1) if every else present.any(axis=1)

    def batch_codes(self) -> np.ndarray:
        """Batch code of each cell, ``(n_cells,)``."""
        field = next(f for f in self.fields if f.registry_key == REGISTRY_KEYS.BATCH)
        return field.cell_data(self.adata, self.get_state_registry(REGISTRY_KEYS.BATCH))[:, 0]

    def batch_categories(self) -> list[str]:
        """The batch categories, in code order."""
        return batch_categories(self.get_state_registry(REGISTRY_KEYS.BATCH))

    def feature_masks(self) -> dict[str, np.ndarray]:
        """By data type with unmeasured features, whether each batch measured each feature.

        Boolean ``(n_batch, n_features)`` arrays in the batches' code order and the
        registered feature order (``mosaicvi.data._features``); data types whose every
        feature was measured in every batch are left out.
        """
        state = self.get_state_registry(REGISTRY_KEYS.FEATURE_MASKS)
        categories = self.batch_categories()
        out = {}
        for mod in self.modalities:
            names = self.get_state_registry(counts_key(mod))[COLUMN_NAMES_KEY]
            mask = measured_array(state, mod, categories, names)
            if not mask.all():
                out[mod] = mask
        return out

    def nan_modalities(self) -> list[str]:
        """The data types whose counts hold NaN (unmeasured entries)."""
        return [
            f.data_type
            for f in self.fields
            if isinstance(f, ModalityCountsField)
            and self.get_state_registry(f.registry_key).get(HAS_NAN_KEY, False)
        ]

    def count_matrices(self) -> dict[str, object]:
        """The stored count matrix of each data type (the user's, not copied)."""
        return {
            f.data_type: f.matrix(self.adata)
            for f in self.fields
            if isinstance(f, ModalityCountsField)
        }

    def measured_counts(self, modality: str) -> tuple[object, np.ndarray, np.ndarray]:
        """The stored count matrix of ``modality``, its measured cells' rows and batch codes.

        The matrix is the user's, not copied, seen through a :class:`RowReader` so that
        ``matrix[rows]`` reads any rows in memory or from a backed file.
        """
        rows = self.modality_rows()[modality]
        present = rows >= 0
        matrix = RowReader(self.count_matrices()[modality], self.column_orders()[modality])
        return matrix, rows[present], self.batch_codes()[present]

    def create_torch_dataset(
        self,
        indices: Sequence[int] | Sequence[bool] | None = None,
        data_and_attributes: list[str] | dict[str, np.dtype] | None = None,
        load_sparse_tensor: bool = False,
    ) -> MosaicTorchDataset | Subset:
        if load_sparse_tensor:
            raise ValueError("mosaicvi does not support `load_sparse_tensor=True`.")
        dataset = MosaicTorchDataset(self, getitem_tensors=data_and_attributes)
        if indices is not None:
            dataset = Subset(dataset, indices)
        return dataset


def batch_categories(state_registry: dict) -> list[str]:
    """The batch categories of a batch field's state registry, in code order."""
    return [str(c) for c in next(iter(state_registry["mappings"].values()), ["0"])]


def _reference(obj):
    """A weak reference to ``obj`` (``None`` kept): the cache never keeps user data alive."""
    return None if obj is None else weakref.ref(obj)


def _copy(value: np.ndarray | None) -> np.ndarray | None:
    return None if value is None else value.copy()


def _same_state(state: tuple, objects: list, values: list) -> bool:
    """Whether the MuData is in the state the facts were computed from."""
    references, copies = state
    if len(references) != len(objects) or len(copies) != len(values):
        return False
    for ref, obj in zip(references, objects):
        if (ref is None) != (obj is None) or (ref is not None and ref() is not obj):
            return False
    for old, new in zip(copies, values):
        if (old is None) != (new is None):
            return False
        if old is not None and not (
            old.dtype == new.dtype and old.shape == new.shape and np.array_equal(old, new)
        ):
            return False
    return True
