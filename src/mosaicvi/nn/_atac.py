"""ATAC decoder: Bernoulli accessibility with region and cell factors (PeakVI), or Poisson."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from scvi.distributions import Poisson
from torch import nn
from torch.distributions import Bernoulli

from ._layers import hidden_layers, log1p_input


class ATACDecoder(nn.Module):
    """Decodes region accessibility from ``z``.

    With ``likelihood="bernoulli"`` (PeakVI), a region is open with probability
    ``p * d * f``: ``p`` decoded from ``z``, ``d`` a per-cell depth factor estimated from the
    cell's own ATAC counts, ``f = sigmoid(region_factors)`` a learned per-region factor; the
    data are binarised (``x > 0``). With ``likelihood="poisson"``, counts are Poisson with rate
    ``library * softmax(h + region_factors)``.

    Parameters
    ----------
    n_input
        Latent dimension plus the number of continuous covariates.
    n_regions
        Number of regions (peaks).
    n_cat_list
        Categories of each categorical covariate (batch first) injected in every layer.
    widths
        Widths of the decoder's hidden layers, from ``z`` outwards; the depth-factor network
        (an encoder of the cell's counts) uses them in reverse order.
    likelihood
        ``"bernoulli"`` or ``"poisson"``.
    """

    def __init__(
        self,
        n_input: int,
        n_regions: int,
        n_cat_list: list[int],
        widths: Sequence[int] = (128,),
        likelihood: Literal["bernoulli", "poisson"] = "bernoulli",
    ) -> None:
        super().__init__()
        self.likelihood = likelihood
        self.body = hidden_layers(n_input, n_cat_list, widths)
        self.output = nn.Linear(widths[-1], n_regions)
        self.region_factors = nn.Parameter(torch.zeros(n_regions))
        if likelihood == "bernoulli":
            self.depth_body = hidden_layers(n_regions, n_cat_list, widths[::-1])
            self.depth_output = nn.Linear(widths[0], 1)

    def cell_depth(
        self, x: torch.Tensor, present: torch.Tensor, cat_list: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        """Per-cell depth factor in (0, 1), ``(n_cells, 1)``; 1 for cells without ATAC."""
        depth = x.new_ones(x.shape[0], 1)
        if self.likelihood != "bernoulli":
            return depth
        idx = present.nonzero(as_tuple=True)[0]
        if idx.numel() == 0:
            return depth
        h = self.depth_body(log1p_input(x[idx]), *(c[idx] for c in cat_list))
        return depth.index_copy(0, idx, torch.sigmoid(self.depth_output(h)))

    def forward(
        self,
        z: torch.Tensor,
        depth: torch.Tensor,
        library: torch.Tensor,
        cat_list: tuple[torch.Tensor, ...],
    ) -> tuple[torch.distributions.Distribution, torch.Tensor]:
        """Distribution of the (binarised) data and the decoded accessibility ``p`` or frequency."""
        h = self.output(self.body(z, *cat_list))
        if self.likelihood == "poisson":
            scale = torch.softmax(h + self.region_factors, dim=-1)
            return Poisson(torch.exp(library) * scale, scale=scale), scale
        p = torch.sigmoid(h)
        # depth < 1 - 1e-6 keeps log(1 - probs) finite without clamping cells x regions
        probs = p * (depth.clamp(max=1.0 - 1e-6) * torch.sigmoid(self.region_factors))
        return PeakBernoulli(probs=probs, validate_args=False), p

    def observation(self, x: torch.Tensor) -> torch.Tensor:
        """What the likelihood scores: ``x > 0`` for Bernoulli, the counts for Poisson."""
        return (x > 0).to(x.dtype) if self.likelihood == "bernoulli" else x

    def log_likelihood(self, dist: torch.distributions.Distribution, x: torch.Tensor):
        """Log likelihood of each cell's ATAC counts ``x`` under ``dist``, ``(n_cells,)``."""
        if self.likelihood == "bernoulli":  # sparse-aware sum over the binarised counts
            return dist.log_prob_cells(x)
        return dist.log_prob(self.observation(x)).sum(-1)


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
        rows, cols = value.nonzero(as_tuple=True)
        q_open = q[rows, cols]
        gain = torch.log(q_open).clamp(min=-100.0) - torch.log1p(-q_open)
        return out.index_add(0, rows, gain)
