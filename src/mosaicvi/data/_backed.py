"""Rows of a modality matrix held in memory or on disk (a MuData read with ``backed=True``).

A backed MuData (``mudata.read_h5mu(path, backed=True)``) keeps each modality's matrix in the
h5mu file: a sparse one as an :class:`anndata.abc.CSRDataset` (or ``CSCDataset``), a dense one
as an :class:`h5py.Dataset`. h5py reads only rows in increasing order, and anndata's sparse
datasets read rows one slice at a time; :func:`read_rows` reads any rows (any order, repeats
allowed) with one read per run of consecutive rows, so that host memory holds only the rows
asked for (and, for CSR, the ``indptr`` array: one integer per cell). Nothing is written to the
file.
"""

from __future__ import annotations

import h5py
import numpy as np
from anndata.abc import CSCDataset, CSRDataset
from scipy import sparse

#: Values read per block when a backed matrix is scanned (validation).
SCAN_BLOCK = 4_000_000
#: Rows read per block when rows of a matrix are scanned (validation, statistics).
BLOCK_ROWS = 4096


def is_backed(matrix) -> bool:
    """Whether ``matrix`` lives in a file (a backed AnnData's ``X`` or layer)."""
    return isinstance(matrix, CSRDataset | CSCDataset | h5py.Dataset)


def is_sparse(matrix) -> bool:
    """Whether ``matrix`` is sparse, in memory (scipy) or in a file (anndata's datasets)."""
    return sparse.issparse(matrix) or isinstance(matrix, CSRDataset | CSCDataset)


def csr_indptr(matrix) -> np.ndarray:
    """The ``indptr`` of a backed CSR matrix, read into memory (``n_rows + 1`` integers)."""
    return np.asarray(matrix.group["indptr"][:], dtype=np.int64)


def read_csr_runs(matrix, rows: np.ndarray, indptr: np.ndarray) -> sparse.csr_matrix:
    """Rows ``rows`` (increasing, unique) of a backed CSR matrix, one read per run of rows."""
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return sparse.csr_matrix((0, matrix.shape[1]), dtype=matrix.dtype)
    starts, ends = indptr[rows], indptr[rows + 1]
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    first = np.concatenate([[0], breaks]).astype(np.int64)
    last = np.concatenate([breaks, [len(rows)]]).astype(np.int64) - 1
    data, indices = matrix.group["data"], matrix.group["indices"]
    spans = [(starts[a], ends[b]) for a, b in zip(first, last)]
    values = np.concatenate([data[lo:hi] for lo, hi in spans])
    columns = np.concatenate([indices[lo:hi] for lo, hi in spans])
    out_indptr = np.concatenate([[0], np.cumsum(ends - starts)])
    return sparse.csr_matrix((values, columns, out_indptr), shape=(len(rows), matrix.shape[1]))


def read_rows(matrix, rows: np.ndarray, indptr: np.ndarray | None = None):
    """``matrix[rows]`` for an in-memory or backed matrix, any row order.

    Sparse rows come back as a scipy sparse matrix (CSR for a backed CSR matrix), dense rows
    as an array. ``indptr`` (``csr_indptr``) saves re-reading it for a backed CSR matrix.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if not is_backed(matrix):
        return matrix[rows]
    unique, inverse = np.unique(rows, return_inverse=True)
    if isinstance(matrix, CSRDataset):
        block = read_csr_runs(matrix, unique, csr_indptr(matrix) if indptr is None else indptr)
    else:
        block = matrix[unique]
    return block[inverse]


def row_blocks(matrix, rows: np.ndarray, block_rows: int):
    """Blocks of the rows ``rows`` of ``matrix``, in turn, as ``(start, block)``.

    ``block`` is ``matrix[rows[start : start + block_rows]]`` (:func:`read_rows`): a matrix in
    memory or backed, never read whole.
    """
    rows = np.asarray(rows)
    for start in range(0, len(rows), block_rows):
        yield start, read_rows(matrix, rows[start : start + block_rows])


def value_blocks(matrix, block_rows: int):
    """Yield the stored values of ``matrix`` in blocks, without densifying or loading it whole."""
    if sparse.issparse(matrix):
        yield np.asarray(matrix.data)
    elif isinstance(matrix, CSRDataset | CSCDataset):
        data = matrix.group["data"]
        for start in range(0, data.shape[0], SCAN_BLOCK):
            yield np.asarray(data[start : start + SCAN_BLOCK])
    else:
        for start in range(0, matrix.shape[0], block_rows):
            yield np.asarray(matrix[start : start + block_rows])


class RowReader:
    """A view of a modality matrix whose ``[rows]`` works in memory and on disk alike.

    The reader of a modality's rows in the model's feature order on the host: the data
    loader's dense minibatches (:class:`~mosaicvi.data.PaddedRows`) and sparse ones from a
    backed or non-CSR matrix, and the model's statistics (protein prior, differential
    analysis, interval calibration) read through it. Two paths permute columns themselves
    for speed: in-memory CSR minibatches (torch, :class:`~mosaicvi.data.SparseRows`) and
    matrices copied to a device whole (``.to(device)``).

    Parameters
    ----------
    matrix
        The stored matrix (not copied).
    order
        Column of ``matrix`` holding each registered feature; ``None``: the stored order.
    """

    def __init__(self, matrix, order: np.ndarray | None = None) -> None:
        self.matrix = matrix
        self.order = order
        self.shape = matrix.shape
        self.dtype = matrix.dtype
        # a backed CSR matrix's indptr, read once (one integer per cell): data loader workers
        # get it with the reader instead of each reading it again
        self.indptr = csr_indptr(matrix) if isinstance(matrix, CSRDataset) else None

    def __getitem__(self, rows) -> np.ndarray | sparse.spmatrix:
        block = read_rows(self.matrix, rows, self.indptr)
        if self.order is None:
            return block
        block = block[:, self.order]
        if sparse.issparse(block):
            block.sort_indices()
        return block
