"""A fourth modality plugs in as one head class, without editing the module or the model."""

import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData
from mudata import MuData
from scipy import sparse
from scvi.distributions import Poisson
from torch import nn

from mosaicvi import MosaicVI
from mosaicvi.module import MosaicVAE
from mosaicvi.nn import HEADS, Covariates, HeadOutput, ModalityHead


class ToyPoissonHead(ModalityHead):
    """A toy modality: Poisson counts with a decoded rate times a per-cell size factor."""

    n_context = 1

    def __init__(self, n_features, n_latent, n_batch, widths, **kwargs):
        super().__init__(n_features, n_latent, n_batch, widths, **kwargs)
        self.log_rate = nn.Linear(self.decoder_widths[-1], n_features)

    def observed_context(self, x: torch.Tensor, covariates: Covariates) -> torch.Tensor:
        return torch.log1p(x.mean(-1, keepdim=True))

    def decode(self, z, context, covariates, sample_local=True) -> HeadOutput:
        h = self.hidden(z, covariates)
        rate = torch.exp(self.log_rate(h))
        return HeadOutput(Poisson(rate * torch.exp(context)), rate)


@pytest.fixture
def toy_head(monkeypatch):
    monkeypatch.setitem(HEADS, "toy", ToyPoissonHead)


def toy_mosaic(n=240, seed=0):
    """RNA for two thirds of the cells, the toy modality for two thirds (a third have both).

    The two kinds of cells differ in which features are high, so that the latent, not the size
    factor, has to carry the kind.
    """
    rng = np.random.default_rng(seed)
    kind = rng.integers(2, size=n)
    names = np.array([f"c{i}" for i in range(n)])
    # the kinds differ in composition, not only in total counts (a size factor absorbs totals)
    rna_profile = np.where(np.arange(30) < 15, 4.0, 1.0)
    toy_profile = np.array([6.0, 6.0, 1.0, 1.0, 1.0])
    rna = rng.poisson(np.where(kind[:, None] == 1, rna_profile, rna_profile[::-1]))
    toy = rng.poisson(np.where(kind[:, None] == 1, toy_profile, toy_profile[::-1]))
    has_rna, has_toy = np.arange(n) % 3 != 2, np.arange(n) % 3 != 0
    mods = {
        "rna": AnnData(sparse.csr_matrix(rna[has_rna].astype(np.float32))),
        "toy": AnnData(toy[has_toy].astype(np.float32)),
    }
    mods["rna"].obs_names, mods["toy"].obs_names = names[has_rna], names[has_toy]
    mods["toy"].var_names = [f"t{j}" for j in range(5)]
    mdata = MuData(mods)
    obs = pd.DataFrame(
        {"batch": pd.Categorical(np.where(np.arange(n) % 2, "a", "b")), "kind": kind},
        index=names,
    )
    mdata.obs = obs.loc[mdata.obs_names]
    return mdata


def test_module_trains_a_toy_head_with_rna(toy_head):
    torch.manual_seed(0)
    module = MosaicVAE({"rna": 10, "toy": 5}, n_batch=2, n_latent=3, n_hidden=8)
    assert isinstance(module.heads["toy"], ToyPoissonHead)
    mask = torch.tensor([[1, 1], [1, 0], [0, 1]] * 4)
    tensors = {
        "X_rna": torch.poisson(torch.full((12, 10), 3.0)),
        "X_toy": torch.poisson(torch.full((12, 5), 2.0)),
        "presence": mask.float(),
        "batch": torch.tensor([[0], [1]] * 6),
    }
    _, _, out = module(tensors)
    assert set(out.reconstruction_loss) == {"rna", "toy"}
    assert torch.all(out.reconstruction_loss["toy"][mask[:, 1] == 0] == 0)
    assert torch.all(out.reconstruction_loss["toy"][mask[:, 1] == 1] > 0)
    out.loss.backward()
    assert module.heads["toy"].log_rate.weight.grad.abs().sum() > 0


def test_model_with_a_toy_head(toy_head):
    mdata = toy_mosaic()
    MosaicVI.setup_mudata(mdata, modalities={"rna": "rna", "toy": "toy"}, batch_key="batch")
    model = MosaicVI(mdata, n_latent=3, n_hidden=16)
    model.train(max_epochs=40, batch_size=48, enable_progress_bar=False)
    assert "reconstruction_loss_toy_train" in model.history
    z = model.get_latent_representation()
    assert z.shape == (mdata.n_obs, 3) and np.isfinite(z).all()
    # the toy modality alone separates the two kinds of cells in the latent
    has_toy = mdata.obsm["toy"].ravel()
    z_toy = model.get_latent_representation(indices=has_toy, given=["toy"])
    kind = mdata.obs["kind"].to_numpy()[has_toy]
    gap = np.linalg.norm(z_toy[kind == 0].mean(0) - z_toy[kind == 1].mean(0))
    assert gap > np.linalg.norm(z_toy.std(0))
    draws = model.posterior_predictive_sample(modality="toy", n_samples=2)
    assert draws.shape == (mdata.n_obs, 5, 2)


def test_unknown_data_type_names_the_registry(trimodal):
    with pytest.raises(ValueError, match="mosaicvi.nn.HEADS"):
        MosaicVI.setup_mudata(trimodal, modalities={"rna": "rna", "toy": "atac"})
    with pytest.raises(ValueError, match="No modality head for data type 'toy'"):
        MosaicVAE({"rna": 10, "toy": 5})


class ToyScaledHead(ToyPoissonHead):
    """The toy head with an option of its own, read from the model's keyword ``toy_scale``."""

    model_arguments = {"toy_scale": ("scale", 1.0)}

    @classmethod
    def head_options(cls, **arguments):
        options = super().head_options(**arguments)
        if not options["scale"] > 0:
            raise ValueError(f"`toy_scale` must be positive, got {options['scale']!r}.")
        return options

    def __init__(self, *args, scale=1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale = scale

    def decode(self, z, context, covariates, sample_local=True) -> HeadOutput:
        out = super().decode(z, context, covariates, sample_local)
        return HeadOutput(Poisson(out.px.rate * self.scale), out.denoised)


def test_a_new_head_receives_its_own_option_and_trains(monkeypatch, tmp_path):
    monkeypatch.setitem(HEADS, "toy", ToyScaledHead)
    mdata = toy_mosaic()
    MosaicVI.setup_mudata(mdata, modalities={"rna": "rna", "toy": "toy"}, batch_key="batch")
    model = MosaicVI(mdata, n_latent=3, n_hidden=16, toy_scale=2.5, gene_likelihood="poisson")
    assert model.module.heads["toy"].scale == 2.5
    assert model.module.heads["rna"].likelihood == "poisson"
    model.train(max_epochs=3, batch_size=64, enable_progress_bar=False)
    assert np.isfinite(model.history["elbo_train"].to_numpy(dtype=float)).all()
    # saved and loaded with its option (the model's init parameters keep it)
    model.save(tmp_path / "m")
    assert MosaicVI.load(tmp_path / "m", adata=mdata).module.heads["toy"].scale == 2.5
    with pytest.raises(ValueError, match="toy_scale"):
        MosaicVI(mdata, toy_scale=-1.0)
    # another head's argument for a data type not registered warns; at its default it is quiet
    with pytest.warns(UserWarning, match="no atac modality"):
        MosaicVI(mdata, atac_likelihood="poisson")


def test_heads_check_their_own_options_and_never_fall_back():
    from mosaicvi.nn import RNAHead

    with pytest.raises(ValueError, match="likelihood"):
        RNAHead(10, 3, 1, [8], likelihood="negative binomial")
    with pytest.raises(ValueError, match="gene_likelihood"):
        RNAHead.head_options(gene_likelihood="nbinom")
    assert RNAHead.head_options() == {"likelihood": "nb", "dispersion": "gene"}


def test_model_arguments_are_keywords_and_checked_for_absent_heads(toy_head):
    mdata = toy_mosaic()
    MosaicVI.setup_mudata(mdata, modalities={"rna": "rna", "toy": "toy"}, batch_key="batch")
    with pytest.raises(TypeError):
        MosaicVI(mdata, 5, 16, None, 0.1, "zinb")  # once gene_likelihood's place
    with pytest.raises(ValueError, match="atac_closed_cells"):
        MosaicVI(mdata, atac_closed_cells=2.0)  # checked although no ATAC is registered
