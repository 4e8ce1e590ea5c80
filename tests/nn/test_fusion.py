import numpy as np
import torch

from mosaicvi.nn import product_of_experts


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
