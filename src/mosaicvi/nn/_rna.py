"""RNA decoder: negative binomial, zero-inflated NB or Poisson counts with the library size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from scvi.distributions import NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial
from torch import nn

from ._layers import hidden_layers


class RNADecoder(nn.Module):
    """Decodes gene expression frequencies from ``z`` and draws counts with the library size.

    As scvi-tools' ``DecoderSCVI``: hidden layers with covariates injected, a softmax head for
    the frequencies, ``rate = exp(library) * frequencies``, and a linear head for the
    zero-inflation logits; here the hidden layers may have different widths.

    Parameters
    ----------
    n_input
        Latent dimension plus the number of continuous covariates.
    n_genes
        Number of genes.
    n_batch
        Number of batches (for ``dispersion="gene-batch"``).
    n_cat_list
        Categories of each categorical covariate (batch first) injected in every layer.
    widths
        Widths of the hidden layers, from ``z`` outwards.
    gene_likelihood
        ``"nb"``, ``"zinb"`` or ``"poisson"``.
    dispersion
        ``"gene"`` (one inverse dispersion per gene) or ``"gene-batch"`` (per gene and batch).
    """

    def __init__(
        self,
        n_input: int,
        n_genes: int,
        n_batch: int,
        n_cat_list: list[int],
        widths: Sequence[int] = (128,),
        gene_likelihood: Literal["nb", "zinb", "poisson"] = "nb",
        dispersion: Literal["gene", "gene-batch"] = "gene",
    ) -> None:
        super().__init__()
        self.gene_likelihood = gene_likelihood
        self.dispersion = dispersion
        self.n_batch = n_batch
        self.body = hidden_layers(n_input, n_cat_list, widths)
        self.scale_head = nn.Linear(widths[-1], n_genes)
        self.dropout_head = nn.Linear(widths[-1], n_genes)
        shape = (n_genes,) if dispersion == "gene" else (n_genes, n_batch)
        self.px_r = nn.Parameter(torch.randn(*shape))

    def theta(self, batch_index: torch.Tensor) -> torch.Tensor:
        """Inverse dispersion, ``(n_genes,)`` or ``(n_cells, n_genes)``."""
        if self.dispersion == "gene":
            return torch.exp(self.px_r)
        one_hot = F.one_hot(batch_index.view(-1).long(), self.n_batch).to(self.px_r.dtype)
        return torch.exp(F.linear(one_hot, self.px_r))

    def forward(
        self,
        z: torch.Tensor,
        library: torch.Tensor,
        batch_index: torch.Tensor,
        cat_list: tuple[torch.Tensor, ...],
    ) -> tuple[torch.distributions.Distribution, torch.Tensor]:
        """Count distribution and normalised expression (frequencies summing to 1)."""
        h = self.body(z, batch_index, *cat_list)
        px_scale = torch.softmax(self.scale_head(h), dim=-1)
        px_rate = torch.exp(library) * px_scale
        px_dropout = self.dropout_head(h)
        if self.gene_likelihood == "poisson":
            return Poisson(px_rate, scale=px_scale), px_scale
        theta = self.theta(batch_index)
        if self.gene_likelihood == "zinb":
            dist = ZeroInflatedNegativeBinomial(
                mu=px_rate, theta=theta, zi_logits=px_dropout, scale=px_scale
            )
        else:
            dist = NegativeBinomial(mu=px_rate, theta=theta, scale=px_scale)
        return dist, px_scale
