import numpy as np
import torch
from torch.distributions import Normal, kl_divergence

from mosaicvi.nn import (
    GaussianMixture,
    fusion_components,
    non_empty_subsets,
    product_of_experts,
    weighted_kl,
)


def test_poe_matches_normalised_product_of_densities():
    """1-D Gaussians: the PoE equals the product of the densities (and N(0,1)), normalised."""
    mu = torch.tensor([[[1.5]], [[-0.5]], [[3.0]]], dtype=torch.float64)
    var = torch.tensor([[[0.5]], [[2.0]], [[0.1]]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0]])  # third expert absent
    mean, variance = product_of_experts(mu, var, mask)

    grid = np.linspace(-10, 10, 200001)
    log_density = -0.5 * grid**2  # prior expert
    for m, v in ((1.5, 0.5), (-0.5, 2.0)):
        log_density += -0.5 * (grid - m) ** 2 / v
    density = np.exp(log_density - log_density.max())
    density /= np.trapezoid(density, grid)
    grid_mean = np.trapezoid(grid * density, grid)
    grid_var = np.trapezoid((grid - grid_mean) ** 2 * density, grid)
    np.testing.assert_allclose(mean.item(), grid_mean, rtol=1e-6)
    np.testing.assert_allclose(variance.item(), grid_var, rtol=1e-6)


def test_poe_closed_form_multidimensional():
    torch.manual_seed(0)
    mu = torch.randn(3, 5, 4, dtype=torch.float64)
    var = torch.rand(3, 5, 4, dtype=torch.float64) + 0.1
    mask = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 0], [1, 0, 0]])
    mean, variance = product_of_experts(mu, var, mask)
    for i in range(5):
        present = mask[i].bool()
        precision = 1 + (1 / var[present, i]).sum(0)
        expected_mean = (mu[present, i] / var[present, i]).sum(0) / precision
        torch.testing.assert_close(variance[i], 1 / precision)
        torch.testing.assert_close(mean[i], expected_mean)
    # a cell with no expert gets the prior
    torch.testing.assert_close(mean[3], torch.zeros(4, dtype=torch.float64))
    torch.testing.assert_close(variance[3], torch.ones(4, dtype=torch.float64))


def test_poe_without_prior_expert():
    mu = torch.tensor([[[2.0]], [[4.0]]])
    var = torch.tensor([[[1.0]], [[1.0]]])
    mean, variance = product_of_experts(mu, var, torch.tensor([[1, 1]]), prior_expert=False)
    assert mean.item() == 3.0 and variance.item() == 0.5


def test_absent_expert_has_no_value_and_no_gradient():
    mu = torch.randn(2, 3, 4, requires_grad=True)
    var = (torch.rand(2, 3, 4) + 0.5).requires_grad_()
    mask = torch.tensor([[1, 0], [1, 0], [1, 1]])
    mean, variance = product_of_experts(mu, var, mask)
    (mean.sum() + variance.sum()).backward()
    assert torch.all(mu.grad[1, :2] == 0) and torch.all(var.grad[1, :2] == 0)
    assert torch.all(mu.grad[1, 2] != 0)
    with torch.no_grad():
        mu2 = mu.clone()
        mu2[1, :2] = 1e6
        mean2, _ = product_of_experts(mu2, var, mask)
    torch.testing.assert_close(mean2[:2], mean[:2].detach())


def test_poe_numerically_stable_with_extreme_experts():
    mu = torch.tensor([[[1e4]], [[-1e4]]])
    var = torch.tensor([[[1e-4]], [[1e4]]])
    mean, variance = product_of_experts(mu, var, torch.tensor([[1, 1]]))
    assert torch.isfinite(mean).all() and torch.isfinite(variance).all()
    assert variance.item() > 0
    expected = (1e4 / 1e-4 - 1e4 / 1e4) / (1 + 1 / 1e-4 + 1 / 1e4)
    np.testing.assert_allclose(mean.item(), expected, rtol=1e-5)


def test_components_of_each_fusion():
    presence = torch.tensor([[1, 1, 0], [0, 0, 1], [1, 1, 1], [0, 0, 0]], dtype=torch.bool)
    masks, weights = fusion_components(presence, "poe")
    assert masks.shape == (1, 4, 3) and torch.equal(masks[0], presence)
    masks, weights = fusion_components(presence, "poe", subset_terms=True)
    # joint, then one subset term per present expert for cells with >= 2 experts
    torch.testing.assert_close(
        weights[1:].T, torch.tensor([[1.0, 1, 0], [0, 0, 0], [1, 1, 1], [0, 0, 0]])
    )
    masks, weights = fusion_components(presence, "moe")
    torch.testing.assert_close(
        weights.T[:3], torch.tensor([[0.5, 0.5, 0], [0, 0, 1], [1 / 3] * 3])
    )
    masks, weights = fusion_components(presence, "mopoe")
    assert masks.shape == (7, 4, 3)
    # cell 0 has {0, 1}: components {0}, {1}, {0, 1} with weight 1/3 each
    used = {tuple(masks[c, 0].nonzero().ravel().tolist()) for c in range(7) if weights[c, 0] > 0}
    assert used == {(0,), (1,), (0, 1)}
    torch.testing.assert_close(weights[:, 2], torch.full((7,), 1 / 7))
    for fusion in ("poe", "moe", "mopoe"):  # a cell without experts: one empty component
        masks, weights = fusion_components(presence, fusion)
        assert weights[:, 3].sum() == 1 and not masks[weights[:, 3] > 0, 3].any()


def test_subset_weight_scales_the_subset_terms_only():
    presence = torch.tensor([[1, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=torch.bool)
    _, ones = fusion_components(presence, "poe", subset_terms=True)
    _, half = fusion_components(presence, "poe", subset_terms=True, subset_weight=0.5)
    torch.testing.assert_close(half[0], ones[0])  # the joint term keeps weight 1
    torch.testing.assert_close(half[1:], 0.5 * ones[1:])


def test_gaussian_mixture_moments_and_samples():
    torch.manual_seed(0)
    loc = torch.tensor([[[-2.0, 0.0]], [[3.0, 1.0]], [[100.0, 100.0]]])  # (3 comps, 1 cell, 2)
    scale = torch.tensor([[[0.5, 1.0]], [[1.0, 0.2]], [[1.0, 1.0]]])
    weights = torch.tensor([[0.25], [0.75], [0.0]])  # the far component has weight 0
    q = GaussianMixture(loc, scale, weights)
    mean = 0.25 * loc[0, 0] + 0.75 * loc[1, 0]
    torch.testing.assert_close(q.loc[0], mean)
    second = 0.25 * (scale[0, 0] ** 2 + loc[0, 0] ** 2) + 0.75 * (
        scale[1, 0] ** 2 + loc[1, 0] ** 2
    )
    draws = q.sample((40000,))[:, 0]
    assert draws.max() < 50  # a weight-0 component is never drawn
    torch.testing.assert_close(draws.mean(0), mean, atol=0.05, rtol=0)
    torch.testing.assert_close(draws.var(0), second - mean**2, atol=0.1, rtol=0.02)
    # the density is the weighted sum of the component densities
    x = torch.tensor([[0.3, -0.4]])
    comps = Normal(loc[:2, 0], scale[:2, 0]).log_prob(x).sum(-1)
    expected = torch.logsumexp(comps + torch.log(weights[:2, 0]), 0)
    torch.testing.assert_close(q.log_prob(x)[0], expected)


def test_weighted_kl_is_exact_for_one_component_and_bounds_a_mixture():
    torch.manual_seed(0)
    loc, var = torch.randn(1, 5, 3), torch.rand(1, 5, 3) + 0.2
    exact = kl_divergence(Normal(loc[0], var[0].sqrt()), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(weighted_kl(loc, var, torch.ones(1, 5)), exact)
    target_loc, target_var = torch.randn(5, 3), torch.rand(5, 3) + 0.5
    exact = kl_divergence(Normal(loc[0], var[0].sqrt()), Normal(target_loc, target_var.sqrt()))
    torch.testing.assert_close(
        weighted_kl(loc, var, torch.ones(1, 5), target_loc, target_var), exact.sum(-1)
    )
    # a two-component mixture: the bound is above a Monte Carlo estimate of the true KL
    loc = torch.tensor([[[-1.5, 0.5]], [[1.0, -1.0]]])
    var = torch.tensor([[[0.3, 0.5]], [[0.4, 0.2]]])
    weights = torch.tensor([[0.5], [0.5]])
    q = GaussianMixture(loc, var.sqrt(), weights)
    z = q.sample((200000,))
    monte_carlo = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z).sum(-1)).mean()
    bound = weighted_kl(loc, var, weights)[0]
    assert monte_carlo < bound
    # ... and equal to it when the components coincide
    same = loc[:1].expand(2, 1, 2)
    q = GaussianMixture(same, var[:1].expand(2, 1, 2).sqrt(), weights)
    z = q.sample((200000,))
    monte_carlo = (q.log_prob(z) - Normal(0.0, 1.0).log_prob(z).sum(-1)).mean()
    bound = weighted_kl(same, var[:1].expand(2, 1, 2), weights)[0]
    torch.testing.assert_close(monte_carlo, bound, atol=0.02, rtol=0)


def test_batched_products_equal_one_product_at_a_time():
    torch.manual_seed(0)
    mu, var = torch.randn(3, 4, 2), torch.rand(3, 4, 2) + 0.1
    masks = non_empty_subsets(3)[:, None, :].expand(7, 4, 3)
    for prior in (True, False):
        loc, variance = product_of_experts(mu, var, masks, prior_expert=prior)
        for c in range(7):
            expected = product_of_experts(mu, var, masks[c], prior_expert=prior)
            torch.testing.assert_close(loc[c], expected[0])
            torch.testing.assert_close(variance[c], expected[1])
    # without the prior, an empty product is N(0, 1), not a division by zero
    loc, variance = product_of_experts(mu, var, torch.zeros(4, 3, dtype=torch.bool), False)
    assert torch.equal(loc, torch.zeros(4, 2)) and torch.equal(variance, torch.ones(4, 2))


def test_sampled_subset_terms_are_an_unbiased_estimate_of_every_term():
    """One subset term drawn per cell, weighted by its modalities: the mean is every term."""
    from mosaicvi.nn import fusion_components

    g = torch.Generator().manual_seed(0)
    presence = torch.rand(60, 3, generator=g) < 0.6
    _, every = fusion_components(presence, "poe", subset_terms=True)
    n_present = presence.sum(-1)
    torch.manual_seed(1)
    total = torch.zeros_like(every)
    n = 4000
    for _ in range(n):
        masks, weights = fusion_components(
            presence, "poe", subset_terms=True, sample_subset_terms=True
        )
        torch.testing.assert_close(weights[0], every[0])  # the joint posterior, always
        drawn = weights[1:] > 0
        # a cell with 2+ modalities gets exactly one term, weighted by its number of them
        assert torch.equal(drawn.sum(0), (n_present >= 2).long())
        assert torch.equal(weights[1:].sum(0), n_present * (n_present >= 2))
        assert not (drawn & ~presence.T).any()  # only a modality the cell has
        total += weights
    torch.testing.assert_close(total / n, every, atol=0.1, rtol=0.0)
