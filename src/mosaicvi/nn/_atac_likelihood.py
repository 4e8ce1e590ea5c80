"""The Bernoulli ATAC likelihood: exact over every region, or estimated from some cells or regions."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.distributions import Bernoulli

from ._sparse import (
    csr_tensor,
    entry_rows,
    full_precision,
    nonzero_entries,
    transposed_csr,
)

#: The region sampler's running sum of inclusion probabilities, in integer units of this
#: (exact, and never cast by a module's ``.half()`` or ``precision="bf16-true"``)
INCLUSION_UNIT = 2**40
#: Share of the sampling probabilities spread uniformly over the regions (the rest follows
#: each region's open frequency): bounds the importance weights by ``1 / share``
UNIFORM_SHARE = 0.5


def region_open_frequency(counts, rows: np.ndarray, block: int = 4096) -> np.ndarray:
    """Fraction of the cells ``rows`` of ``counts`` in which each region is open (non-zero).

    Read in blocks of rows (``counts`` may be backed); nothing is densified whole.
    """
    from mosaicvi.data._backed import row_blocks

    opened = np.zeros(counts.shape[1], dtype=np.float64)
    for _, part in row_blocks(counts, rows, block):
        if sp.issparse(part):
            part = sp.csr_matrix(part)
            part.eliminate_zeros()
            opened += np.bincount(part.indices, minlength=counts.shape[1])
        else:
            opened += (np.asarray(part) != 0).sum(0)
    return opened / max(len(rows), 1)


def closed_inclusion(
    n_regions: int, closed_samples: int, frequency: np.ndarray | None = None
) -> torch.Tensor:
    """Probability that each region is in a minibatch's draw, summing to ``closed_samples``.

    Proportional to ``(1 - UNIFORM_SHARE) * frequency / sum(frequency) + UNIFORM_SHARE /
    n_regions`` (uniform without ``frequency``), capped at 1: regions whose share would exceed
    1 are always drawn, and the rest share the remaining draws (float64,
    ``(n_regions,)``).
    """
    k = min(int(closed_samples), n_regions)
    share = torch.full((n_regions,), 1.0 / n_regions, dtype=torch.float64)
    if frequency is not None and float(np.sum(frequency)) > 0:
        f = torch.as_tensor(np.asarray(frequency, dtype=np.float64))
        share = (1 - UNIFORM_SHARE) * f / f.sum() + UNIFORM_SHARE * share
    p = share * k
    for _ in range(64):  # cap at 1, hand the excess to the others
        full = p >= 1.0
        rest = k - full.sum().item()
        if rest <= 0:
            return full.to(torch.float64)
        p = torch.where(full, 1.0, share * rest / share[~full].sum())
        if not (p[~full] > 1.0).any():
            break
    return p.clamp(max=1.0)


class PeakBernoulli(Bernoulli):
    """Bernoulli of binarised accessibility, scored one cell at a time without densifying.

    The probabilities are a product ``p * d * f`` (not a sigmoid of logits), so the log
    likelihood of a cell is ``sum_r log(1 - q_r) + sum_{r open} [log q_r - log(1 - q_r)]``:
    one pass over cells x regions plus a gather at the open regions (about 100 of 25,000 per
    cell), instead of scoring every region through ``logits``. The decoder keeps every
    probability below 1 (the depth factor is capped at ``1 - 1e-6``); ``log q`` of an open
    region is clamped at -100, as :func:`torch.nn.functional.binary_cross_entropy` does.
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Per-region log probability of ``value`` (0/1), ``(n_cells, n_regions)``."""
        return -nn.functional.binary_cross_entropy(self.probs, value, reduction="none")

    def log_prob_cells(self, value: torch.Tensor) -> torch.Tensor:
        """``log_prob(value > 0).sum(-1)``: log likelihood of each cell, ``(n_cells,)``."""
        q = self.probs
        out = torch.log1p(-q).sum(-1)
        rows, cols, _ = nonzero_entries(value)
        q_open = q[rows, cols]
        gain = torch.log(q_open).clamp(min=-100.0) - torch.log1p(-q_open)
        return out.index_add(0, rows, gain)


class _RegionLogits(torch.autograd.Function):
    """Three parts of ``h @ weight.T``: at a CSR pattern's entries, columns and rows.

    The entries of the pattern, the columns ``sample`` of every row, and the rows ``rows`` at
    every column, without the rest of the full product.

    Forward: :func:`torch.sparse.sampled_addmm` at the pattern's entries and dense products
    with the ``sample`` rows of ``weight`` and for the ``rows`` of ``h``. Backward: the
    weight's gradient is written into one zero-initialised buffer (a CSR product for the
    pattern, ``index_add_`` for the sample, ``addmm_`` for the rows), instead of autograd's
    one full-width buffer per part.
    """

    @staticmethod
    def forward(ctx, h, weight, crow, col, sample, rows):
        pattern = csr_tensor(crow, col, h.new_zeros(col.shape[0]), (h.shape[0], weight.shape[0]))
        ctx.save_for_backward(h, weight, crow, col, sample, rows)
        at_entries = torch.sparse.sampled_addmm(pattern, h, weight.T, beta=0.0).values()
        return at_entries, h @ weight[sample].T, h[rows] @ weight.T

    @staticmethod
    def backward(ctx, grad_entries, grad_sample, grad_rows):
        h, weight, crow, col, sample, rows = ctx.saved_tensors
        shape = (h.shape[0], weight.shape[0])
        grad_h = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_h = torch.sparse.mm(csr_tensor(crow, col, grad_entries, shape), weight)
            grad_h = grad_h + grad_sample @ weight[sample]
            grad_h = grad_h.index_add(0, rows, grad_rows @ weight)
        if ctx.needs_input_grad[1]:
            t = transposed_csr(crow, col, grad_entries, shape)
            grad_weight = weight.new_zeros(weight.shape).addmm_(t, h)
            grad_weight.index_add_(0, sample, grad_sample.T @ h)
            grad_weight.addmm_(grad_rows.T, h[rows])
        return grad_h, grad_weight, None, None, None, None


@dataclass
class SampledPeakBernoulli:
    """PeakVI's Bernoulli in training: the open regions exactly, the closed ones estimated.

    A cell's log likelihood is ``sum_{r open} log q_r + sum_{r closed} log(1 - q_r)`` with
    ``q_r = sigmoid(h . w_r + b_r) * d * f_r``. The first sum is computed exactly at the open
    regions only (``_RegionLogits``). The second is estimated in one of two ways:

    - ``closed_cells`` (a share ``s``): it is computed exactly, over every region, for
      ``m = ceil(s n)`` of the ``n`` decoded rows drawn uniformly without replacement, and
      multiplied by ``n / m``; the other rows get their open term only. The sum over the
      rows is unbiased, and every region's output weights get a gradient at every step;
    - ``cumulative`` (a region draw): a set ``S`` of regions drawn for the whole minibatch
      by systematic sampling with inclusion probabilities ``pi_r`` (their integer running
      sum, in units of ``INCLUSION_UNIT``), and ``sum_{r in S, r closed} log(1 - q_r) /
      pi_r`` for every cell, the Horvitz-Thompson estimator.

    Both are unbiased, and so are their gradients (see ``docs/model.md``). Only
    :meth:`log_prob_cells` is available.

    Parameters
    ----------
    hidden
        The decoder's last hidden layer, ``(n_cells, n_hidden)``.
    weight, bias
        The output layer, ``(n_regions, n_hidden)`` and ``(n_regions,)``.
    region_factors
        Logits of the per-region factor ``f``, ``(n_regions,)``.
    depth
        Per-cell depth factor ``d``, ``(n_cells, 1)``.
    closed_cells
        The share of rows whose closed term is computed (with ``cumulative=None``).
    cumulative
        The region draw's integer running sum of ``pi_r * INCLUSION_UNIT``, ``(n_regions,)``,
        ending at ``K * INCLUSION_UNIT`` for ``K`` regions drawn.
    n_draws
        ``K`` (with ``cumulative``).
    """

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    region_factors: torch.Tensor
    depth: torch.Tensor
    closed_cells: float | None = None
    cumulative: torch.Tensor | None = None
    n_draws: int = 0

    def _q(self, logits: torch.Tensor, depth: torch.Tensor, regions: torch.Tensor):
        # index_select, not indexing: its backward is an index_add, not a sorting index_put
        factors = torch.sigmoid(self.region_factors.index_select(0, regions))
        return torch.sigmoid(logits) * depth * factors

    def draw(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Regions of one systematic draw and their inclusion probabilities ``pi_r``.

        Points ``u, u + 1, ..., u + K - 1`` (``u`` uniform in [0, 1)) on the running sum of
        the ``pi_r`` (which ends at ``K``) each fall in one region's interval, of length
        ``pi_r <= 1``: a region is drawn at most once, with probability ``pi_r``.
        """
        cumulative = self.cumulative
        device = cumulative.device
        start = torch.randint(0, INCLUSION_UNIT, (), device=device)
        points = start + torch.arange(self.n_draws, device=device) * INCLUSION_UNIT
        regions = torch.searchsorted(cumulative, points, right=True)
        regions = regions.clamp(max=cumulative.shape[0] - 1)
        previous = torch.where(regions > 0, cumulative[(regions - 1).clamp(min=0)], 0)
        inclusion = (cumulative[regions] - previous).double() / INCLUSION_UNIT
        return regions, inclusion.float()

    def log_prob_cells(
        self, value: torch.Tensor, measured: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Unbiased estimate of each cell's log likelihood of ``value > 0``, ``(n_cells,)``.

        ``measured``: boolean ``(n_cells, n_regions)``, the entries that count (``value`` is
        0 at the others); ``None``: every entry.
        """
        with full_precision(value):  # sparse kernels lack bfloat16; the sums need float32
            return self._log_prob_cells(value, measured)

    def _log_prob_cells(self, value: torch.Tensor, measured: torch.Tensor | None) -> torch.Tensor:
        n_cells, n_regions = value.shape
        if not value.is_sparse_csr:
            value = value.to_sparse_csr()
        crow, col, open_value = value.crow_indices(), value.col_indices(), value.values() > 0
        owner = entry_rows(value)
        device = col.device
        hidden, weight = self.hidden.float(), self.weight.float()
        none = torch.zeros(0, dtype=torch.long, device=device)
        sample, rows = none, none
        if self.cumulative is not None:
            sample, inclusion = self.draw()
        else:  # a share of the rows, drawn uniformly without replacement
            m = max(1, math.ceil(self.closed_cells * n_cells))
            rows = torch.randperm(n_cells, device=device)[:m]
        logits, sampled, full = _RegionLogits.apply(hidden, weight, crow, col, sample, rows)
        depth_open = self.depth[:, 0].index_select(0, owner)
        q_open = self._q(logits + self.bias.index_select(0, col), depth_open, col)
        open_term = torch.where(open_value, torch.log(q_open).clamp(min=-100.0), 0.0)
        out = hidden.new_zeros(n_cells).index_add(0, owner, open_term)
        if self.cumulative is not None:  # closed term of every cell from the region draw
            closed = torch.log1p(-self._q(sampled + self.bias[sample], self.depth, sample))
            is_open = _open_in(sample, n_regions, col, open_value, owner, n_cells)
            closed = closed.masked_fill(is_open, 0.0)
            if measured is not None:
                closed = closed.masked_fill(~measured[:, sample], 0.0)
            return out + closed @ inclusion.reciprocal()
        # closed term of a share of the rows, over every region, weighted by n / m
        m = rows.shape[0]
        q = torch.sigmoid(full + self.bias) * self.depth[rows] * torch.sigmoid(self.region_factors)
        closed = torch.log1p(-q)
        if measured is not None:
            closed = closed.masked_fill(~measured[rows], 0.0)
        closed = closed.sum(-1)
        position = torch.full((n_cells,), -1, dtype=torch.long, device=device)
        position[rows] = torch.arange(m, device=device)
        at = position[owner]
        hit = (at >= 0) & open_value  # open entries of the chosen rows: not closed
        q_hit = q[at.clamp(min=0), col]
        closed = closed.index_add(0, at.clamp(min=0), torch.where(hit, -torch.log1p(-q_hit), 0.0))
        return out.index_add(0, rows, closed * (n_cells / m))


def _open_in(
    sample: torch.Tensor,
    n_regions: int,
    col: torch.Tensor,
    open_value: torch.Tensor,
    owner: torch.Tensor,
    n_cells: int,
) -> torch.Tensor:
    """``(n_cells, k)`` bool: whether each cell has each sampled region open.

    A scatter into a flat buffer with one spare slot for the entries not drawn: no
    data-dependent shape, so no device-to-host synchronisation.
    """
    k = sample.shape[0]
    position = torch.full((n_regions,), -1, dtype=torch.long, device=col.device)
    position[sample] = torch.arange(k, device=col.device)
    hit = torch.where(open_value, position[col], -1)
    flat = torch.where(hit >= 0, owner * k + hit, n_cells * k)
    is_open = torch.zeros(n_cells * k + 1, dtype=torch.bool, device=col.device)
    return is_open.index_fill(0, flat, True)[:-1].view(n_cells, k)
