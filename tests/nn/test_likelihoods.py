import numpy as np
import pytest
import torch

from mosaicvi.nn import (
    BernoulliATACHead,
    Covariates,
    PoissonATACHead,
    ProteinHead,
    RNAHead,
    protein_background_prior,
)

BATCH = torch.tensor([[0], [1], [0], [1], [0], [1]])


def test_rna_head_likelihoods_and_dispersion():
    z = torch.randn(6, 4)
    covs = Covariates(BATCH)
    library = torch.log(torch.full((6, 1), 100.0))
    x = torch.poisson(torch.full((6, 9), 3.0))
    for lik in ("nb", "zinb", "poisson"):
        for disp in ("gene", "gene-batch"):
            head = RNAHead(9, 4, 2, [8], likelihood=lik, dispersion=disp)
            dist, scale, local = head.decode(z, library, covs)
            torch.testing.assert_close(scale.sum(-1), torch.ones(6))
            torch.testing.assert_close(dist.mean if lik != "zinb" else dist.mu, 100.0 * scale)
            assert local is None
            torch.testing.assert_close(head.log_likelihood(dist, x), dist.log_prob(x).sum(-1))
    assert head.theta(BATCH).shape == (6, 9)
    torch.testing.assert_close(head.observed_context(x, covs), torch.log(x.sum(-1, keepdim=True)))


def test_atac_bernoulli_uses_region_and_depth_factors():
    head = BernoulliATACHead(12, 4, 1, [8]).eval()  # the exact likelihood
    with torch.no_grad():
        head.region_factors.fill_(2.0)
    z, covs = torch.randn(3, 4), Covariates(torch.zeros(3, 1, dtype=torch.long))
    depth = torch.tensor([[0.5], [1.0], [0.25]])
    dist, p, _ = head.decode(z, depth, covs)
    expected = p * depth.clamp(max=1 - 1e-6) * torch.sigmoid(torch.tensor(2.0))
    torch.testing.assert_close(dist.probs, expected)
    x = torch.tensor([[0.0, 3.0] * 6] * 3)
    torch.testing.assert_close(
        head.log_likelihood(dist, x), dist.log_prob((x > 0).float()).sum(-1)
    )
    d = head.observed_context(x, covs)
    assert d.shape == (3, 1) and torch.all((d > 0) & (d < 1))


def test_atac_poisson_rate_scales_with_library():
    head = PoissonATACHead(12, 4, 1, [8])
    z, covs = torch.randn(2, 4), Covariates(torch.zeros(2, 1, dtype=torch.long))
    dist, scale, _ = head.decode(z, torch.log(torch.tensor([[10.0], [20.0]])), covs)
    torch.testing.assert_close(dist.rate, torch.tensor([[10.0], [20.0]]) * scale)


def test_protein_mixture_foreground_below_mean_and_background_kl():
    head = ProteinHead(7, 4, 2, [8])
    z, covs = torch.randn(5, 4), Covariates(torch.tensor([[0], [1], [1], [0], [1]]))
    context = head.context(torch.zeros(5, 7), torch.ones(5, dtype=torch.bool), covs)
    assert context.shape == (5, 0)
    dist, denoised, background = head.decode(z, context, covs, sample_local=False)
    assert torch.all(denoised <= dist.mean + 1e-6) and torch.all(denoised >= 0)
    kl = head.kl(background, covs)
    assert kl.shape == (5,) and torch.all(kl >= 0)
    x = torch.poisson(torch.full((5, 7), 20.0))
    assert torch.isfinite(dist.log_prob(x)).all()
    nb = ProteinHead(7, 4, 2, [8], likelihood="nb")
    dist, denoised, background = nb.decode(z, context, covs)
    assert background is None and torch.equal(denoised, dist.mean)
    assert torch.equal(nb.kl(None, covs), torch.zeros(5))


def test_plugin_context_is_the_running_mean_of_each_batch():
    head = RNAHead(5, 2, 3, [4], context_momentum=0.5)
    batch = torch.tensor([[0], [0], [1], [2]])
    present = torch.tensor([True, True, True, False])
    covs = Covariates(batch)
    x = torch.tensor([[10.0] * 5, [30.0] * 5, [2.0] * 5, [0.0] * 5])
    log_lib = torch.log(x.sum(-1, keepdim=True))
    head.eval()  # no update outside training; nothing seen: plug-in 0
    assert torch.equal(head.context(x, present, covs)[3], torch.zeros(1))
    head.train()
    context = head.context(x, present, covs)
    torch.testing.assert_close(context[:3], log_lib[:3])  # measured cells: their own
    # batch 2 never measured: the mean of the batches that were
    mean0 = log_lib[:2].mean()
    torch.testing.assert_close(
        head.plugin(torch.tensor([[0], [2]])).ravel(),
        torch.stack([mean0, (mean0 + log_lib[2, 0]) / 2]),
    )
    # second update of batch 0 with momentum 0.5: halfway to the new mean
    head.context(x[2:3].repeat(2, 1), present[:2], Covariates(batch[:2]))
    torch.testing.assert_close(head.plugin_context[0, 0], mean0 + 0.5 * (log_lib[2, 0] - mean0))


def test_background_prior_recovers_lower_component():
    rng = np.random.default_rng(0)
    n = 4000
    fg = rng.random((n, 3)) < 0.4
    x = np.where(fg, rng.normal(5.0, 0.5, (n, 3)), rng.normal(2.0, 0.3, (n, 3)))
    batch = np.zeros(n, dtype=int)
    mean, scale = protein_background_prior(x, batch, n_batch=2)
    np.testing.assert_allclose(mean[:, 0], 2.0, atol=0.05)
    np.testing.assert_allclose(scale[:, 0], 0.3, atol=0.05)
    # batch 1 has no protein data: it gets the average of the others
    np.testing.assert_allclose(mean[:, 1], mean[:, 0])


def test_background_prior_fits_are_sklearns_gaussian_mixture():
    """Issue 29: the batched EM is sklearn's GaussianMixture, one protein at a time."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    from mosaicvi.nn._protein import _background_components, reference_mixture

    rng = np.random.default_rng(0)
    n, p = 500, 12
    fg = rng.random((n, p)) < rng.uniform(0.05, 0.7, p)
    counts = np.where(fg, rng.negative_binomial(5, 0.05, (n, p)), rng.poisson(3, (n, p)))
    x = np.log1p(counts.astype(float))
    x[:, 3] = 0.0  # a protein never detected
    x[rng.random(n) < 0.3, 5] = np.nan  # unmeasured entries: left out of that fit
    x[2:, 7] = np.nan  # two values left
    means, scales = _background_components(x)
    for j in range(p):
        column = x[~np.isnan(x[:, j]), j].reshape(-1, 1)
        mixture = reference_mixture(column)
        # sklearn's own fit, from the documented start and settings
        assert (mixture.reg_covar, mixture.tol, mixture.max_iter) == (1e-3, 1e-3, 100)
        np.testing.assert_allclose(mixture.means_init[:, 0], np.quantile(column, [0.1, 0.9]))
        np.testing.assert_allclose(mixture.precisions_init, 1 / (column.var() / 2 + 1e-2))
        assert list(mixture.weights_init) == [0.5, 0.5]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            mixture.fit(column)
        low = np.argmin(mixture.means_[:, 0])
        np.testing.assert_allclose(means[j], mixture.means_[low, 0], rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(
            scales[j], np.sqrt(mixture.covariances_[low, 0, 0]), rtol=1e-6, atol=1e-8
        )
    x[:, 9] = np.nan  # no value: no fit
    assert np.isnan(_background_components(x)[0][9])


def test_background_prior_refuses_what_it_cannot_fit():
    x = np.log1p(np.random.default_rng(0).poisson(3, (20, 4)).astype(float))
    batch = np.zeros(20, dtype=int)
    with pytest.raises(TypeError):
        protein_background_prior(x, batch, 2, np.ones((2, 4), bool))  # measured is keyword-only
    with pytest.raises(ValueError, match="integer batch codes in \\[0, 2\\)"):
        protein_background_prior(x, batch + 2, 2)
    with pytest.raises(ValueError, match="integer batch codes"):
        protein_background_prior(x, batch.astype(str), 2)
    with pytest.raises(ValueError, match="non-negative"):
        protein_background_prior(-x, batch, 2)
    with pytest.raises(ValueError, match="`measured` must be"):
        protein_background_prior(x, batch, 2, measured=np.ones((1, 4), bool))
