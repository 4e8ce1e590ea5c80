"""The ATAC likelihood estimated from open regions plus sampled regions (issue 14)."""

import pytest
import torch

from mosaicvi.nn import ATACHead, Covariates, SampledPeakBernoulli

N_REGIONS = 300


def _head_and_inputs(closed_samples, n_cells=5, seed=0):
    torch.manual_seed(seed)
    head = ATACHead(N_REGIONS, 4, 2, [8], closed_samples=closed_samples)
    with torch.no_grad():
        head.region_factors.normal_()
        head.output.bias.normal_(-1.0, 1.0)
    z = torch.randn(n_cells, 4)
    covs = Covariates(torch.randint(0, 2, (n_cells, 1)))
    depth = torch.rand(n_cells, 1) * 0.8 + 0.1
    counts = torch.poisson(torch.full((n_cells, N_REGIONS), 0.08)) * (
        torch.rand(n_cells, N_REGIONS) < 0.5
    )
    x = counts.to_sparse_csr()
    return head, z, covs, depth, x


def _exact(head, z, covs, depth, x):
    head.eval()
    out = head.decode(z, depth, covs)
    head.train()
    return head.log_likelihood(out.px, x)


def test_sampled_likelihood_is_exact_when_every_region_is_sampled():
    head, z, covs, depth, x = _head_and_inputs(closed_samples=N_REGIONS)
    # closed_samples >= n_regions: training decodes at full width, as in evaluation
    head.train()
    assert head.decode(z, depth, covs).denoised is not None
    px = SampledPeakBernoulli(
        head.hidden(z, covs),
        head.output.weight,
        head.output.bias,
        head.region_factors,
        depth.clamp(max=1 - 1e-6),
        N_REGIONS,
    )
    torch.testing.assert_close(px.log_prob_cells(x), _exact(head, z, covs, depth, x))
    torch.testing.assert_close(px.log_prob_cells(x.to_dense()), _exact(head, z, covs, depth, x))


def test_sampled_likelihood_and_its_gradient_are_unbiased():
    head, z, covs, depth, x = _head_and_inputs(closed_samples=30)
    head.train()
    exact = _exact(head, z, covs, depth, x)
    params = [head.output.weight, head.output.bias, head.region_factors]
    exact_grad = torch.autograd.grad(exact.sum(), params)
    assert isinstance(head.decode(z, depth, covs).px, SampledPeakBernoulli)
    n_draws = 3000
    total = torch.zeros_like(exact)
    grads = [torch.zeros_like(p) for p in params]
    squares = torch.zeros_like(exact)
    for _ in range(n_draws):
        out = head.decode(z, depth, covs)
        assert out.denoised is None  # nothing decoded at full width
        ll = head.log_likelihood(out.px, x)
        for g, d in zip(grads, torch.autograd.grad(ll.sum(), params)):
            g += d
        total += ll.detach()
        squares += ll.detach() ** 2
    mean = total / n_draws
    sd = (squares / n_draws - mean**2).sqrt()
    # the draws vary, and their mean is the exact value within 4 standard errors
    assert torch.all(sd > 0)
    assert torch.all((mean - exact).abs() < 4 * sd / n_draws**0.5 + 1e-3)
    for g, e in zip(grads, exact_grad):
        torch.testing.assert_close(g / n_draws, e, rtol=0.05, atol=0.05 * e.abs().max().item())


def test_open_regions_get_the_exact_gradient():
    """The open-region term's custom backward equals autograd through the full product."""
    head, z, covs, depth, x = _head_and_inputs(closed_samples=N_REGIONS - 1)
    hidden = head.hidden(z, covs).detach().requires_grad_()
    weight = head.output.weight
    px = SampledPeakBernoulli(
        hidden, weight, head.output.bias, head.region_factors, depth, N_REGIONS - 1
    )
    rows, cols = x.to_dense().nonzero(as_tuple=True)
    from mosaicvi.nn._atac import _OpenLogits
    from mosaicvi.nn._sparse import entry_rows

    values = _OpenLogits.apply(hidden, weight, x.crow_indices(), x.col_indices(), entry_rows(x))
    full = (hidden @ weight.T)[rows, cols]
    torch.testing.assert_close(values, full)
    g1 = torch.autograd.grad(values.sin().sum(), [hidden, weight])
    g2 = torch.autograd.grad(full.sin().sum(), [hidden, weight])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)
    assert px.log_prob_cells(x).shape == (5,)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"closed_samples": 0}, "positive integer"),
        ({"closed_samples": 2.5}, "positive integer"),
        ({"closed_samples": 10, "likelihood": "poisson"}, "Bernoulli"),
    ],
)
def test_closed_samples_is_checked(options, match):
    with pytest.raises(ValueError, match=match):
        ATACHead(N_REGIONS, 4, 1, [8], **options)
