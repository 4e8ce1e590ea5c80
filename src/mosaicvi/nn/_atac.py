"""ATAC heads: Bernoulli accessibility with region and cell factors (PeakVI), or Poisson counts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import scipy.sparse as sp
import torch
from scvi.distributions import Poisson
from torch import nn
from torch.distributions import Bernoulli, Distribution

from ._head import Covariates, HeadOutput, ModalityHead
from ._layers import hidden_layers, log1p_input
from ._sparse import (
    csr_tensor,
    entry_rows,
    full_precision,
    nonzero_entries,
    row_sums,
    transposed_csr,
)

#: ``closed_cells`` of :class:`BernoulliATACHead` for ``"auto"``
DEFAULT_CLOSED_CELLS = 0.25
#: ``closed_cells="auto"`` scores every region below this many regions (a full-width
#: decode is cheap there, and the estimate would only add variance)
MIN_SAMPLED_REGIONS = 1000
#: The region sampler's running sum of inclusion probabilities, in integer units of this
#: (exact, and never cast by a module's ``.half()`` or ``precision="bf16-true"``)
INCLUSION_UNIT = 2**40
#: Share of the sampling probabilities spread uniformly over the regions (the rest follows
#: each region's open frequency): bounds the importance weights by ``1 / share``
UNIFORM_SHARE = 0.5


class ATACHead(ModalityHead):
    """Region accessibility: the common part of the ATAC heads, one subclass per likelihood.

    Both likelihoods decode a per-region logit ``h`` from ``z`` (``output``) and learn a
    per-region factor (``region_factors``); the per-cell context has one column. The
    registry names this class for ATAC; :meth:`variant` gives the head of the ``likelihood``
    option: :class:`BernoulliATACHead` (PeakVI, the default) or :class:`PoissonATACHead`.
    """

    n_context = 1
    #: the likelihood this head models
    likelihood: ClassVar[str] = ""
    model_arguments = {
        "atac_likelihood": ("likelihood", "bernoulli"),
        "atac_closed_cells": ("closed_cells", "auto"),
        "atac_closed_samples": ("closed_samples", None),
    }

    @classmethod
    def head_options(cls, **arguments) -> dict[str, object]:
        """``likelihood`` and the closed-region estimator (``closed_cells`` or ``closed_samples``).

        ``atac_closed_cells="auto"`` leaves the choice to the head's data (the Bernoulli
        head's ``data_options``: a quarter of the cells from 1,000 regions); ``None`` or 1
        scores every cell. ``atac_closed_samples`` replaces ``atac_closed_cells``.
        """
        options = super().head_options(**arguments)
        cls.check_choice("atac_likelihood", options["likelihood"], ("bernoulli", "poisson"))
        cells, samples = options.pop("closed_cells"), options.pop("closed_samples")
        return {"likelihood": options["likelihood"], **_closed_options(cells, samples)}

    def __init__(self, n_features: int, n_latent: int, n_batch: int, widths, **kwargs) -> None:
        if type(self) is ATACHead:
            raise TypeError(
                "ATACHead is the base of BernoulliATACHead and PoissonATACHead: build one of "
                "those, or `ATACHead.variant(likelihood=...)`."
            )
        super().__init__(n_features, n_latent, n_batch, widths, **kwargs)
        self.output = nn.Linear(self.decoder_widths[-1], n_features)
        self.region_factors = nn.Parameter(torch.zeros(n_features))

    @classmethod
    def variant(
        cls, likelihood: Literal["bernoulli", "poisson"] | None = None, **options
    ) -> tuple[type[ModalityHead], dict]:
        """The head class of ``likelihood`` and the options it takes.

        By default the class's own likelihood (Bernoulli for :class:`ATACHead`).
        """
        heads = {"bernoulli": BernoulliATACHead, "poisson": PoissonATACHead}
        if likelihood is None:
            likelihood = cls.likelihood or "bernoulli"
        if likelihood not in heads:
            raise ValueError(
                f"The ATAC likelihood must be one of {list(heads)}, got {likelihood!r}."
            )
        return heads[likelihood], options

    def region_factor(self) -> torch.Tensor:
        """``sigmoid(region_factors)``, the learned per-region factor."""
        return torch.sigmoid(self.region_factors)

    def normalize_regions(self, values: np.ndarray) -> np.ndarray:
        """Decoded accessibility at full region depth (``get_accessibility_estimates``).

        The Bernoulli head multiplies by the region factors (the probability of observing
        the region); the Poisson head's frequencies already include them (unchanged).
        """
        if self.likelihood != "bernoulli":
            return values
        return values * self.region_factor().detach().cpu().numpy()


class BernoulliATACHead(ATACHead):
    """Binarised accessibility with region and cell factors (PeakVI).

    A region is open with probability ``p * d * f``: ``p = sigmoid(h)`` decoded from ``z``,
    ``d`` a per-cell depth factor (the context) estimated from the cell's own ATAC counts by
    a network, ``f = sigmoid(region_factors)`` a learned per-region factor; the data are
    binarised (``x > 0``). Cells without ATAC get the running mean of their batch's depth
    factor. The denoised value is ``p``.

    In training, the likelihood is estimated (:class:`SampledPeakBernoulli`): every cell's
    open regions are scored exactly, and the closed regions' term, the sum over every region
    a cell has closed, is computed exactly for a random ``closed_cells`` share of the
    minibatch's decoded cells and weighted by the inverse of that share (the default), or
    for every cell from ``closed_samples`` regions drawn for the minibatch in proportion to
    their open frequency (``region_frequency``) with importance weights. Both estimates and
    their gradients are unbiased; validation and every getter use the exact likelihood.

    Parameters
    ----------
    n_features, n_latent, n_batch, widths
        See :class:`~mosaicvi.nn.ModalityHead`; the depth-factor network has the expert's
        widths.
    closed_cells
        Share of a minibatch's decoded cells, in (0, 1], whose closed regions are scored in
        training; ``None`` or 1 scores them for every cell. ``"auto"`` (default):
        ``DEFAULT_CLOSED_CELLS`` with at least ``MIN_SAMPLED_REGIONS`` regions, every
        cell below.
    closed_samples
        Instead of ``closed_cells``: the number of regions drawn per minibatch for every
        cell's closed term; ``None`` (default) draws none. Needs ``closed_cells=None``.
    region_frequency
        Fraction of the measured cells in which each region is open, ``(n_regions,)``, the
        region draw's proposal (:meth:`data_options` computes it when ``closed_samples`` is
        given); ``None`` draws regions uniformly.
    **kwargs
        Passed to :class:`~mosaicvi.nn.ModalityHead`.
    """

    likelihood = "bernoulli"

    def __init__(
        self,
        n_features: int,
        n_latent: int,
        n_batch: int,
        widths: Sequence[int],
        closed_cells: float | Literal["auto"] | None = "auto",
        closed_samples: int | None = None,
        region_frequency: np.ndarray | None = None,
        **kwargs,
    ) -> None:
        if closed_samples is not None and (
            isinstance(closed_samples, bool)
            or not isinstance(closed_samples, (int, np.integer))
            or closed_samples < 1
        ):
            raise ValueError(
                f"`closed_samples` must be None or a positive integer, got {closed_samples!r}."
            )
        if isinstance(closed_cells, str) and closed_cells == "auto":
            auto = closed_samples is None and n_features >= MIN_SAMPLED_REGIONS
            closed_cells = DEFAULT_CLOSED_CELLS if auto else None
        if closed_cells is not None and (
            isinstance(closed_cells, bool)
            or not isinstance(closed_cells, (int, float, np.integer, np.floating))
            or not 0.0 < float(closed_cells) <= 1.0
        ):
            raise ValueError(f"`closed_cells` must be None or in (0, 1], got {closed_cells!r}.")
        if closed_cells is not None and closed_samples is not None:
            raise ValueError(
                "Give one of `closed_cells` (a share of the cells, every region) and "
                "`closed_samples` (a sample of the regions, every cell), not both."
            )
        super().__init__(n_features, n_latent, n_batch, widths, **kwargs)
        self.closed_cells = None if closed_cells is None else float(closed_cells)
        self.closed_samples = None if closed_samples is None else int(closed_samples)
        self.depth_body = hidden_layers(
            n_features, self.cat_sizes, list(widths), n_wide=n_features
        )
        self.depth_output = nn.Linear(widths[-1], 1)
        if self.sampled_regions:
            inclusion = closed_inclusion(n_features, self.closed_samples, region_frequency)
            units = torch.round(inclusion * INCLUSION_UNIT).to(torch.int64)
            units[torch.argmin(units)] += self.closed_samples * INCLUSION_UNIT - units.sum()
            # integer running sum of the inclusion probabilities: an exact systematic draw
            self.register_buffer("closed_cumulative", torch.cumsum(units, 0), persistent=False)

    @classmethod
    def data_options(
        cls, counts, rows: np.ndarray, batch: np.ndarray, n_batch: int, **options
    ) -> dict[str, object]:
        """``region_frequency``, the fraction of the measured cells with each region open.

        Only when regions are drawn (``closed_samples`` below the number of regions).
        """
        k = options.get("closed_samples")
        if k is None or k >= counts.shape[1]:
            return {}
        return {"region_frequency": region_open_frequency(counts, rows)}

    @property
    def sampled_regions(self) -> bool:
        """Whether training draws regions for the closed term (``closed_samples``)."""
        return self.closed_samples is not None and self.closed_samples < self.n_features

    @property
    def sampled(self) -> bool:
        """Whether training estimates the likelihood (from some cells or some regions)."""
        cells = self.closed_cells is not None and self.closed_cells < 1.0
        return cells or self.sampled_regions

    def observed_context(self, x: torch.Tensor, covariates: Covariates) -> torch.Tensor:
        """Depth factor in (0, 1), ``(n_cells, 1)``."""
        h = self.depth_body(log1p_input(x), *covariates.cat_list)
        return torch.sigmoid(self.depth_output(h))

    def decode(
        self,
        z: torch.Tensor,
        context: torch.Tensor,
        covariates: Covariates,
        sample_local: bool = True,
    ) -> HeadOutput:
        """Distribution of the binarised data and the decoded accessibility ``p``."""
        depth = context.clamp(max=1.0 - 1e-6)
        hidden = self.hidden(z, covariates)
        if self.training and self.sampled:
            px = SampledPeakBernoulli(
                hidden,
                self.output.weight,
                self.output.bias,
                self.region_factors,
                depth,
                closed_cells=None if self.sampled_regions else self.closed_cells,
                cumulative=self.closed_cumulative if self.sampled_regions else None,
                n_draws=self.closed_samples if self.sampled_regions else 0,
            )
            return HeadOutput(px, None)  # no full-width decode of every cell in training
        p = torch.sigmoid(self.output(hidden))
        # depth < 1 - 1e-6 keeps log(1 - probs) finite without clamping cells x regions
        probs = p * (depth * self.region_factor())
        return HeadOutput(PeakBernoulli(probs=probs, validate_args=False), p)

    def log_likelihood(self, px: Distribution, x: torch.Tensor) -> torch.Tensor:
        """Log likelihood of each cell's ``x > 0`` (sparse-aware), exact or estimated."""
        return px.log_prob_cells(x)  # PeakBernoulli or SampledPeakBernoulli

    def masked_log_likelihood(
        self, px: Distribution, x: torch.Tensor, measured: torch.Tensor | None
    ) -> torch.Tensor:
        """Log likelihood of each cell's measured ``x > 0``, ``(n_cells,)``.

        Sparse-aware as :meth:`PeakBernoulli.log_prob_cells`: the closed term over the
        measured regions, the open regions' gain where measured (``x`` is 0 elsewhere).
        """
        if measured is None:
            return self.log_likelihood(px, x)
        if isinstance(px, SampledPeakBernoulli):
            return px.log_prob_cells(x, measured)
        q = px.probs
        closed = torch.log1p(-q)
        out = torch.where(measured, closed, torch.zeros_like(closed)).sum(-1)
        rows, cols, _ = nonzero_entries(x)  # x is 0 at unmeasured entries
        q_open = q[rows, cols]
        gain = torch.log(q_open).clamp(min=-100.0) - torch.log1p(-q_open)
        return out.index_add(0, rows, gain)


class PoissonATACHead(ATACHead):
    """Fragment counts: Poisson with rate ``library * softmax(h + region_factors)``.

    The context is the log library size (total counts) of the cell; cells without ATAC get
    the running mean of their batch's. The denoised value is the region frequencies.

    This head has no sampled estimator: the softmax's normaliser sums over every region,
    and the log of an estimate of that sum would be a biased estimate of the likelihood. Its
    training cost grows with the number of regions.

    Parameters
    ----------
    n_features, n_latent, n_batch, widths
        See :class:`~mosaicvi.nn.ModalityHead`.
    **kwargs
        Passed to :class:`~mosaicvi.nn.ModalityHead`.
    """

    likelihood = "poisson"

    def __init__(
        self, n_features: int, n_latent: int, n_batch: int, widths: Sequence[int], **kwargs
    ) -> None:
        for option in ("closed_cells", "closed_samples"):
            if kwargs.pop(option, None) is not None:
                raise ValueError(
                    f"`{option}` (`atac_{option}`) is for the Bernoulli ATAC likelihood; the "
                    "Poisson one scores every region (the softmax's normaliser needs them all)."
                )
        super().__init__(n_features, n_latent, n_batch, widths, **kwargs)

    def observed_context(self, x: torch.Tensor, covariates: Covariates) -> torch.Tensor:
        """Log library size, ``(n_cells, 1)``."""
        return torch.log(row_sums(x).clamp(min=1.0))

    def decode(
        self,
        z: torch.Tensor,
        context: torch.Tensor,
        covariates: Covariates,
        sample_local: bool = True,
    ) -> HeadOutput:
        """Count distribution and the decoded region frequencies."""
        h = self.output(self.hidden(z, covariates))
        scale = torch.softmax(h + self.region_factors, dim=-1)
        rate = torch.exp(context) * scale
        measured = self.batch_measured(covariates)
        if measured is not None:  # the library counts the batch's measured regions only
            rate = rate / (scale * measured).sum(-1, keepdim=True).clamp(min=1e-8)
        return HeadOutput(Poisson(rate, scale=scale), scale)


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


def _closed_options(cells, samples) -> dict:
    """The Bernoulli head's ``closed_cells`` / ``closed_samples`` from the model's arguments."""
    if not (
        (isinstance(cells, str) and cells == "auto")
        or cells is None
        or (
            isinstance(cells, int | float | np.integer | np.floating)
            and not isinstance(cells, bool)
            and 0.0 < float(cells) <= 1.0
        )
    ):
        raise ValueError(f"`atac_closed_cells` must be 'auto', None or in (0, 1], got {cells!r}.")
    if samples is not None and (
        not isinstance(samples, int | np.integer) or isinstance(samples, bool) or samples < 1
    ):
        raise ValueError(
            f"`atac_closed_samples` must be None or a positive integer, got {samples!r}."
        )
    if samples is not None:
        if not (isinstance(cells, str) or cells is None):
            raise ValueError(
                "Give one of `atac_closed_cells` and `atac_closed_samples`, not both."
            )
        return {"closed_cells": None, "closed_samples": int(samples)}
    if isinstance(cells, str):
        return {}
    return {"closed_cells": None if cells is None else float(cells)}
