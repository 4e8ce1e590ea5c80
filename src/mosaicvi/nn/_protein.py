"""Protein head: totalVI's background + foreground negative binomial mixture, or plain NB."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scvi.distributions import NegativeBinomial, NegativeBinomialMixture
from torch import nn
from torch.distributions import Normal, kl_divergence

from ._head import ModalityHead
from ._head_types import Covariates, HeadOutput


class ProteinHead(ModalityHead):
    """Protein (CITE-seq ADT) counts: totalVI's background + foreground mixture, or plain NB.

    ``likelihood="mixture"`` follows totalVI: a cell's log background rate per protein is
    Gaussian, ``log b ~ N(alpha(z), beta(z))`` (the head's own per-cell latent variable, with
    its KL as an extra loss term), with a per-batch prior ``N(prior_mean, prior_scale)``
    fitted to the data (:meth:`data_options`); the foreground rate is ``b * (1 + relu(.))``;
    counts follow the mixture ``pi * NB(b, theta) + (1 - pi) * NB(b * s, theta)``. The
    denoised protein is the foreground part, ``(1 - pi) * b * s``. ``likelihood="nb"`` uses one
    NB per protein with a decoded mean. The head has no per-cell context.

    Parameters
    ----------
    n_features, n_latent, n_batch, widths
        See :class:`~mosaicvi.nn.ModalityHead`.
    likelihood
        ``"mixture"`` or ``"nb"``.
    background_prior
        ``(mean, scale)``, each ``(n_proteins, n_batch)``, of the log background prior, e.g.
        from :func:`protein_background_prior`. Standard values when ``None``.
    **kwargs
        Passed to :class:`~mosaicvi.nn.ModalityHead`.
    """

    local_kl = "background"
    model_arguments = {"protein_likelihood": ("likelihood", "mixture")}
    LIKELIHOODS = ("mixture", "nb")

    @classmethod
    def head_options(cls, **arguments) -> dict[str, object]:
        """``likelihood`` (``protein_likelihood``), checked."""
        options = super().head_options(**arguments)
        cls.check_choice("protein_likelihood", options["likelihood"], cls.LIKELIHOODS)
        return options

    def __init__(
        self,
        n_features: int,
        n_latent: int,
        n_batch: int,
        widths: Sequence[int],
        likelihood: Literal["mixture", "nb"] = "mixture",
        background_prior: tuple[np.ndarray, np.ndarray] | None = None,
        **kwargs,
    ) -> None:
        self.check_choice("likelihood", likelihood, self.LIKELIHOODS)
        super().__init__(n_features, n_latent, n_batch, widths, **kwargs)
        self.likelihood = likelihood
        n_hidden = self.decoder_widths[-1]
        self.py_r = nn.Parameter(2 * torch.rand(n_features))
        if likelihood == "nb":
            self.log_rate = nn.Linear(n_hidden, n_features)
            return
        self.back_alpha = nn.Linear(n_hidden, n_features)
        self.back_beta = nn.Linear(n_hidden, n_features)
        self.fore_scale = nn.Linear(n_hidden, n_features)
        self.mixing = nn.Linear(n_hidden, n_features)
        if background_prior is None:
            mean = torch.zeros(n_features, n_batch)
            scale = torch.ones(n_features, n_batch)
        else:
            mean, scale = (torch.as_tensor(a, dtype=torch.float32) for a in background_prior)
        self.prior_mean = nn.Parameter(mean.clone())
        self.prior_log_scale = nn.Parameter(torch.log(scale.clamp(min=1e-3)))

    @classmethod
    def data_options(
        cls,
        counts,
        rows: np.ndarray,
        batch: np.ndarray,
        n_batch: int,
        likelihood: str = "mixture",
        feature_mask: np.ndarray | None = None,
        **options,
    ) -> dict[str, object]:
        """The mixture's background prior from the measured cells (:func:`protein_background_prior`).

        At most ``PRIOR_CELLS_PER_BATCH`` cells of each batch are read (drawn with a fixed
        seed), so the cost does not grow with the atlas; their rows are copied dense
        (proteins are few). ``feature_mask`` (``(n_batch, n_proteins)``, True where
        measured): a protein a batch did not measure gets the other batches' prior.
        """
        if likelihood != "mixture":
            return {}
        keep = cells_per_batch(batch, PRIOR_CELLS_PER_BATCH)
        block = counts[rows[keep]]
        dense = block.toarray() if hasattr(block, "toarray") else np.asarray(block)
        prior = protein_background_prior(
            np.log1p(dense), batch[keep], n_batch, measured=feature_mask
        )
        return {"background_prior": prior}

    def foreground_scale(self, z: torch.Tensor, covariates: Covariates) -> torch.Tensor:
        """``relu(.)`` of the foreground rate ``b * (1 + relu(.))`` (mixture likelihood)."""
        h = self.hidden(z, covariates)
        return F.relu(self.fore_scale(h))

    def decode(
        self,
        z: torch.Tensor,
        context: torch.Tensor,
        covariates: Covariates,
        sample_local: bool = True,
    ) -> HeadOutput:
        """Count distribution, denoised (foreground) protein and the background posterior."""
        h = self.hidden(z, covariates)
        theta = torch.exp(self.py_r)
        if self.likelihood == "nb":
            rate = torch.exp(self.log_rate(h))
            return HeadOutput(NegativeBinomial(mu=rate, theta=theta), rate)
        background = Normal(self.back_alpha(h), F.softplus(self.back_beta(h)) + 1e-8)
        log_back = background.rsample() if sample_local else background.loc
        rate_back = torch.exp(log_back)
        rate_fore = rate_back * (F.relu(self.fore_scale(h)) + 1 + 1e-8)
        mixing = self.mixing(h)
        dist = NegativeBinomialMixture(
            mu1=rate_back, mu2=rate_fore, theta1=theta, mixture_logits=mixing
        )
        denoised = (1 - torch.sigmoid(mixing)) * rate_fore
        return HeadOutput(dist, denoised, background)

    def kl(self, local: Normal | None, covariates: Covariates) -> torch.Tensor:
        """KL of the background posterior from the batch's prior, summed over proteins.

        Zero for every cell under ``likelihood="nb"`` (no background).
        """
        if local is None:
            return covariates.batch.new_zeros(covariates.batch.shape[0], dtype=torch.float32)
        batch = covariates.batch.view(-1).long()
        one_hot = F.one_hot(batch, self.n_batch).to(self.prior_mean.dtype)
        prior = Normal(
            F.linear(one_hot, self.prior_mean), torch.exp(F.linear(one_hot, self.prior_log_scale))
        )
        return kl_divergence(local, prior).sum(-1)


#: Cells of each batch the background prior is fit to (:meth:`ProteinHead.data_options`).
PRIOR_CELLS_PER_BATCH = 2000


def cells_per_batch(batch: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Positions of at most ``n`` cells of each batch (all of a smaller one), in order.

    Drawn without replacement with ``seed``: the same cells every time.
    """
    rng = np.random.default_rng(seed)
    keep = []
    for b in np.unique(batch):
        cells = np.flatnonzero(batch == b)
        keep.append(cells if len(cells) <= n else rng.choice(cells, n, replace=False))
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def protein_background_prior(
    log_counts: np.ndarray,
    batch: np.ndarray,
    n_batch: int,
    *,
    measured: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-protein, per-batch background prior from a two-component Gaussian mixture.

    A two-component 1-D Gaussian mixture is fit to each protein's ``log1p`` counts in each
    batch; the component with the lower mean is the background. This differs from totalVI,
    which fits a mixture to each of 100 cells across its proteins and gives every protein of
    a batch the same prior (their average): here each protein gets its own. The fits are
    ``sklearn.mixture.GaussianMixture``'s EM (``n_components=2``, ``reg_covar=1e-3``,
    ``tol=1e-3``, ``max_iter=100``, started from the 10% and 90% quantiles with equal
    weights and half the variance each), run for every protein of a batch at once
    (``_background_components``; ``tests/nn/test_likelihoods.py`` checks it against
    ``GaussianMixture`` itself, which fits one mixture per call). Batches without protein
    data get the average of the others.

    Parameters
    ----------
    log_counts
        ``log1p`` protein counts of the cells that have protein, ``(n_cells, n_proteins)``.
        NaN marks an unmeasured entry: left out of that protein's fit.
    batch
        Batch code of each of those cells.
    n_batch
        Number of batches.
    measured
        Boolean ``(n_batch, n_proteins)``: whether each batch measured each protein. A
        protein a batch did not measure gets the average of the batches that did, as a batch
        without protein data does.

    Returns
    -------
    ``(mean, scale)``, each ``(n_proteins, n_batch)``.
    """
    log_counts, batch = np.asarray(log_counts, dtype=np.float64), np.asarray(batch)
    if log_counts.ndim != 2 or batch.shape != (log_counts.shape[0],):
        raise ValueError(
            "`log_counts` must be (n_cells, n_proteins) and `batch` one code per cell, got "
            f"shapes {log_counts.shape} and {batch.shape}."
        )
    if not np.issubdtype(batch.dtype, np.integer) or (
        batch.size and (batch.min() < 0 or batch.max() >= n_batch)
    ):
        raise ValueError(f"`batch` must hold integer batch codes in [0, {n_batch}).")
    if (log_counts < 0).any():  # NaN compares False: unmeasured entries pass
        raise ValueError("`log_counts` must be log1p counts (non-negative).")
    n_proteins = log_counts.shape[1]
    if measured is not None and np.shape(measured) != (n_batch, n_proteins):
        raise ValueError(
            f"`measured` must be (n_batch, n_proteins) = {(n_batch, n_proteins)}, got "
            f"{np.shape(measured)}."
        )
    means = np.full((n_proteins, n_batch), np.nan)
    scales = np.full((n_proteins, n_batch), np.nan)
    for b in range(n_batch):
        x = log_counts[batch == b]
        if x.shape[0]:
            means[:, b], scales[:, b] = _background_components(x)
    if measured is not None:
        keep = np.asarray(measured, dtype=bool).T
        means, scales = np.where(keep, means, np.nan), np.where(keep, scales, np.nan)
    if np.isnan(means).all():
        return np.zeros((n_proteins, n_batch)), np.ones((n_proteins, n_batch))
    with warnings.catch_warnings():  # a protein no batch measured: the proteins' average
        warnings.simplefilter("ignore", RuntimeWarning)
        fill_mean = np.nanmean(means, axis=1, keepdims=True)
        fill_scale = np.nanmean(scales, axis=1, keepdims=True)
    fill_mean = np.where(np.isnan(fill_mean), np.nanmean(means), fill_mean)
    fill_scale = np.where(np.isnan(fill_scale), np.nanmean(scales), fill_scale)
    means = np.where(np.isnan(means), fill_mean, means)
    scales = np.where(np.isnan(scales), fill_scale, scales)
    return means, scales


#: The mixtures' variance floor (sklearn's ``reg_covar``), stopping tolerance and iterations.
MIXTURE_REG_COVAR, MIXTURE_TOL, MIXTURE_MAX_ITER = 1e-3, 1e-3, 100


def _mixture_start(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start of each column's mixture: the 10% and 90% quantiles, precision ``1/(var/2+0.01)``.

    ``values`` ``(n_cells, n_columns)`` with NaN left out; returns means ``(2, n_columns)``
    and the precision ``(n_columns,)`` of both components.
    """
    start = np.nanquantile(values, [0.1, 0.9], axis=0)
    return start, 1.0 / (np.nanvar(values, axis=0) / 2 + 1e-2)


def reference_mixture(column: np.ndarray):
    """The ``sklearn.mixture.GaussianMixture`` that ``_background_components`` runs.

    Unfitted, for one column ``(n_cells, 1)`` without NaN: the tests and
    ``benchmarks/replacements.py`` fit it to compare (one mixture per call, hence slow).
    """
    from sklearn.mixture import GaussianMixture

    start, precision = _mixture_start(column)
    return GaussianMixture(
        n_components=2,
        reg_covar=MIXTURE_REG_COVAR,
        tol=MIXTURE_TOL,
        max_iter=MIXTURE_MAX_ITER,
        init_params="random",  # replaced by the starts below: no k-means, no random draw
        random_state=0,
        means_init=start,
        weights_init=[0.5, 0.5],
        precisions_init=np.full((2, 1, 1), precision[0]),
    )


def _background_components(x: np.ndarray):
    """Mean and s.d. of the lower component of a 2-Gaussian mixture fit to each column of x.

    ``reference_mixture``'s EM (sklearn's for one feature, ``covariance_type`` full),
    run for every column at once: each column stops when its mean log-likelihood changes by
    less than ``MIXTURE_TOL``, as sklearn's does. NaN entries are left out of their
    column's fit; a column with fewer than 2 values gets NaN.
    """
    measured = ~np.isnan(x)
    n = measured.sum(0)
    fit = n >= 2
    mean = np.zeros((2, x.shape[1]))
    precision = np.ones((2, x.shape[1]))
    if fit.any():
        mean[:, fit], precision[:, fit] = _mixture_start(x[:, fit])
    x = np.where(measured, x, 0.0)
    cholesky = np.sqrt(precision)  # sklearn's precisions_cholesky_ of a 1 x 1 precision
    weight = np.full((2, x.shape[1]), 0.5)
    variance = 1.0 / precision
    active = fit.copy()
    bound = np.full(x.shape[1], -np.inf)
    eps = 10 * np.finfo(np.float64).eps
    for _ in range(MIXTURE_MAX_ITER):
        if not active.any():
            break
        # E step: log N(x | mean_k, var_k) + log w_k, normalised over the components
        log_p = (
            np.log(weight)[:, None]
            - 0.5 * np.log(2 * np.pi)
            + np.log(cholesky)[:, None]
            - 0.5 * ((x[None] - mean[:, None]) * cholesky[:, None]) ** 2
        )
        log_norm = np.logaddexp(log_p[0], log_p[1])
        resp = np.exp(log_p - log_norm[None]) * measured[None]
        new_bound = np.where(measured, log_norm, 0.0).sum(0) / np.maximum(n, 1)
        # M step
        n_k = resp.sum(1) + eps
        new_mean = (resp * x[None]).sum(1) / n_k
        new_variance = (resp * (x[None] - new_mean[:, None]) ** 2).sum(1) / n_k
        new_variance += MIXTURE_REG_COVAR
        new_weight = n_k / n_k.sum(0)
        mean = np.where(active, new_mean, mean)
        variance = np.where(active, new_variance, variance)
        weight = np.where(active, new_weight, weight)
        cholesky = 1.0 / np.sqrt(variance)
        converged = np.abs(new_bound - bound) < MIXTURE_TOL
        bound = np.where(active, new_bound, bound)
        active &= ~converged
    low = np.argmin(mean, axis=0)
    cols = np.arange(x.shape[1])
    out_mean, out_sd = mean[low, cols], np.sqrt(variance[low, cols])
    return np.where(fit, out_mean, np.nan), np.where(fit, out_sd, np.nan)
