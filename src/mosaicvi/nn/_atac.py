"""ATAC head: Bernoulli accessibility with region and cell factors (PeakVI), or Poisson."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from scvi.distributions import Poisson
from torch import nn
from torch.distributions import Bernoulli, Distribution

from ._head import Covariates, HeadOutput, ModalityHead
from ._layers import hidden_layers, log1p_input
from ._sparse import csr_tensor, entry_rows, full_precision, nonzero_entries, row_sums


class ATACHead(ModalityHead):
    """Region accessibility.

    With ``likelihood="bernoulli"`` (PeakVI), a region is open with probability
    ``p * d * f``: ``p`` decoded from ``z``, ``d`` a per-cell depth factor (the context)
    estimated from the cell's own ATAC counts by an encoder, ``f = sigmoid(region_factors)``
    a learned per-region factor; the data are binarised (``x > 0``). With
    ``likelihood="poisson"``, counts are Poisson with rate ``library * softmax(h +
    region_factors)`` and the context is the log library size. Cells without ATAC get the
    running mean of their batch's context. The denoised value is ``p`` (Bernoulli) or the
    region frequencies (Poisson).

    With ``closed_samples=K``, the Bernoulli likelihood is estimated in training from each
    cell's open regions and ``K`` regions drawn uniformly for the minibatch
    (:class:`SampledPeakBernoulli`): a decode then costs about ``n_hidden x (open regions +
    K)`` per cell instead of ``n_hidden x n_regions``, and the estimate and its gradient are
    unbiased. Evaluation (and validation) use the exact likelihood.

    Parameters
    ----------
    n_features, n_latent, n_batch, widths
        See :class:`~mosaicvi.nn.ModalityHead`; the depth-factor network has the expert's
        widths.
    likelihood
        ``"bernoulli"`` or ``"poisson"``.
    closed_samples
        Bernoulli only: number of regions sampled per minibatch to estimate the likelihood of
        the closed regions in training; ``None`` (default) or at least the number of regions
        scores every region.
    **kwargs
        Passed to :class:`~mosaicvi.nn.ModalityHead`.
    """

    n_context = 1

    def __init__(
        self,
        n_features: int,
        n_latent: int,
        n_batch: int,
        widths: Sequence[int],
        likelihood: Literal["bernoulli", "poisson"] = "bernoulli",
        closed_samples: int | None = None,
        **kwargs,
    ) -> None:
        super().__init__(n_features, n_latent, n_batch, widths, **kwargs)
        if closed_samples is not None and (
            likelihood != "bernoulli"
            or int(closed_samples) != closed_samples
            or closed_samples < 1
        ):
            raise ValueError(
                "`closed_samples` must be None or a positive integer, with the Bernoulli ATAC "
                f"likelihood; got {closed_samples!r} with {likelihood!r}."
            )
        self.likelihood = likelihood
        self.closed_samples = closed_samples
        self.output = nn.Linear(self.decoder_widths[-1], n_features)
        self.region_factors = nn.Parameter(torch.zeros(n_features))
        if likelihood == "bernoulli":
            self.depth_body = hidden_layers(n_features, self.cat_sizes, list(widths))
            self.depth_output = nn.Linear(widths[-1], 1)

    def observed_context(self, x: torch.Tensor, covariates: Covariates) -> torch.Tensor:
        """Depth factor in (0, 1) (Bernoulli) or log library size (Poisson), ``(n_cells, 1)``."""
        if self.likelihood == "poisson":
            return torch.log(row_sums(x).clamp(min=1.0))
        h = self.depth_body(log1p_input(x), *covariates.cat_list)
        return torch.sigmoid(self.depth_output(h))

    def decode(
        self,
        z: torch.Tensor,
        context: torch.Tensor,
        covariates: Covariates,
        sample_local: bool = True,
    ) -> HeadOutput:
        """Distribution of the (binarised) data and the decoded accessibility or frequency."""
        depth = context.clamp(max=1.0 - 1e-6)
        if self.training and self.closed_samples and self.closed_samples < self.n_features:
            hidden = self.hidden(z, covariates)
            px = SampledPeakBernoulli(
                hidden,
                self.output.weight,
                self.output.bias,
                self.region_factors,
                depth,
                self.closed_samples,
            )
            return HeadOutput(px, None)  # no full-width decode in sampled training
        h = self.output(self.hidden(z, covariates))
        if self.likelihood == "poisson":
            scale = torch.softmax(h + self.region_factors, dim=-1)
            return HeadOutput(Poisson(torch.exp(context) * scale, scale=scale), scale)
        p = torch.sigmoid(h)
        # depth < 1 - 1e-6 keeps log(1 - probs) finite without clamping cells x regions
        probs = p * (depth * torch.sigmoid(self.region_factors))
        return HeadOutput(PeakBernoulli(probs=probs, validate_args=False), p)

    def region_factor(self) -> torch.Tensor:
        """``sigmoid(region_factors)``, the learned per-region factor (Bernoulli)."""
        return torch.sigmoid(self.region_factors)

    def log_likelihood(self, px: Distribution, x: torch.Tensor) -> torch.Tensor:
        """Log likelihood of each cell's ATAC counts ``x``: of ``x > 0`` for Bernoulli."""
        if self.likelihood == "bernoulli":  # sparse-aware sum over the binarised counts
            return px.log_prob_cells(x)  # PeakBernoulli or SampledPeakBernoulli
        return super().log_likelihood(px, x)


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


class _OpenLogits(torch.autograd.Function):
    """``h @ weight.T`` at the stored entries of a CSR pattern, without the full product.

    Forward is :func:`torch.sparse.sampled_addmm`; backward is two sparse-dense products
    (``G @ weight`` and ``G.T @ h`` for the gradient values ``G``), each costing about
    ``nnz x n_hidden``, instead of autograd's path through the full product.
    """

    @staticmethod
    def forward(ctx, h, weight, crow, col, rows):
        pattern = csr_tensor(crow, col, h.new_zeros(col.shape[0]), (h.shape[0], weight.shape[0]))
        ctx.save_for_backward(h, weight, crow, col, rows)
        return torch.sparse.sampled_addmm(pattern, h, weight.T, beta=0.0).values()

    @staticmethod
    def backward(ctx, grad):
        h, weight, crow, col, rows = ctx.saved_tensors
        grad_h = grad_weight = None
        if ctx.needs_input_grad[0]:
            g = csr_tensor(crow, col, grad, (h.shape[0], weight.shape[0]))
            grad_h = torch.sparse.mm(g, weight)
        if ctx.needs_input_grad[1]:
            g_t = torch.sparse_coo_tensor(
                torch.stack([col, rows]), grad, (weight.shape[0], h.shape[0])
            )
            grad_weight = torch.sparse.mm(g_t, h)
        return grad_h, grad_weight, None, None, None


@dataclass
class SampledPeakBernoulli:
    """PeakVI's Bernoulli, scored from the open regions plus a uniform sample of regions.

    A cell's log likelihood is ``sum_{r open} log q_r + sum_{r closed} log(1 - q_r)`` with
    ``q_r = sigmoid(h . w_r + b_r) * d * f_r``. The first sum is computed exactly at the open
    regions only (``_OpenLogits``). The second is estimated from ``K`` regions ``S``
    drawn uniformly without replacement for the whole minibatch:
    ``(R / K) sum_{r in S, r closed} log(1 - q_r)`` with ``R`` regions, whose expectation
    over ``S`` is the exact sum. The estimate of the log likelihood, and so of its gradient,
    is unbiased; its variance falls as ``1 / K`` (see ``docs/model.md``). Only
    :meth:`log_prob_cells` is available: nothing is decoded at full width.

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
    closed_samples
        ``K``, the number of regions sampled.
    """

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    region_factors: torch.Tensor
    depth: torch.Tensor
    closed_samples: int

    def _q(self, logits: torch.Tensor, depth: torch.Tensor, regions: torch.Tensor):
        return torch.sigmoid(logits) * depth * torch.sigmoid(self.region_factors[regions])

    def log_prob_cells(self, value: torch.Tensor) -> torch.Tensor:
        """Unbiased estimate of each cell's log likelihood of ``value > 0``, ``(n_cells,)``."""
        with full_precision(value):  # sparse kernels lack bfloat16; the sums need float32
            return self._log_prob_cells(value)

    def _log_prob_cells(self, value: torch.Tensor) -> torch.Tensor:
        n_cells, n_regions = value.shape
        if not value.is_sparse_csr:
            value = value.to_sparse_csr()
        crow, col, open_value = value.crow_indices(), value.col_indices(), value.values() > 0
        owner = entry_rows(value)
        hidden, weight = self.hidden.float(), self.weight.float()
        logits = _OpenLogits.apply(hidden, weight, crow, col, owner)
        q_open = self._q(logits + self.bias[col], self.depth[owner, 0], col)
        open_term = torch.where(open_value, torch.log(q_open).clamp(min=-100.0), 0.0)
        out = hidden.new_zeros(n_cells).index_add(0, owner, open_term)
        # closed regions: a uniform sample shared by the minibatch, open ones masked out
        sample = torch.randperm(n_regions, device=col.device)[: self.closed_samples]
        k = sample.shape[0]
        logits = hidden @ weight[sample].T + self.bias[sample]
        closed = torch.log1p(-self._q(logits, self.depth, sample))
        position = torch.full((n_regions,), -1, dtype=torch.long, device=col.device)
        position[sample] = torch.arange(k, device=col.device)
        hit = torch.where(open_value, position[col], -1)
        is_open = torch.zeros_like(closed, dtype=torch.bool)
        is_open[owner[hit >= 0], hit[hit >= 0]] = True
        closed = torch.where(is_open, 0.0, closed)
        return out + closed.sum(-1) * (n_regions / k)
