import pytest
import torch
from scvi.nn import FCLayers

from mosaicvi.nn import BernoulliATACHead, Covariates, ModalityExpert, PeakBernoulli
from mosaicvi.nn._layers import (
    corrupt_counts,
    fc_layers_forward,
    hidden_layers,
    layer_widths,
    log1p_input,
    normalize_rows,
)


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
    fc = FCLayers(
        x.shape[1] + (2 if with_tail else 0),
        16,
        n_cat_list=[1, 4],
        n_layers=2,
        n_hidden=16,
        use_batch_norm=False,
        use_layer_norm=True,
    ).eval()
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
    expert = ModalityExpert(x.shape[1], 5, [16, 8], n_cat_list=[3]).eval()
    cats = (torch.randint(0, 3, (x.shape[0], 1)),)
    mu, var = expert(x, present, None, cats)
    monkeypatch.setattr("mosaicvi.nn._layers.SPARSE_MAX_DENSITY", 0.0)  # force dense
    mu_d, var_d = expert(x, present, None, cats)
    torch.testing.assert_close(mu, mu_d, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(var, var_d, rtol=1e-5, atol=1e-5)
    assert torch.all(mu[~present] == 0) and torch.all(var[~present] == 1)


def test_normalized_input_drops_the_depth_on_dense_and_sparse_counts():
    x = sparse_counts(n_cells=6, n_features=50, density=0.3)
    x[2] = 0  # a cell without counts stays 0
    dense = normalize_rows(x, 100.0)
    sparse = normalize_rows(x.to_sparse_csr(), 100.0).to_dense()
    torch.testing.assert_close(dense, sparse)
    sums = dense.sum(1)
    torch.testing.assert_close(sums[sums > 0], torch.full_like(sums[sums > 0], 100.0))
    assert sums[2] == 0
    # an expert reading normalised counts gives a cell and its 5x deeper copy the same expert
    expert = ModalityExpert(50, 4, [8], encoder_input="normalized").eval()
    mu, var = expert(torch.stack([x[0], 5 * x[0]]), torch.ones(2, dtype=torch.bool))
    torch.testing.assert_close(mu[0], mu[1])
    torch.testing.assert_close(var[0], var[1])
    with pytest.raises(ValueError, match="encoder_input"):
        ModalityExpert(50, 4, [8], encoder_input="tfidf")


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
    head = BernoulliATACHead(50, 4, 1, [8]).eval()  # the exact likelihood
    with torch.no_grad():
        head.output.bias.fill_(50.0)
        head.region_factors.fill_(50.0)
    z = torch.randn(3, 4)
    dist = head.decode(z, torch.ones(3, 1), Covariates(torch.zeros(3, 1, dtype=torch.long))).px
    assert torch.all(dist.probs < 1)
    assert torch.isfinite(dist.log_prob_cells(torch.zeros(3, 50))).all()


def test_layer_widths():
    assert layer_widths(128) == [128, 128]
    assert layer_widths(64, 3) == [64, 64, 64]
    assert layer_widths([1300, 900]) == [1300, 900]
    assert layer_widths((32,), 1) == [32]
    for bad, error in (
        ([], ValueError),
        ([32, -1], ValueError),
        (0, ValueError),
        ([32.5], TypeError),
        (True, TypeError),
        ("64", TypeError),
    ):
        with pytest.raises(error, match="n_hidden"):
            layer_widths(bad)
    with pytest.raises(ValueError, match="n_layers"):
        layer_widths([64, 32], 3)
    with pytest.raises(ValueError, match="n_layers"):
        layer_widths(64, 0)


def test_stacked_layers_of_equal_width_equal_fclayers():
    """A stack of one-layer FCLayers is the same network as a multi-layer FCLayers."""
    torch.manual_seed(0)
    stack = hidden_layers(30, [3], [16, 16, 16]).eval()
    fc = FCLayers(
        30, 16, n_cat_list=[3], n_layers=3, n_hidden=16, use_batch_norm=False, use_layer_norm=True
    ).eval()
    fc.load_state_dict(
        {
            f"fc_layers.Layer {i}.{rest}": v
            for k, v in stack.state_dict().items()
            for i, rest in [(int(k.split(".")[1]), k.split(".", 4)[4])]
        }
    )
    x, cats = torch.randn(10, 30), torch.randint(0, 3, (10, 1))
    torch.testing.assert_close(stack(x, cats), fc(x, cats))


def test_stacked_layers_of_different_widths():
    stack = hidden_layers(3000, [2], [40, 24, 8]).eval()
    assert [layer.fc_layers[0][0].out_features for layer in stack.layers] == [40, 24, 8]
    x, cats = sparse_counts(), torch.randint(0, 2, (40, 1))
    out = stack(log1p_input(x), cats)
    assert out.shape == (40, 8)
    torch.testing.assert_close(out, stack(torch.log1p(x), cats), rtol=1e-5, atol=1e-5)


def test_corruption_masks_counts_in_training_only():
    torch.manual_seed(0)
    x = torch.full((400, 500), 3.0)
    y = corrupt_counts(x, 0.3)
    zero = (y == 0).float().mean().item()
    assert abs(zero - 0.3) < 0.01
    torch.testing.assert_close(y[y > 0], torch.full_like(y[y > 0], 3.0 / 0.7))
    assert abs(y.mean().item() - 3.0) < 0.03  # expected counts unchanged
    assert corrupt_counts(x, 0.0) is x
    expert = ModalityExpert(500, 4, [16], corruption_rate=0.5, dropout_rate=0.0)
    present = torch.ones(400, dtype=torch.bool)
    expert.train()
    first, _ = expert(x, present)
    second, _ = expert(x, present)
    assert not torch.allclose(first, second)
    expert.eval()
    torch.testing.assert_close(expert(x, present)[0], expert(x, present)[0])
    clean = ModalityExpert(500, 4, [16], dropout_rate=0.0)
    clean.load_state_dict(expert.state_dict())
    torch.testing.assert_close(expert(x, present)[0], clean.eval()(x, present)[0])
