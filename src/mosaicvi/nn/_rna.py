"""RNA head: negative binomial, zero-inflated NB or Poisson counts with the library size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from scvi.distributions import NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial
from torch import nn

from ._head import ModalityHead
from ._head_types import Covariates, HeadOutput
from ._sparse import entry_rows, nonzero_entries, row_sums


class RNAHead(ModalityHead):
    """Gene expression: decoded frequencies times the library size, as scVI.

    As scvi-tools' ``DecoderSCVI``: hidden layers with covariates injected, a softmax head for
    the frequencies, ``rate = exp(library) * frequencies``, and a linear head for the
    zero-inflation logits; here the hidden layers may have different widths. The context is
    the log library size (total counts) of the cell; cells without RNA get the running mean
    of their batch's. The denoised value is the frequencies (normalised expression). When
    the cell's batch did not measure some genes, the library counts the measured genes only,
    and the rate is ``exp(library) * frequencies / (sum of the measured genes' frequencies)``.

    Parameters
    ----------
    n_features, n_latent, n_batch, widths
        See :class:`~mosaicvi.nn.ModalityHead`.
    likelihood
        ``"nb"``, ``"zinb"`` or ``"poisson"``.
    dispersion
        ``"gene"`` (one inverse dispersion per gene) or ``"gene-batch"`` (per gene and batch).
    **kwargs
        Passed to :class:`~mosaicvi.nn.ModalityHead`.
    """

    n_context = 1
    model_arguments = {
        "gene_likelihood": ("likelihood", "nb"),
        "dispersion": ("dispersion", "gene"),
    }
    LIKELIHOODS = ("nb", "zinb", "poisson")
    DISPERSIONS = ("gene", "gene-batch")

    @classmethod
    def head_options(cls, **arguments) -> dict[str, object]:
        """``likelihood`` (``gene_likelihood``) and ``dispersion``, checked."""
        options = super().head_options(**arguments)
        cls.check_choice("gene_likelihood", options["likelihood"], cls.LIKELIHOODS)
        cls.check_choice("dispersion", options["dispersion"], cls.DISPERSIONS)
        return options

    def __init__(
        self,
        n_features: int,
        n_latent: int,
        n_batch: int,
        widths: Sequence[int],
        likelihood: Literal["nb", "zinb", "poisson"] = "nb",
        dispersion: Literal["gene", "gene-batch"] = "gene",
        **kwargs,
    ) -> None:
        self.check_choice("likelihood", likelihood, self.LIKELIHOODS)
        self.check_choice("dispersion", dispersion, self.DISPERSIONS)
        super().__init__(n_features, n_latent, n_batch, widths, **kwargs)
        self.likelihood = likelihood
        self.dispersion = dispersion
        self.scale_head = nn.Linear(self.decoder_widths[-1], n_features)
        self.dropout_head = nn.Linear(self.decoder_widths[-1], n_features)
        shape = (n_features,) if dispersion == "gene" else (n_features, n_batch)
        self.px_r = nn.Parameter(torch.randn(*shape))

    def observed_context(self, x: torch.Tensor, covariates: Covariates) -> torch.Tensor:
        """Log library size, ``(n_cells, 1)``."""
        return torch.log(row_sums(x).clamp(min=1.0))

    def theta(self, batch: torch.Tensor) -> torch.Tensor:
        """Inverse dispersion, ``(n_genes,)`` or ``(n_cells, n_genes)``."""
        if self.dispersion == "gene":
            return torch.exp(self.px_r)
        one_hot = F.one_hot(batch.view(-1).long(), self.n_batch).to(self.px_r.dtype)
        return torch.exp(F.linear(one_hot, self.px_r))

    def decode(
        self,
        z: torch.Tensor,
        context: torch.Tensor,
        covariates: Covariates,
        sample_local: bool = True,
    ) -> HeadOutput:
        """Count distribution and normalised expression (frequencies summing to 1)."""
        h = self.hidden(z, covariates)
        px_scale = torch.softmax(self.scale_head(h), dim=-1)
        px_rate = torch.exp(context) * px_scale
        measured = self.batch_measured(covariates)
        if measured is not None:  # the library counts the batch's measured genes only
            px_rate = px_rate / (px_scale * measured).sum(-1, keepdim=True).clamp(min=1e-8)
        if self.likelihood == "poisson":
            return HeadOutput(Poisson(px_rate, scale=px_scale), px_scale)
        theta = self.theta(covariates.batch)
        if self.likelihood == "zinb":
            dist = ZeroInflatedNegativeBinomial(
                mu=px_rate, theta=theta, zi_logits=self.dropout_head(h), scale=px_scale
            )
        else:
            dist = NegativeBinomial(mu=px_rate, theta=theta, scale=px_scale)
        return HeadOutput(dist, px_scale)

    def log_likelihood(self, px, x: torch.Tensor) -> torch.Tensor:
        """Log likelihood of each cell's counts ``x`` (dense or sparse CSR), ``(n_cells,)``.

        Under the negative binomial, the terms that are not zero at a zero count (the
        log-gamma terms and ``x log(mu / (theta + mu))``) are computed at the non-zero counts
        only (:func:`nb_log_prob_cells`): the same value as ``px.log_prob(x).sum(-1)``.
        """
        if type(px) is NegativeBinomial:
            return nb_log_prob_cells(px.mu, px.theta, x)
        return super().log_likelihood(px, x)


def nb_log_prob_cells(
    mu: torch.Tensor, theta: torch.Tensor, x: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    r"""Negative binomial log likelihood of each row of ``x``, the zeros' terms in closed form.

    As scvi-tools' ``log_nb_positive`` summed over features,

    .. math::
        \sum_g \theta_g \log\frac{\theta_g}{\theta_g + \mu_g}
        + \sum_{g: x_g > 0} \Big[x_g \log\frac{\mu_g}{\theta_g + \mu_g}
        + \log\Gamma(x_g + \theta_g) - \log\Gamma(\theta_g) - \log\Gamma(x_g + 1)\Big],

    whose second sum is zero at every zero count: the log-gamma functions (and their
    digamma gradients) are evaluated at the non-zero counts of ``x`` only (dense or sparse
    CSR), instead of at every entry.

    Parameters
    ----------
    mu, theta
        Mean and inverse dispersion, ``(n_cells, n_features)`` (``theta`` may broadcast).
    x
        Counts, ``(n_cells, n_features)``.
    eps
        The stability constant of ``log_nb_positive``.
    """
    if x.dim() != 2 or tuple(x.shape) != tuple(mu.shape):
        raise ValueError(
            f"`x` must have the shape of `mu`, {tuple(mu.shape)}; got {tuple(x.shape)}."
        )
    theta = theta.expand_as(mu)
    log_theta_mu = torch.log(theta + mu + eps)
    out = (theta * (torch.log(theta + eps) - log_theta_mu)).sum(-1)
    if x.is_sparse_csr:  # every stored entry: a stored zero adds exactly 0, unfiltered
        rows, cols, values = entry_rows(x), x.col_indices(), x.values()
    else:
        rows, cols, values = nonzero_entries(x)
    values = values.to(mu.dtype)
    t = theta[rows, cols]
    gain = (
        values * (torch.log(mu[rows, cols] + eps) - log_theta_mu[rows, cols])
        + torch.lgamma(values + t)
        - torch.lgamma(t)
        - torch.lgamma(values + 1)
    )
    return out.index_add(0, rows, gain)
