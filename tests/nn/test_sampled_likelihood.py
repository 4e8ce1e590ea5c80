"""The ATAC likelihood estimated from the open regions plus a share of the cells or a sample of
the regions for the closed ones (issues 14, 24)."""

import pytest
import torch

from mosaicvi.nn import (
    ATACHead,
    BernoulliATACHead,
    Covariates,
    PoissonATACHead,
    SampledPeakBernoulli,
)
from mosaicvi.nn._atac_likelihood import INCLUSION_UNIT, _RegionLogits, closed_inclusion

N_REGIONS = 300


def _head_and_inputs(closed_samples=None, n_cells=5, seed=0, frequency=None, closed_cells=None):
    torch.manual_seed(seed)
    head = BernoulliATACHead(
        N_REGIONS,
        4,
        2,
        [8],
        closed_cells=closed_cells,
        closed_samples=closed_samples,
        region_frequency=frequency,
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


def _units(inclusion):
    units = torch.round(inclusion.double() * INCLUSION_UNIT).to(torch.int64)
    return torch.cumsum(units, 0)


def test_sampled_likelihood_is_exact_when_every_region_or_cell_is_scored():
    head, z, covs, depth, x = _head_and_inputs(closed_samples=N_REGIONS)
    # closed_samples >= n_regions: training decodes at full width, as in evaluation
    head.train()
    assert head.decode(z, depth, covs).denoised is not None
    exact = _exact(head, z, covs, depth, x)
    every = torch.ones(N_REGIONS)
    common = (head.hidden(z, covs), head.output.weight, head.output.bias, head.region_factors)
    by_regions = SampledPeakBernoulli(
        *common, depth.clamp(max=1 - 1e-6), cumulative=_units(every), n_draws=N_REGIONS
    )
    torch.testing.assert_close(by_regions.log_prob_cells(x), exact)
    torch.testing.assert_close(by_regions.log_prob_cells(x.to_dense()), exact)
    by_cells = SampledPeakBernoulli(*common, depth.clamp(max=1 - 1e-6), closed_cells=1.0)
    torch.testing.assert_close(by_cells.log_prob_cells(x), exact)


@pytest.mark.parametrize(
    "options",
    [
        {"closed_samples": 30},
        {"closed_samples": 30, "frequency": _skewed_frequency()},
        {"closed_cells": 0.4},
    ],
    ids=["regions-uniform", "regions-importance", "cells"],
)
def test_sampled_likelihood_and_its_gradient_are_unbiased(options):
    head, z, covs, depth, x = _head_and_inputs(**options)
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
    head, *_ = _head_and_inputs(closed_samples=40, frequency=frequency)
    px = SampledPeakBernoulli(
        None, None, None, None, None, cumulative=head.closed_cumulative, n_draws=40
    )
    assert head.closed_cumulative.dtype == torch.int64  # exact, never cast by .half()
    assert head.closed_cumulative[-1].item() == 40 * INCLUSION_UNIT
    counts = torch.zeros(N_REGIONS)
    n = 4000
    for _ in range(n):
        drawn, pi = px.draw()
        assert len(drawn) == 40 and len(torch.unique(drawn)) == 40  # no region twice
        torch.testing.assert_close(pi, inclusion[drawn].float())
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
        draws = torch.stack(
            [head.log_likelihood(head.decode(z, depth, covs).px, x) for _ in range(500)]
        )
        sds[name] = draws.std(0).mean().item()
    assert sds["importance"] < 0.8 * sds["uniform"]


def test_region_logits_and_their_gradient_equal_the_full_product():
    """The custom backward equals autograd through the full product, at entries and sample."""
    head, z, covs, depth, x = _head_and_inputs(closed_samples=N_REGIONS - 1)
    hidden = head.hidden(z, covs).detach().requires_grad_()
    weight = head.output.weight
    sample = torch.tensor([3, 17, 250, 299])
    drawn = torch.tensor([4, 1])
    entries, sampled, dense_rows = _RegionLogits.apply(
        hidden, weight, x.crow_indices(), x.col_indices(), sample, drawn
    )
    rows, cols = x.to_dense().nonzero(as_tuple=True)
    full = hidden @ weight.T
    torch.testing.assert_close(entries, full[rows, cols])
    torch.testing.assert_close(sampled, full[:, sample])
    torch.testing.assert_close(dense_rows, full[drawn])
    g1 = torch.autograd.grad(
        entries.sin().sum() + sampled.cos().sum() + dense_rows.square().sum(), [hidden, weight]
    )
    g2 = torch.autograd.grad(
        full[rows, cols].sin().sum() + full[:, sample].cos().sum() + full[drawn].square().sum(),
        [hidden, weight],
    )
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)


def test_one_head_class_per_likelihood():
    assert ATACHead.variant(likelihood="bernoulli")[0] is BernoulliATACHead
    assert ATACHead.variant(likelihood="poisson")[0] is PoissonATACHead
    assert ATACHead.variant()[0] is BernoulliATACHead
    assert PoissonATACHead.variant()[0] is PoissonATACHead  # its own likelihood by default
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
        (BernoulliATACHead, {"closed_cells": 0.0}, "closed_cells"),
        (BernoulliATACHead, {"closed_cells": 1.5}, "closed_cells"),
        (BernoulliATACHead, {"closed_cells": 0.5, "closed_samples": 10}, "not both"),
        (PoissonATACHead, {"closed_samples": 10}, "Bernoulli"),
        (PoissonATACHead, {"closed_cells": 0.5}, "Bernoulli"),
    ],
)
def test_closed_samples_is_checked(cls, options, match):
    with pytest.raises(ValueError, match=match):
        cls(N_REGIONS, 4, 1, [8], **options)


def test_masked_likelihood_sampled_and_exact_agree_and_ignore_unmeasured_regions():
    """With some regions unmeasured, the estimators that score every cell or region equal the
    exact masked likelihood, which equals the exact likelihood of the measured regions alone."""
    head, z, covs, depth, x = _head_and_inputs()
    measured = torch.rand(x.shape) < 0.6
    from mosaicvi.nn._sparse import mask_entries

    x = mask_entries(x, measured)  # the data loader's zero at unmeasured entries
    head.eval()
    out = head.decode(z, depth, covs)
    exact = head.masked_log_likelihood(out.px, x, measured)
    # by hand: only the measured entries' Bernoulli terms
    q = out.px.probs
    y = (x.to_dense() > 0).float()
    by_hand = torch.where(measured, y * torch.log(q) + (1 - y) * torch.log1p(-q), 0.0).sum(-1)
    torch.testing.assert_close(exact, by_hand)
    head.train()
    common = (head.hidden(z, covs), head.output.weight, head.output.bias, head.region_factors)
    every = torch.ones(N_REGIONS)
    by_regions = SampledPeakBernoulli(
        *common, depth.clamp(max=1 - 1e-6), cumulative=_units(every), n_draws=N_REGIONS
    )
    torch.testing.assert_close(by_regions.log_prob_cells(x, measured), exact)
    by_cells = SampledPeakBernoulli(*common, depth.clamp(max=1 - 1e-6), closed_cells=1.0)
    torch.testing.assert_close(by_cells.log_prob_cells(x, measured), exact)
    # the unmasked likelihood differs: the mask matters
    assert not torch.allclose(head.log_likelihood(out.px, x), exact)
