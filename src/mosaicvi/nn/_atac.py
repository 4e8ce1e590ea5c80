"""ATAC head: Bernoulli accessibility with region and cell factors (PeakVI), or Poisson."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from scvi.distributions import Poisson
from torch import nn
from torch.distributions import Bernoulli, Distribution

from ._head import Covariates, HeadOutput, ModalityHead
from ._layers import hidden_layers, log1p_input


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

    Parameters
    ----------
    n_features, n_latent, n_batch, widths
        See :class:`~mosaicvi.nn.ModalityHead`; the depth-factor network has the expert's
        widths.
    likelihood
        ``"bernoulli"`` or ``"poisson"``.
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
        **kwargs,
    ) -> None:
        super().__init__(n_features, n_latent, n_batch, widths, **kwargs)
        self.likelihood = likelihood
        self.output = nn.Linear(self.decoder_widths[-1], n_features)
        self.region_factors = nn.Parameter(torch.zeros(n_features))
        if likelihood == "bernoulli":
            self.depth_body = hidden_layers(n_features, self.cat_sizes, list(widths))
            self.depth_output = nn.Linear(widths[-1], 1)

    def observed_context(self, x: torch.Tensor, covariates: Covariates) -> torch.Tensor:
        """Depth factor in (0, 1) (Bernoulli) or log library size (Poisson), ``(n_cells, 1)``."""
        if self.likelihood == "poisson":
            return torch.log(x.sum(-1, keepdim=True).clamp(min=1.0))
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
        h = self.output(self.hidden(z, covariates))
        if self.likelihood == "poisson":
            scale = torch.softmax(h + self.region_factors, dim=-1)
            return HeadOutput(Poisson(torch.exp(context) * scale, scale=scale), scale)
        p = torch.sigmoid(h)
        # depth < 1 - 1e-6 keeps log(1 - probs) finite without clamping cells x regions
        probs = p * (context.clamp(max=1.0 - 1e-6) * torch.sigmoid(self.region_factors))
        return HeadOutput(PeakBernoulli(probs=probs, validate_args=False), p)

    def region_factor(self) -> torch.Tensor:
        """``sigmoid(region_factors)``, the learned per-region factor (Bernoulli)."""
        return torch.sigmoid(self.region_factors)

    def log_likelihood(self, px: Distribution, x: torch.Tensor) -> torch.Tensor:
        """Log likelihood of each cell's ATAC counts ``x``: of ``x > 0`` for Bernoulli."""
        if self.likelihood == "bernoulli":  # sparse-aware sum over the binarised counts
            return px.log_prob_cells(x)
        return px.log_prob(x).sum(-1)


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
