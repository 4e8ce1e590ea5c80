"""Fusion of per-modality Gaussian experts into one posterior: the Product of Experts."""

from __future__ import annotations

import torch


def product_of_experts(
    mu: torch.Tensor,
    var: torch.Tensor,
    mask: torch.Tensor,
    prior_expert: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Product of Gaussian experts, with a standard-normal prior expert, in precision space.

    For experts :math:`\\mathcal N(\\mu_m, \\sigma^2_m)` of the present modalities and the prior
    :math:`\\mathcal N(0, 1)`, the product is Gaussian with precision
    :math:`T = 1 + \\sum_m T_m` and mean :math:`\\mu = T^{-1} \\sum_m T_m \\mu_m`, where
    :math:`T_m = 1/\\sigma^2_m`. An absent expert has weight exactly 0, so neither its value
    nor its gradient reaches the result.

    Parameters
    ----------
    mu
        Expert means, ``(n_experts, n_cells, n_latent)``.
    var
        Expert variances (strictly positive), same shape.
    mask
        ``(n_cells, n_experts)``, 1 (or ``True``) where the cell has that expert.
    prior_expert
        Include the standard-normal prior expert. Without it, every cell needs at least one
        present expert.

    Returns
    -------
    The mean and variance of the product, each ``(n_cells, n_latent)``.
    """
    weight = mask.T.unsqueeze(-1).to(mu.dtype)  # (n_experts, n_cells, 1)
    precision = weight / var
    total_precision = precision.sum(0)
    if prior_expert:
        total_precision = total_precision + 1.0
    mean = (precision * mu).sum(0) / total_precision
    return mean, total_precision.reciprocal()
