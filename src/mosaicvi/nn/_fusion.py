"""Fusion of per-modality Gaussian experts: Product of Experts, and mixtures of such products.

Every fusion is described by *components*: boolean masks ``(n_components, n_cells,
n_experts)`` saying which experts each component multiplies, and weights ``(n_components,
n_cells)``. The Product of Experts (MVAE, MVTCAE) is one component, the cell's present
modalities; the mixture of experts (MMVAE) has one component per present modality; the
mixture of products (MoPoE) one per non-empty subset of the present modalities.
"""

from __future__ import annotations

import itertools
from typing import Literal

import torch
from torch import nn
from torch.distributions import (
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    Normal,
    kl_divergence,
)

from mosaicvi._constants import COMPONENT_KEYS

FUSIONS = ("poe", "moe", "mopoe")
Fusion = Literal["poe", "moe", "mopoe"]


def product_of_experts(
    mu: torch.Tensor,
    var: torch.Tensor,
    mask: torch.Tensor,
    prior_expert: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Product of Gaussian experts, with a standard-normal prior expert, in precision space.

    For experts :math:`\mathcal N(\mu_m, \sigma^2_m)` of the present modalities and the prior
    :math:`\mathcal N(0, 1)`, the product is Gaussian with precision
    :math:`T = 1 + \sum_m T_m` and mean :math:`\mu = T^{-1} \sum_m T_m \mu_m`, where
    :math:`T_m = 1/\sigma^2_m`. An absent expert has weight exactly 0, so neither its value
    nor its gradient reaches the result.

    Parameters
    ----------
    mu
        Expert means, ``(n_experts, n_cells, n_latent)``.
    var
        Expert variances (strictly positive), same shape.
    mask
        ``(n_cells, n_experts)``, 1 (or ``True``) where the cell has that expert; or
        ``(n_components, n_cells, n_experts)`` for several products at once.
    prior_expert
        Include the standard-normal prior expert. Without it, a product of no expert at all
        is returned as ``N(0, 1)`` (give such a component weight 0).

    Returns
    -------
    The mean and variance of each product, ``(n_cells, n_latent)`` (or with a leading
    ``n_components`` axis, as ``mask``).
    """
    weight = mask.transpose(-1, -2).unsqueeze(-1).to(mu.dtype)  # (..., n_experts, n_cells, 1)
    precision = weight / var
    total_precision = precision.sum(-3)
    if prior_expert:
        total_precision = total_precision + 1.0
    else:  # no expert in the product: N(0, 1) rather than a division by zero
        total_precision = total_precision + (weight.sum(-3) == 0).to(mu.dtype)
    mean = (precision * mu).sum(-3) / total_precision
    return mean, total_precision.reciprocal()


def non_empty_subsets(n_experts: int) -> torch.Tensor:
    """Every non-empty subset of ``n_experts`` experts, ``(2**n_experts - 1, n_experts)`` bool."""
    rows = [s for s in itertools.product((False, True), repeat=n_experts) if any(s)]
    return torch.tensor(sorted(rows, key=sum), dtype=torch.bool)


def fusion_components(
    presence: torch.Tensor,
    fusion: Fusion,
    subset_terms: bool = False,
    subsets: torch.Tensor | None = None,
    sample_subset_terms: bool = False,
    subset_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Components of a fusion for each cell: expert masks and weights.

    Parameters
    ----------
    presence
        ``(n_cells, n_experts)`` bool, the experts each cell has.
    fusion
        ``"poe"``: one component, every present expert, weight 1. ``"moe"``: one component per
        present expert, weight ``1 / n_present``. ``"mopoe"``: one component per non-empty
        subset of the present experts, weight ``1 / (2**n_present - 1)``.
    subset_terms
        ``"poe"`` only: add one component per present expert with weight 1 for cells with two
        or more experts (the subset terms of the MVAE objective).
    subsets
        Precomputed ``non_empty_subsets`` (``"mopoe"``).
    sample_subset_terms
        With ``subset_terms``: instead of every present expert's term, one drawn uniformly
        per cell with weight ``n_present``, an unbiased estimate of their sum that decodes
        one subset term per cell instead of ``n_present``.
    subset_weight
        With ``subset_terms``: the subset components' weight is multiplied by this.

    Returns
    -------
    ``masks`` ``(n_components, n_cells, n_experts)`` bool and ``weights``
    ``(n_components, n_cells)``. A component with weight 0 is not part of the cell's
    posterior; its mask may be empty. A cell without any expert gets one component of
    weight 1 with an empty mask: the standard normal.
    """
    n_cells, n_experts = presence.shape
    present = presence.to(torch.bool)
    n_present = present.sum(-1).to(torch.float32)
    single = torch.eye(n_experts, dtype=torch.bool, device=present.device)[:, None, :]
    if fusion == "poe":
        masks, weights = present[None], torch.ones(1, n_cells, device=present.device)
        if subset_terms:
            unimodal = single & present[None]
            weights_uni = present.T.to(torch.float32) * (n_present >= 2)
            if sample_subset_terms:  # one present expert per cell, uniformly
                draws = torch.rand(present.shape, device=present.device)
                scores = torch.where(present, draws, -1.0)
                drawn = nn.functional.one_hot(scores.argmax(-1), n_experts).T.to(torch.float32)
                weights_uni = weights_uni * drawn * n_present
            if subset_weight != 1.0:
                weights_uni = weights_uni * subset_weight
            masks = torch.cat([masks, unimodal])
            weights = torch.cat([weights, weights_uni])
        return masks, weights
    if fusion == "moe":
        masks = single & present[None]
        weights = present.T.to(torch.float32) / n_present.clamp(min=1.0)
    elif fusion == "mopoe":
        subsets = non_empty_subsets(n_experts) if subsets is None else subsets
        subsets = subsets.to(present.device)[:, None, :]  # (n_subsets, 1, n_experts)
        valid = ~(subsets & ~present[None]).any(-1)  # subset of the present experts
        masks = subsets & present[None]
        weights = valid.to(torch.float32) / (torch.exp2(n_present) - 1.0).clamp(min=1.0)
    else:
        raise ValueError(f"`fusion` must be one of {list(FUSIONS)}, got {fusion!r}.")
    # a cell without any expert (possible with `given`): its empty first component, N(0, 1)
    weights[0] = weights[0] + (n_present == 0).to(weights.dtype)
    return masks, weights


class GaussianMixture(MixtureSameFamily):
    """Per-cell mixture of diagonal Gaussians: the posterior of the mixture fusions.

    ``loc`` is the mixture mean (what :meth:`~mosaicvi.MosaicVI.get_latent_representation` returns), as
    ``Normal.loc`` is for a single Gaussian posterior. Components of weight 0 have exactly
    zero probability.

    Parameters
    ----------
    loc, scale
        Component means and standard deviations, ``(n_components, n_cells, n_latent)``.
    weights
        ``(n_components, n_cells)``, summing to 1 over components.
    """

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, weights: torch.Tensor) -> None:
        self.weights = weights.T
        super().__init__(
            Categorical(logits=torch.log(self.weights), validate_args=False),
            Independent(
                Normal(loc.transpose(0, 1), scale.transpose(0, 1), validate_args=False), 1
            ),
            validate_args=False,
        )

    @property
    def loc(self) -> torch.Tensor:
        """Mixture mean, ``(n_cells, n_latent)``."""
        return self.mean


def weighted_kl(
    loc: torch.Tensor,
    var: torch.Tensor,
    weights: torch.Tensor,
    target_loc: torch.Tensor | float = 0.0,
    target_var: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    r"""``sum_c w_c KL(N(loc_c, var_c) || N(target))`` per cell, ``(n_cells,)``.

    For one component of weight 1 this is the KL divergence of the posterior. For a mixture
    it is the convexity bound :math:`KL(\sum_c w_c q_c \| p) \le \sum_c w_c KL(q_c \| p)`
    used to train MoPoE (Sutter et al., 2021), in closed form
    (:func:`torch.distributions.kl_divergence` of the Gaussians); components of weight 0 add
    exactly 0.

    Parameters
    ----------
    loc, var
        Component means and variances, ``(n_components, n_cells, n_latent)``.
    weights
        ``(n_components, n_cells)``.
    target_loc, target_var
        The Gaussian compared against (broadcast to ``loc``): the standard-normal prior by
        default, or an expert ``(n_cells, n_latent)``.
    """
    target_loc = torch.as_tensor(target_loc, dtype=loc.dtype, device=loc.device)
    target_var = torch.as_tensor(target_var, dtype=loc.dtype, device=loc.device)
    # no argument validation: it would synchronise an accelerator with the host every step
    q = Normal(loc, var.sqrt(), validate_args=False)
    p = Normal(target_loc.expand_as(loc), target_var.sqrt().expand_as(loc), validate_args=False)
    kl = kl_divergence(q, p).sum(-1)
    return (weights * kl).sum(0)


def fuse(
    mu: torch.Tensor,
    var: torch.Tensor,
    presence: torch.Tensor,
    fusion: Fusion,
    prior_expert: bool = True,
    subset_terms: bool = False,
    subsets: torch.Tensor | None = None,
    training_terms: bool = True,
    sample_subset_terms: bool = False,
    subset_weight: float = 1.0,
) -> tuple[Distribution, torch.Tensor, dict | None]:
    """The fused posterior of each cell from its experts, a sample, and its components.

    Parameters
    ----------
    mu, var
        Expert means and variances, ``(n_experts, n_cells, n_latent)``.
    presence
        ``(n_cells, n_experts)`` bool, the experts each cell has.
    fusion, subset_terms, subsets
        As in :func:`fusion_components`.
    prior_expert
        As in :func:`product_of_experts`.
    training_terms
        Also sample each component once and return the components.
    sample_subset_terms, subset_weight
        As in :func:`fusion_components`.

    Returns
    -------
    ``qz`` (``Normal`` for ``"poe"``, else :class:`GaussianMixture`), a sample ``z`` of it
    (reparameterised for ``"poe"``), and with ``training_terms`` the components: a dict
    with keys ``COMPONENT_KEYS`` (``None`` otherwise).
    """
    masks, weights = fusion_components(
        presence, fusion, subset_terms, subsets, sample_subset_terms, subset_weight
    )
    loc, comp_var = product_of_experts(mu, var, masks, prior_expert=prior_expert)
    if fusion == "poe":  # the posterior is the first component
        qz = Normal(loc[0], comp_var[0].sqrt())
        z = qz.rsample()
    else:
        qz = GaussianMixture(loc, comp_var.sqrt(), weights)
        z = qz.sample()
    if not training_terms:
        return qz, z, None
    comp_z = Normal(loc, comp_var.sqrt()).rsample()
    if fusion == "poe":
        comp_z[0] = z
    components = {
        COMPONENT_KEYS.MASKS: masks,
        COMPONENT_KEYS.WEIGHTS: weights,
        COMPONENT_KEYS.LOC: loc,
        COMPONENT_KEYS.VAR: comp_var,
        COMPONENT_KEYS.Z: comp_z,
        COMPONENT_KEYS.EXPERT_LOC: mu,
        COMPONENT_KEYS.EXPERT_VAR: var,
    }
    return qz, z, components
