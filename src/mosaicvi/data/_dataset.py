"""Data loading from unpadded MuData: each modality's rows are gathered per minibatch.

scvi-tools' :class:`~scvi.data.AnnTorchDataset` indexes every registered matrix with the same
cell indices, which needs every modality padded to all cells. :class:`MosaicTorchDataset`
instead maps each minibatch's MuData cells to their rows in each modality's AnnData and reads
only those rows; a cell that lacks the modality gets an empty (zero) row, and the presence mask,
also yielded, tells the module to ignore it. A sparse modality's minibatch is a torch sparse
CSR tensor gathered from the stored CSR arrays in one vectorised step (:class:`SparseRows`) and
stays sparse up to the experts' first layer; a dense modality's minibatch is dense
(:class:`PaddedRows`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import sparse
from scvi.data import AnnDataManager, AnnDataManagerValidationCheck, AnnTorchDataset
from torch.utils.data import Subset

from mosaicvi._constants import REGISTRY_KEYS, counts_key
from mosaicvi.nn._sparse import csr_permute_columns, csr_take_rows, csr_tensor

from ._backed import RowReader, csr_indptr, is_backed, is_sparse, read_rows
from ._features import FeatureMaskField, measured_array
from ._fields import (
    COLUMN_NAMES_KEY,
    HAS_NAN_KEY,
    CategoricalObsCodesField,
    ContinuousObsField,
    ModalityCountsField,
    ModalityPresenceField,
)
from ._validation import check_count_matrix, warn_if_padded


class PaddedRows:
    """Read rows of an unpadded modality matrix by MuData cell index, as a dense array.

    The data loader uses it for dense matrices (sparse ones go through :class:`SparseRows`).

    Parameters
    ----------
    matrix
        The modality's matrix (dense, or sparse: densified per minibatch),
        ``(n_modality_cells, n_features)``.
    rows
        For each MuData cell, its row in ``matrix`` or ``-1``.
    order
        Column of ``matrix`` holding each registered feature (features matched by name to
        the model's); ``None`` when they are in the registered order.
    """

    def __init__(self, matrix, rows: np.ndarray, order: np.ndarray | None = None) -> None:
        self.matrix = matrix
        self.rows = rows
        self.order = order

    def __getitem__(self, indexes) -> np.ndarray:
        rows = self.rows[indexes]
        out = np.zeros((len(rows), self.matrix.shape[1]), dtype=np.float32)
        present = rows >= 0
        if present.any():
            block = read_rows(self.matrix, rows[present])
            block = block.toarray() if sparse.issparse(block) else np.asarray(block)
            out[present] = block if self.order is None else block[:, self.order]
        return out

    def to(self, device: torch.device) -> DeviceRows:
        """The same rows, kept on ``device`` (the matrix is copied there as ``float32``)."""
        if is_backed(self.matrix):
            raise ValueError(_ON_DEVICE_BACKED)
        n_rows, n_features = self.matrix.shape
        matrix = torch.zeros(n_rows + 1, n_features, device=device)  # last row: absent cells
        values = np.asarray(self.matrix)
        values = values if self.order is None else values[:, self.order]
        matrix[:n_rows] = torch.as_tensor(values, dtype=torch.float32).to(device)
        return DeviceRows(matrix, self.rows, device)


_ON_DEVICE_BACKED = (
    "`data_on_device=True` copies the count matrices to the device and needs them in memory; "
    "this one is backed (on disk). Load it with `mudata.read_h5mu(path)`, or train from disk "
    "without `data_on_device`."
)


class DeviceRows:
    """Rows of a dense modality matrix kept on a device, gathered there by MuData cell index.

    ``matrix`` has one extra, all-zero last row that cells lacking the modality read, so a
    minibatch is one gather with no synchronisation with the host.
    """

    def __init__(self, matrix: torch.Tensor, rows: np.ndarray, device: torch.device) -> None:
        self.matrix = matrix
        rows = torch.as_tensor(rows, dtype=torch.long)
        self.rows = torch.where(rows >= 0, rows, matrix.shape[0] - 1).to(device)

    def __getitem__(self, indexes: torch.Tensor) -> torch.Tensor:
        return self.matrix[self.rows[indexes]]


class SparseRows:
    """Read rows of an unpadded sparse modality matrix by MuData cell index, as torch CSR.

    A CSR matrix is read through its ``indptr`` / ``indices`` / ``data`` arrays, shared with
    the user's matrix (not copied): a minibatch's rows are gathered in one vectorised step
    (``csr_take_rows``) and only the minibatch's values are cast to
    ``float32``. A backed CSR matrix (``mudata.read_h5mu(..., backed=True)``) is read from the
    file, one read per run of consecutive rows (:func:`~mosaicvi.data.read_rows`);
    a CSC matrix, in memory or backed, row by row, which is slower: store counts as CSR.

    Parameters
    ----------
    matrix
        The modality's sparse matrix, ``(n_modality_cells, n_features)``.
    rows
        For each MuData cell, its row in ``matrix`` or ``-1``.
    order
        As for :class:`PaddedRows`: each minibatch's column indices are then mapped to the
        registered order (and re-sorted within rows).
    """

    def __init__(self, matrix, rows: np.ndarray, order: np.ndarray | None = None) -> None:
        self.matrix = matrix
        self.rows = rows
        self.n_features = matrix.shape[1]
        self.position = None if order is None else torch.from_numpy(_inverse(order))
        self.arrays = None
        self.indptr = csr_indptr(matrix) if is_backed(matrix) and matrix.format == "csr" else None
        if sparse.issparse(matrix) and matrix.format == "csr":
            self.arrays = tuple(
                torch.from_numpy(np.asarray(a))
                for a in (matrix.indptr, matrix.indices, matrix.data)
            )

    def to(self, device: torch.device) -> SparseRows:
        """The same rows, with the CSR arrays (values as ``float32``) copied to ``device``.

        Minibatches are then gathered on the device. A matrix in memory in another sparse
        format is converted to CSR on the host first (a temporary copy).
        """
        if is_backed(self.matrix):
            raise ValueError(_ON_DEVICE_BACKED)
        matrix = self.matrix if self.arrays is not None else sparse.csr_matrix(self.matrix)
        out = SparseRows.__new__(SparseRows)
        out.matrix, out.n_features, out.indptr = matrix, self.n_features, None
        out.position = None if self.position is None else self.position.to(device)
        crow, col, values = (
            torch.from_numpy(np.asarray(a)).to(device)
            for a in (matrix.indptr, matrix.indices, matrix.data)
        )
        out.arrays = (crow, col, values.to(torch.float32))
        out.rows = torch.as_tensor(self.rows, dtype=torch.long).to(device)
        return out

    def __getitem__(self, indexes) -> torch.Tensor:
        if isinstance(self.rows, torch.Tensor):  # kept on a device: gather there
            crow, col, values = csr_take_rows(*self.arrays, self.rows[indexes])
            if self.position is not None:
                col, values = csr_permute_columns(crow, col, values, self.position)
            return csr_tensor(crow, col, values, (len(crow) - 1, self.n_features))
        rows = np.asarray(self.rows[indexes])
        if self.arrays is not None:
            arrays, take = self.arrays, rows
        else:
            present = rows >= 0
            block = sparse.csr_matrix(read_rows(self.matrix, rows[present], self.indptr))
            arrays = tuple(torch.from_numpy(a) for a in (block.indptr, block.indices, block.data))
            take = np.where(present, np.cumsum(present) - 1, -1)
        crow, col, values = csr_take_rows(*arrays, torch.from_numpy(take))
        if self.position is not None:
            col, values = csr_permute_columns(crow, col, values, self.position)
        return csr_tensor(crow, col, values.to(torch.float32), (len(rows), self.n_features))


def _inverse(order: np.ndarray) -> np.ndarray:
    """Registered position of each stored column (the inverse of :func:`column_order`)."""
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    return position


class MosaicTorchDataset(AnnTorchDataset):
    """Torch dataset over a MuData registered with :class:`MosaicDataManager`."""

    @property
    def data(self) -> dict:
        if not hasattr(self, "_data"):
            manager = self.adata_manager
            mdata = manager.adata
            fields = {f.registry_key: f for f in manager.fields}
            rows = manager.modality_rows()
            data = {}
            for key in self.keys_and_dtypes:
                field = fields[key]
                if isinstance(field, ModalityCountsField):
                    matrix = field.matrix(mdata)
                    reader = SparseRows if is_sparse(matrix) else PaddedRows
                    order = manager.column_orders()[field.data_type]
                    data[key] = reader(matrix, rows[field.data_type], order)
                elif isinstance(field, ModalityPresenceField):
                    data[key] = manager.presence()
                elif isinstance(field, CategoricalObsCodesField | ContinuousObsField):
                    data[key] = field.cell_data(mdata, manager.get_state_registry(key))
                else:  # pragma: no cover - every mosaicvi field is handled above
                    raise TypeError(f"No loader for registry key {key!r}.")
            self._data = data
        return self._data

    def to(self, device: torch.device | str) -> MosaicTorchDataset:
        """Keep every registered matrix and per-cell array on ``device``; returns ``self``.

        Minibatches are then gathered on ``device`` (no host-to-device copy per step). The
        count matrices are copied there whole, sparse ones as CSR arrays with ``float32``
        values, dense ones as ``float32``; backed (on-disk) matrices are refused.
        """
        device = torch.device(device)
        data = {}
        for key, value in self.data.items():
            if isinstance(value, PaddedRows | SparseRows):
                data[key] = value.to(device)
            else:
                dtype = self.keys_and_dtypes[key]
                data[key] = torch.as_tensor(np.asarray(value).astype(dtype)).to(device)
        self._data = data
        self.device = device
        return self

    def __getitem__(
        self, indexes: int | list[int] | slice
    ) -> dict[str, np.ndarray | torch.Tensor]:
        if isinstance(indexes, int):
            indexes = [indexes]
        if getattr(self, "device", None) is not None:
            if isinstance(indexes, slice):
                indexes = range(*indexes.indices(self.adata_manager.adata.n_obs))
            indexes = torch.as_tensor(indexes, dtype=torch.long).to(self.device)
            return {key: self.data[key][indexes] for key in self.keys_and_dtypes}
        indexes = np.asarray(indexes) if not isinstance(indexes, slice) else indexes
        out = {}
        for key, dtype in self.keys_and_dtypes.items():
            value = self.data[key][indexes]
            if not isinstance(value, torch.Tensor):  # sparse rows come as torch CSR already
                value = np.asarray(value).astype(dtype, copy=False)
            out[key] = value
        return out


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
        self._rows = None
        super().register_fields(adata, source_registry, **transfer_kwargs)
        self._orders = None
        self.column_orders()
        presence = next(f for f in self.fields if isinstance(f, ModalityPresenceField))
        categories = self.batch_categories()
        for mod in self.modalities:
            if mod not in presence.presence_keys:
                _, rows, batches = self.measured_counts(mod)
                warn_if_padded(self.count_matrices()[mod], rows, batches, categories, mod)

    def check_data(self) -> list[str]:
        """The validation gate run before training and by every getter.

        Setup checked everything; this re-checks what a user may have changed in place since:
        the counts of ``sample_rows`` of each modality (1,024
        rows, or all if fewer), the features of each modality (matched to the model's by name;
        read in the model's order when only the order changed), and which cells have which
        modality (recomputed; every cell needs one). Batches and categories are checked when
        the data loader encodes them.

        Returns the data types whose counts hold NaN (unmeasured entries): those found at
        registration and those found in the rows checked now.
        """
        presence = next(f for f in self.fields if isinstance(f, ModalityPresenceField))
        nan = set(self.nan_modalities())
        for field in self.fields:
            if isinstance(field, ModalityCountsField):
                if check_count_matrix(self.adata, field.mod_key, field.attr_key, sampled=True):
                    nan.add(field.data_type)
        self._orders = None
        self.column_orders()
        self._rows = None
        presence.validate_rows(self.adata, self.modality_rows())
        return sorted(nan)

    def column_orders(self) -> dict[str, np.ndarray | None]:
        """Per data type, the column holding each registered feature (``None``: same order)."""
        if getattr(self, "_orders", None) is None:
            self._orders = {
                f.data_type: f.column_order(self.adata, self.get_state_registry(f.registry_key))
                for f in self.fields
                if isinstance(f, ModalityCountsField)
            }
        return self._orders

    # Facts about the registered MuData, computed once per registration and shared by the
    # data loader, the model and its getters.
    @property
    def modalities(self) -> list[str]:
        """The registered data types, in the order of the presence mask's columns."""
        field = next(f for f in self.fields if isinstance(f, ModalityPresenceField))
        return list(field.modalities)

    def modality_rows(self) -> dict[str, np.ndarray]:
        """Row of each cell in each modality's AnnData (``-1`` where it lacks it), by data type."""
        if getattr(self, "_rows", None) is None:
            field = next(f for f in self.fields if isinstance(f, ModalityPresenceField))
            self._rows = field.row_indices(self.adata)
        return self._rows

    def presence(self, indices: np.ndarray | None = None) -> np.ndarray:
        """Boolean ``(n_cells, n_modalities)`` presence mask of the cells ``indices`` (all)."""
        rows = self.modality_rows()
        mask = np.stack([rows[mod] >= 0 for mod in self.modalities], axis=1)
        return mask if indices is None else mask[indices]

    def batch_codes(self) -> np.ndarray:
        """Batch code of each cell, ``(n_cells,)``."""
        field = next(f for f in self.fields if f.registry_key == REGISTRY_KEYS.BATCH)
        return field.cell_data(self.adata, self.get_state_registry(REGISTRY_KEYS.BATCH))[:, 0]

    def batch_categories(self) -> list[str]:
        """The batch categories, in code order."""
        mappings = self.get_state_registry(REGISTRY_KEYS.BATCH)["mappings"]
        return [str(c) for c in next(iter(mappings.values()), ["0"])]

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
