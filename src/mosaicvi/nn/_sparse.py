"""Minibatches of count rows as torch sparse CSR tensors, and the few operations the heads need.

A minibatch of a wide, mostly-zero modality (ATAC, RNA) travels from the stored matrix to the
first layer as a :class:`torch.sparse_csr_tensor` and is never densified on the host: rows are
gathered from the CSR arrays in one vectorised step (``csr_take_rows``, the same function
on the host and, for data kept on an accelerator, on the device). torch's CSR tensors lack
row indexing and row sums, so :func:`take_rows`, :func:`row_sums`, :func:`map_values` and
:func:`dense` give the heads one way to handle dense and CSR inputs alike.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch


def csr_tensor(
    crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    """A sparse CSR tensor, without torch's "CSR support is in beta" warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, shape)


def _owners(lengths: torch.Tensor, total: int) -> torch.Tensor:
    """Index ``i`` repeated ``lengths[i]`` times (``total`` is ``lengths.sum()``)."""
    positions = torch.arange(lengths.shape[0], device=lengths.device)
    return torch.repeat_interleave(positions, lengths, output_size=total)


def entry_rows(x: torch.Tensor) -> torch.Tensor:
    """Row of each stored entry of a sparse CSR ``x``, ``(nnz,)``."""
    crow = x.crow_indices()
    return _owners(crow[1:] - crow[:-1], x._nnz())


def csr_take_rows(
    crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows ``rows`` of a CSR matrix given by its arrays; a row ``-1`` gives an empty row.

    Vectorised (no loop over rows), on the device of the arrays; the result's index arrays
    are ``int64``.

    Returns
    -------
    The ``crow_indices``, ``col_indices`` and ``values`` of the ``(len(rows), n_cols)`` result.
    """
    rows = rows.to(device=crow.device, dtype=torch.long)
    present = rows >= 0
    last = crow.shape[0] - 1  # clamped so that absent rows index safely, even with no rows
    safe = rows.clamp(min=0, max=max(last - 1, 0))
    start = crow[safe.clamp(max=last)].long()
    length = torch.where(present, crow[(safe + 1).clamp(max=last)].long() - start, 0)
    out_crow = torch.zeros(rows.shape[0] + 1, dtype=torch.long, device=crow.device)
    torch.cumsum(length, 0, out=out_crow[1:])
    nnz = int(out_crow[-1])
    owner = _owners(length, nnz)
    source = start[owner] + torch.arange(nnz, device=crow.device) - out_crow[owner]
    return out_crow, col[source].long(), values[source]


def csr_permute_columns(
    crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, position: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Columns of a CSR matrix renumbered by ``position`` (new index of each column).

    Returns the new column indices and values, sorted by column within each row (the
    ``crow_indices`` are unchanged).
    """
    col = position[col]
    rows = _owners(crow[1:] - crow[:-1], col.shape[0])
    order = torch.argsort(rows * position.shape[0] + col)
    return col[order], values[order]


def take_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``x[rows]`` for a dense or sparse CSR ``x`` (``rows`` non-negative)."""
    if not x.is_sparse_csr:
        return x[rows]
    crow, col, values = csr_take_rows(x.crow_indices(), x.col_indices(), x.values(), rows)
    return csr_tensor(crow, col, values, (rows.shape[0], x.shape[1]))


def row_sums(x: torch.Tensor) -> torch.Tensor:
    """Sum of each row, ``(n_rows, 1)``, for a dense or sparse CSR ``x``."""
    if not x.is_sparse_csr:
        return x.sum(-1, keepdim=True)
    out = x.values().new_zeros(x.shape[0])
    return out.index_add(0, entry_rows(x), x.values())[:, None]


def map_values(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``fn`` applied to the stored values of a sparse CSR ``x`` (to ``x`` itself if dense).

    ``fn`` must map 0 to 0 (``log1p``, scaling, dropout), so the result is ``fn`` of every
    entry.
    """
    if not x.is_sparse_csr:
        return fn(x)
    return csr_tensor(x.crow_indices(), x.col_indices(), fn(x.values()), x.shape)


def mask_entries(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """``x`` with the entries where the boolean ``keep`` (dense, ``x``'s shape) is False set to 0."""
    if not x.is_sparse_csr:
        return x * keep.to(x.dtype)
    values = x.values() * keep[entry_rows(x), x.col_indices()].to(x.dtype)
    return csr_tensor(x.crow_indices(), x.col_indices(), values, x.shape)


def scale_rows(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Each row ``i`` of a dense or sparse CSR ``x`` times ``factor[i]``."""
    if not x.is_sparse_csr:
        return x * factor[:, None].to(x.dtype)
    values = x.values() * factor[entry_rows(x)].to(x.dtype)
    return csr_tensor(x.crow_indices(), x.col_indices(), values, x.shape)


def finite_entries(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` with NaN set to 0, and the dense boolean mask of its entries that are not NaN."""
    if not x.is_sparse_csr:
        nan = torch.isnan(x)
        return torch.where(nan, torch.zeros_like(x), x), ~nan
    values = x.values()
    nan = torch.isnan(values)
    keep = torch.ones(x.shape, dtype=torch.bool, device=values.device)
    keep[entry_rows(x)[nan], x.col_indices()[nan]] = False
    clean = torch.where(nan, torch.zeros_like(values), values)
    return csr_tensor(x.crow_indices(), x.col_indices(), clean, x.shape), keep


def nonzero_entries(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row, column and value of each non-zero entry of a dense or sparse CSR ``x``."""
    if not x.is_sparse_csr:
        rows, cols = x.nonzero(as_tuple=True)
        return rows, cols, x[rows, cols]
    values = x.values()
    keep = values != 0
    return entry_rows(x)[keep], x.col_indices()[keep], values[keep]


def dense(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a dense tensor (a minibatch's rows, never a whole data set)."""
    return x.to_dense() if x.is_sparse_csr else x


def full_precision(x: torch.Tensor):
    """Context in which autocast is off on ``x``'s device: sparse kernels lack bfloat16.

    Under mixed precision (``train(precision="bf16-mixed")``), the sparse products run in
    float32 inside it and the dense layers around them in bfloat16.
    """
    return torch.autocast(device_type=x.device.type, enabled=False)


def transposed_csr(
    crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    """The transpose of the CSR matrix ``(crow, col, values)`` of ``shape``, as sparse CSR.

    One stable sort of the column indices: ``x.T @ dense`` is then a CSR product
    (``torch.addmm``), the fastest sparse-dense kernel on the CPU.
    """
    n_rows, n_cols = shape
    rows = _owners(crow[1:] - crow[:-1], col.shape[0])
    order = torch.argsort(col, stable=True)
    # counts by index_add, not bincount: no device-to-host synchronisation on a GPU
    counts = torch.zeros(n_cols, dtype=torch.long, device=col.device)
    counts.index_add_(0, col, torch.ones_like(col))
    ccol = torch.zeros(n_cols + 1, dtype=torch.long, device=col.device)
    torch.cumsum(counts, 0, out=ccol[1:])
    return csr_tensor(ccol, rows[order], values[order], (n_cols, n_rows))


def transposed_matmul(x: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """``x.T @ dense`` for a sparse CSR ``x``, into one zero-initialised buffer."""
    t = transposed_csr(x.crow_indices(), x.col_indices(), x.values().to(dense.dtype), x.shape)
    out = dense.new_zeros(x.shape[1], dense.shape[1])
    return out.addmm_(t, dense)


class _SparseInputMatmul(torch.autograd.Function):
    """``x @ weight`` for a sparse CSR ``x`` (data, no gradient) and a dense ``weight``.

    The backward writes ``x.T @ grad`` into one zero-initialised ``weight``-shaped buffer
    (:func:`transposed_matmul`), where torch's own backward of :func:`torch.sparse.mm`
    fills and copies several full-width buffers.
    """

    @staticmethod
    def forward(ctx, x, weight):
        ctx.save_for_backward(x)
        return torch.sparse.mm(x, weight)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        grad_weight = transposed_matmul(x, grad) if ctx.needs_input_grad[1] else None
        return None, grad_weight


def sparse_input_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight``, ``x`` sparse CSR counts (no gradient to ``x``), ``weight`` dense."""
    return _SparseInputMatmul.apply(x, weight)
