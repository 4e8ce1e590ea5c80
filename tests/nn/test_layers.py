import pytest
import torch

from mosaicvi.nn import ModalityExpert
from mosaicvi.nn._atac import ATACDecoder, PeakBernoulli
from mosaicvi.nn._layers import fc_layers_forward, hidden_layers, log1p_input


def sparse_counts(n_cells=40, n_features=3000, density=0.02, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(n_cells, n_features, generator=g) < density
    return mask * torch.randint(1, 6, (n_cells, n_features), generator=g).float()


def test_log1p_input_sparse_only_when_wide_and_sparse():
    x = sparse_counts()
    s = log1p_input(x)
    assert s.is_sparse_csr
    torch.testing.assert_close(s.to_dense(), torch.log1p(x))
    assert not log1p_input(torch.ones(4, 3000)).is_sparse_csr  # dense data
    assert not log1p_input(sparse_counts(n_features=200)).is_sparse_csr  # narrow


@pytest.mark.parametrize("with_tail", [False, True])
def test_sparse_first_layer_matches_fclayers(with_tail):
    torch.manual_seed(0)
    x = sparse_counts()
    tail = torch.randn(x.shape[0], 2) if with_tail else None
    fc = hidden_layers(x.shape[1] + (2 if with_tail else 0), [1, 4], 16, 2).eval()
    cats = (torch.zeros(x.shape[0], 1, dtype=torch.long), torch.randint(0, 4, (x.shape[0], 1)))
    dense_in = torch.log1p(x) if tail is None else torch.cat([torch.log1p(x), tail], -1)
    expected = fc(dense_in, *cats)
    got = fc_layers_forward(fc, log1p_input(x), *cats, dense_tail=tail)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # gradients of the first layer's weights agree too
    w = fc.fc_layers[0][0].weight
    (g_sparse,) = torch.autograd.grad(got.square().sum(), w)
    (g_dense,) = torch.autograd.grad(expected.square().sum(), w)
    torch.testing.assert_close(g_sparse, g_dense, rtol=1e-4, atol=1e-4)


def test_expert_sparse_and_dense_paths_agree(monkeypatch):
    torch.manual_seed(0)
    x = sparse_counts()
    present = torch.rand(x.shape[0]) < 0.7
    expert = ModalityExpert(x.shape[1], 5, 16, 2, n_cat_list=[3]).eval()
    cats = (torch.randint(0, 3, (x.shape[0], 1)),)
    mu, var = expert(x, present, None, cats)
    monkeypatch.setattr("mosaicvi.nn._layers.SPARSE_MAX_DENSITY", 0.0)  # force dense
    mu_d, var_d = expert(x, present, None, cats)
    torch.testing.assert_close(mu, mu_d, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(var, var_d, rtol=1e-5, atol=1e-5)
    assert torch.all(mu[~present] == 0) and torch.all(var[~present] == 1)


def test_peak_bernoulli_cell_sum_matches_per_region_log_prob():
    torch.manual_seed(0)
    probs = torch.rand(6, 500) * 0.98
    probs[0, :3] = 0.0  # an open region with probability 0 is clamped like BCE
    x = sparse_counts(6, 500, 0.05)
    x[0, :3] = 2.0
    dist = PeakBernoulli(probs=probs, validate_args=False)
    torch.testing.assert_close(
        dist.log_prob_cells(x), dist.log_prob((x > 0).float()).sum(-1), rtol=1e-5, atol=1e-3
    )
    reference = torch.distributions.Bernoulli(probs=probs[1:]).log_prob((x[1:] > 0).float())
    torch.testing.assert_close(dist.log_prob_cells(x)[1:], reference.sum(-1), rtol=1e-5, atol=1e-3)


def test_atac_probabilities_stay_below_one():
    decoder = ATACDecoder(4, 50, [1], n_hidden=8)
    with torch.no_grad():
        decoder.output.bias.fill_(50.0)
        decoder.region_factors.fill_(50.0)
    z = torch.randn(3, 4)
    dist, _ = decoder(
        z, torch.ones(3, 1), torch.zeros(3, 1), (torch.zeros(3, 1, dtype=torch.long),)
    )
    assert torch.all(dist.probs < 1)
    assert torch.isfinite(dist.log_prob_cells(torch.zeros(3, 50))).all()
