"""RNA decoder: negative binomial, zero-inflated NB or Poisson counts with the library size."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from scvi.distributions import NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial
from scvi.nn import DecoderSCVI
from torch import nn


class RNADecoder(nn.Module):
    """Decodes gene expression frequencies from ``z`` and draws counts with the library size.

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
    n_hidden, n_layers
        Width and depth of the decoder.
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
        n_hidden: int = 128,
        n_layers: int = 1,
        gene_likelihood: Literal["nb", "zinb", "poisson"] = "nb",
        dispersion: Literal["gene", "gene-batch"] = "gene",
    ) -> None:
        super().__init__()
        self.gene_likelihood = gene_likelihood
        self.dispersion = dispersion
        self.n_batch = n_batch
        self.decoder = DecoderSCVI(
            n_input,
            n_genes,
            n_cat_list=n_cat_list,
            n_layers=n_layers,
            n_hidden=n_hidden,
            inject_covariates=True,
            use_layer_norm=True,
        )
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
        px_scale, _, px_rate, px_dropout = self.decoder("gene", z, library, batch_index, *cat_list)
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
