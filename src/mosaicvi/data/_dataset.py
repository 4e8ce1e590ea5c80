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

import numpy as np
import torch
from scipy import sparse
from scvi.data import AnnTorchDataset

from mosaicvi.nn._sparse import csr_permute_columns, csr_take_rows, csr_tensor

from ._backed import RowReader, is_backed, is_sparse
from ._fields import (
    CategoricalObsCodesField,
    ContinuousObsField,
    ModalityCountsField,
    ModalityPresenceField,
)


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
        self.reader = RowReader(matrix, order)

    def __getitem__(self, indexes) -> np.ndarray:
        rows = self.rows[indexes]
        out = np.zeros((len(rows), self.matrix.shape[1]), dtype=np.float32)
        present = rows >= 0
        if present.any():
            block = self.reader[rows[present]]
            out[present] = block.toarray() if sparse.issparse(block) else np.asarray(block)
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
        rows = torch.from_numpy(np.array(rows, dtype=np.int64))  # the manager's is read-only
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
        self.reader = RowReader(matrix, order)  # other formats and backed matrices
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
        out.matrix, out.n_features, out.reader = matrix, self.n_features, None
        out.position = None if self.position is None else self.position.to(device)
        crow, col, values = (
            torch.from_numpy(np.asarray(a)).to(device)
            for a in (matrix.indptr, matrix.indices, matrix.data)
        )
        out.arrays = (crow, col, values.to(torch.float32))
        out.rows = torch.from_numpy(np.array(self.rows, dtype=np.int64)).to(device)
        return out

    def __getitem__(self, indexes) -> torch.Tensor:
        if isinstance(self.rows, torch.Tensor):  # kept on a device: gather there
            crow, col, values = csr_take_rows(*self.arrays, self.rows[indexes])
            if self.position is not None:
                col, values = csr_permute_columns(crow, col, values, self.position)
            return csr_tensor(crow, col, values, (len(crow) - 1, self.n_features))
        rows = np.asarray(self.rows[indexes])
        if self.arrays is None:  # rows read in the registered order by the RowReader
            present = rows >= 0
            block = sparse.csr_matrix(self.reader[rows[present]])
            arrays = tuple(torch.from_numpy(a) for a in (block.indptr, block.indices, block.data))
            take = np.where(present, np.cumsum(present) - 1, -1)
            crow, col, values = csr_take_rows(*arrays, torch.from_numpy(take))
            return csr_tensor(crow, col, values.to(torch.float32), (len(rows), self.n_features))
        crow, col, values = csr_take_rows(*self.arrays, torch.from_numpy(rows))
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
