"""The ATAC likelihood estimated from open regions plus an importance sample (issues 14, 24)."""

import pytest
import torch

from mosaicvi.nn import (
    ATACHead,
    BernoulliATACHead,
    Covariates,
    PoissonATACHead,
    SampledPeakBernoulli,
)
from mosaicvi.nn._atac import _RegionLogits, closed_inclusion

N_REGIONS = 300


def _head_and_inputs(closed_samples, n_cells=5, seed=0, frequency=None):
    torch.manual_seed(seed)
    head = BernoulliATACHead(
        N_REGIONS, 4, 2, [8], closed_samples=closed_samples, region_frequency=frequency
    )
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


def _skewed_frequency(seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(N_REGIONS, generator=g) ** 4).numpy()


def test_sampled_likelihood_is_exact_when_every_region_is_sampled():
    head, z, covs, depth, x = _head_and_inputs(closed_samples=N_REGIONS)
    # closed_samples >= n_regions: training decodes at full width, as in evaluation
    head.train()
    assert head.decode(z, depth, covs).denoised is not None
    every = torch.ones(N_REGIONS)
    px = SampledPeakBernoulli(
        head.hidden(z, covs),
        head.output.weight,
        head.output.bias,
        head.region_factors,
        depth.clamp(max=1 - 1e-6),
        every,
        torch.cumsum(every.double(), 0),
        N_REGIONS,
    )
    torch.testing.assert_close(px.log_prob_cells(x), _exact(head, z, covs, depth, x))
    torch.testing.assert_close(px.log_prob_cells(x.to_dense()), _exact(head, z, covs, depth, x))


@pytest.mark.parametrize("frequency", [None, _skewed_frequency()], ids=["uniform", "importance"])
def test_sampled_likelihood_and_its_gradient_are_unbiased(frequency):
    head, z, covs, depth, x = _head_and_inputs(closed_samples=30, frequency=frequency)
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
    sd = (squares / n_draws - mean**2).clamp(min=0).sqrt()
    # the draws vary, and their mean is the exact value within 4 standard errors
    assert torch.all(sd > 0)
    assert torch.all((mean - exact).abs() < 4 * sd / n_draws**0.5 + 1e-3)
    for g, e in zip(grads, exact_grad):
        torch.testing.assert_close(g / n_draws, e, rtol=0.05, atol=0.05 * e.abs().max().item())


def test_systematic_draw_includes_each_region_with_its_probability():
    frequency = _skewed_frequency()
    inclusion = closed_inclusion(N_REGIONS, 40, frequency)
    assert inclusion.sum().item() == pytest.approx(40.0)
    assert (inclusion > 0).all() and (inclusion <= 1).all()
    capped = closed_inclusion(N_REGIONS, 200, frequency)  # most open regions: always drawn
    assert (capped == 1).any() and capped.sum().item() == pytest.approx(200.0)
    assert (capped <= 1).all()
    px = SampledPeakBernoulli(
        None, None, None, None, None, inclusion.float(), torch.cumsum(inclusion, 0), 40
    )
    counts = torch.zeros(N_REGIONS)
    n = 4000
    for _ in range(n):
        drawn = px.draw()
        assert len(drawn) == 40 and len(torch.unique(drawn)) == 40  # no region twice
        counts[drawn] += 1
    se = (inclusion * (1 - inclusion) / n).sqrt().float()
    assert torch.all((counts / n - inclusion.float()).abs() <= 4 * se + 1e-6)


def test_importance_sampling_lowers_the_variance_where_frequency_tracks_accessibility():
    """Regions drawn by their open frequency: the estimate varies less than a uniform draw."""
    frequency = _skewed_frequency()
    sds = {}
    for name, freq in (("uniform", None), ("importance", frequency)):
        head, z, covs, depth, x = _head_and_inputs(closed_samples=30, frequency=freq)
        with torch.no_grad():  # accessibility that follows the frequency, as in real data
            head.output.weight.zero_()
            head.region_factors.fill_(8.0)
            head.output.bias.copy_(torch.logit(torch.as_tensor(frequency).float() * 0.9 + 0.01))
        head.train()
        draws = torch.stack([head.log_likelihood(head.decode(z, depth, covs).px, x) for _ in range(500)])
        sds[name] = draws.std(0).mean().item()
    assert sds["importance"] < 0.8 * sds["uniform"]


def test_region_logits_and_their_gradient_equal_the_full_product():
    """The custom backward equals autograd through the full product, at entries and sample."""
    head, z, covs, depth, x = _head_and_inputs(closed_samples=N_REGIONS - 1)
    hidden = head.hidden(z, covs).detach().requires_grad_()
    weight = head.output.weight
    sample = torch.tensor([3, 17, 250, 299])
    entries, sampled = _RegionLogits.apply(
        hidden, weight, x.crow_indices(), x.col_indices(), sample
    )
    rows, cols = x.to_dense().nonzero(as_tuple=True)
    full = hidden @ weight.T
    torch.testing.assert_close(entries, full[rows, cols])
    torch.testing.assert_close(sampled, full[:, sample])
    g1 = torch.autograd.grad(entries.sin().sum() + sampled.cos().sum(), [hidden, weight])
    g2 = torch.autograd.grad(
        full[rows, cols].sin().sum() + full[:, sample].cos().sum(), [hidden, weight]
    )
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_one_head_class_per_likelihood():
    assert ATACHead.variant(likelihood="bernoulli")[0] is BernoulliATACHead
    assert ATACHead.variant(likelihood="poisson")[0] is PoissonATACHead
    with pytest.raises(ValueError, match="likelihood"):
        ATACHead.variant(likelihood="nb")
    with pytest.raises(TypeError, match="BernoulliATACHead"):
        ATACHead(N_REGIONS, 4, 1, [8])
    assert not hasattr(PoissonATACHead(N_REGIONS, 4, 1, [8]), "depth_body")


@pytest.mark.parametrize(
    ("cls", "options", "match"),
    [
        (BernoulliATACHead, {"closed_samples": 0}, "positive integer"),
        (BernoulliATACHead, {"closed_samples": 2.5}, "positive integer"),
        (BernoulliATACHead, {"closed_samples": True}, "positive integer"),
        (PoissonATACHead, {"closed_samples": 10}, "Bernoulli"),
    ],
)
def test_closed_samples_is_checked(cls, options, match):
    with pytest.raises(ValueError, match=match):
        cls(N_REGIONS, 4, 1, [8], **options)
