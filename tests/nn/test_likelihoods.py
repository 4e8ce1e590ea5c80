import numpy as np
import torch

from mosaicvi.nn import ATACDecoder, ProteinDecoder, RNADecoder, protein_background_prior


def test_rna_decoder_likelihoods_and_dispersion():
    z = torch.randn(6, 4)
    batch = torch.tensor([[0], [1], [0], [1], [0], [1]])
    library = torch.log(torch.full((6, 1), 100.0))
    x = torch.poisson(torch.full((6, 9), 3.0))
    for lik in ("nb", "zinb", "poisson"):
        for disp in ("gene", "gene-batch"):
            dec = RNADecoder(4, 9, n_batch=2, n_cat_list=[2], gene_likelihood=lik, dispersion=disp)
            dist, scale = dec(z, library, batch, ())
            torch.testing.assert_close(scale.sum(-1), torch.ones(6))
            torch.testing.assert_close(dist.mean if lik != "zinb" else dist.mu, 100.0 * scale)
            assert torch.isfinite(dist.log_prob(x)).all()
    assert dec.theta(batch).shape == (6, 9)


def test_atac_bernoulli_uses_region_and_depth_factors():
    dec = ATACDecoder(4, 12, n_cat_list=[1])
    with torch.no_grad():
        dec.region_factors.fill_(2.0)
    z, batch = torch.randn(3, 4), torch.zeros(3, 1, dtype=torch.long)
    depth = torch.tensor([[0.5], [1.0], [0.25]])
    dist, p = dec(z, depth, None, (batch,))
    expected = p * depth * torch.sigmoid(torch.tensor(2.0))
    torch.testing.assert_close(dist.probs, expected)
    x = torch.tensor([[0.0, 3.0] * 6] * 3)
    torch.testing.assert_close(dec.observation(x), (x > 0).float())
    present = torch.tensor([True, False, True])
    d = dec.cell_depth(x, present, (batch,))
    assert d[1].item() == 1.0 and 0 < d[0].item() < 1


def test_atac_poisson_rate_scales_with_library():
    dec = ATACDecoder(4, 12, n_cat_list=[1], likelihood="poisson")
    z, batch = torch.randn(2, 4), torch.zeros(2, 1, dtype=torch.long)
    dist, scale = dec(z, None, torch.log(torch.tensor([[10.0], [20.0]])), (batch,))
    torch.testing.assert_close(dist.rate, torch.tensor([[10.0], [20.0]]) * scale)


def test_protein_mixture_foreground_below_mean_and_background_kl():
    dec = ProteinDecoder(4, 7, n_batch=2, n_cat_list=[2])
    z, batch = torch.randn(5, 4), torch.tensor([[0], [1], [1], [0], [1]])
    dist, denoised, background = dec(z, (batch,), sample_background=False)
    assert torch.all(denoised <= dist.mean + 1e-6) and torch.all(denoised >= 0)
    kl = dec.background_kl(background, batch)
    assert kl.shape == (5,) and torch.all(kl >= 0)
    x = torch.poisson(torch.full((5, 7), 20.0))
    assert torch.isfinite(dist.log_prob(x)).all()
    dist, denoised, background = ProteinDecoder(4, 7, 2, [2], likelihood="nb")(z, (batch,))
    assert background is None and torch.equal(denoised, dist.mean)


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
