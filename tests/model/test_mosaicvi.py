import numpy as np
import pandas as pd
import pytest

from mosaicvi import MosaicVI

MODS = ("rna", "atac", "protein")
SUBSETS = [(m,) for m in MODS] + [("rna", "atac"), ("rna", "protein"), ("atac", "protein"), MODS]


def test_every_subset_of_modalities_is_present(trained_trimodal):
    model, mdata = trained_trimodal
    mask = model.adata_manager.presence()
    assert {tuple(np.array(MODS)[row]) for row in mask} == set(SUBSETS)
    assert model.is_trained
    elbo = model.history["elbo_train"].to_numpy(dtype=float).ravel()
    assert np.isfinite(elbo).all() and elbo[-1] < elbo[0]
    for mod in MODS:  # the ELBO's terms, and the subset terms of the objective apart
        assert f"reconstruction_loss_{mod}_train" in model.history
        assert f"subset_reconstruction_loss_{mod}_train" in model.history
    assert "subset_kl_train" in model.history


def test_joint_latent_for_every_cell(trained_trimodal):
    model, mdata = trained_trimodal
    z = model.get_latent_representation()
    assert z.shape == (mdata.n_obs, 5) and np.isfinite(z).all()
    sample = model.get_latent_representation(give_mean=False)
    assert sample.shape == z.shape and not np.allclose(sample, z)


@pytest.mark.parametrize("given", [["rna"], ["atac"], ["protein"], ["rna", "protein"]])
def test_latent_given_some_modalities(trained_trimodal, given):
    model, mdata = trained_trimodal
    has = np.zeros(mdata.n_obs, bool)
    for mod in given:
        has |= mdata.obsm[mod].reshape(-1)
    idx = np.flatnonzero(has)
    z = model.get_latent_representation(indices=idx, given=given)
    assert z.shape == (len(idx), 5) and np.isfinite(z).all()
    # cells that have exactly the given modalities: equal to the joint latent
    exact = np.flatnonzero(
        np.all([mdata.obsm[m].reshape(-1) == (m in given) for m in MODS], axis=0)
    )
    joint = model.get_latent_representation(indices=exact)
    np.testing.assert_allclose(
        model.get_latent_representation(indices=exact, given=given), joint, rtol=1e-5, atol=1e-6
    )


def test_given_errors(trained_trimodal):
    model, mdata = trained_trimodal
    with pytest.raises(ValueError, match="have none of the modalities"):
        model.get_latent_representation(given=["rna"])
    with pytest.raises(ValueError, match="subset of the registered modalities"):
        model.get_latent_representation(given=["dna"])


@pytest.mark.parametrize(
    ("getter", "mod", "n"),
    [
        ("get_normalized_expression", "rna", 40),
        ("get_accessibility_estimates", "atac", 60),
        ("get_protein_expression", "protein", 10),
    ],
)
def test_imputation_getters_cover_every_cell(trained_trimodal, getter, mod, n):
    model, mdata = trained_trimodal
    out = getattr(model, getter)()
    assert isinstance(out, pd.DataFrame) and out.shape == (mdata.n_obs, n)
    assert list(out.index) == list(mdata.obs_names)
    assert list(out.columns) == list(mdata.mod[mod].var_names)
    values = out.to_numpy()
    assert np.isfinite(values).all() and (values >= 0).all()
    lacking = np.flatnonzero(~mdata.obsm[mod].reshape(-1))
    for given in (["rna"], ["atac"], ["protein"]):
        if given[0] == mod:
            continue
        idx = np.intersect1d(lacking, np.flatnonzero(mdata.obsm[given[0]].reshape(-1)))
        arr = getattr(model, getter)(indices=idx, given=given, return_numpy=True)
        assert arr.shape == (len(idx), n) and np.isfinite(arr).all()
    one = getattr(model, getter)(indices=[0, 1], transform_batch="batch0", n_samples=3)
    assert one.shape == (2, n) and np.isfinite(one.to_numpy()).all()


def test_normalized_expression_options(trained_trimodal):
    model, _ = trained_trimodal
    freq = model.get_normalized_expression(indices=[0, 1, 2])
    np.testing.assert_allclose(freq.sum(1), 1.0, rtol=1e-5)
    per10k = model.get_normalized_expression(indices=[0, 1, 2], library_size=1e4)
    np.testing.assert_allclose(per10k.to_numpy(), 1e4 * freq.to_numpy(), rtol=1e-5)
    genes = model.get_normalized_expression(indices=[0], gene_list=["gene3", "gene1"])
    assert list(genes.columns) == ["gene1", "gene3"]
    acc = model.get_accessibility_estimates(indices=[0], normalize_regions=True)
    assert (acc.to_numpy() <= model.get_accessibility_estimates(indices=[0]).to_numpy()).all()
    fg = model.get_protein_expression(indices=[0, 1])
    full = model.get_protein_expression(indices=[0, 1], include_background=True)
    assert (fg.to_numpy() <= full.to_numpy() + 1e-6).all()
    with pytest.raises(ValueError, match="transform_batch"):
        model.get_protein_expression(transform_batch="nope")


def test_save_load_gives_identical_latents(trained_trimodal, tmp_path):
    model, mdata = trained_trimodal
    model.save(tmp_path / "model", overwrite=True)
    loaded = MosaicVI.load(tmp_path / "model", adata=mdata)
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), model.get_latent_representation()
    )
    np.testing.assert_array_equal(
        loaded.get_protein_expression(given=["rna"], indices=[0, 3]).to_numpy(),
        model.get_protein_expression(given=["rna"], indices=[0, 3]).to_numpy(),
    )
    assert loaded.init_params_ == model.init_params_


def test_new_mudata_is_transferred(trained_trimodal):
    model, mdata = trained_trimodal
    sub = mdata[:50].copy()
    z = model.get_latent_representation(sub)
    np.testing.assert_allclose(
        z, model.get_latent_representation(indices=np.arange(50)), atol=1e-5
    )


def test_invalid_model_arguments(trained_trimodal):
    _, mdata = trained_trimodal
    with pytest.raises(ValueError, match="gene_likelihood"):
        MosaicVI(mdata, gene_likelihood="gaussian")
    with pytest.raises(ValueError, match="protein_likelihood"):
        MosaicVI(mdata, protein_likelihood="poisson")


def test_model_without_protein_rejects_protein_getter(trimodal):
    sub_names = trimodal.obs_names[
        trimodal.obsm["rna"].reshape(-1) | trimodal.obsm["atac"].reshape(-1)
    ]
    sub = trimodal[sub_names].copy()
    MosaicVI.setup_mudata(sub, modalities={"rna": "rna", "atac": "atac"})
    model = MosaicVI(sub, n_latent=3, n_hidden=16)
    model.train(max_epochs=1, enable_progress_bar=False)
    with pytest.raises(ValueError, match="not set up with 'protein'"):
        model.get_protein_expression()


OPTIONS = [
    {"fusion": "poe", "objective": "mvtcae", "alpha": 0.2, "beta": 2.0},
    {"fusion": "moe"},
    {"fusion": "moe", "objective": "mvtcae"},
    {"fusion": "mopoe"},
    {"fusion": "mopoe", "objective": "mvtcae"},
    {"n_hidden": [48, 24]},
    {"corruption_rate": 0.2},
    {"atac_closed_samples": 16},
]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(map(str, o.values())))
def test_every_option_trains_imputes_and_round_trips(trimodal, options, tmp_path):
    MosaicVI.setup_mudata(trimodal, modalities=dict(zip(MODS, MODS)), batch_key="batch")
    model = MosaicVI(trimodal, n_latent=4, n_hidden=options.pop("n_hidden", 24), **options)
    model.train(max_epochs=3, batch_size=64, enable_progress_bar=False)
    loss = model.history["elbo_train"].to_numpy(dtype=float).ravel()
    assert np.isfinite(loss).all()
    z = model.get_latent_representation()
    assert z.shape == (trimodal.n_obs, 4) and np.isfinite(z).all()
    getters = {
        "rna": model.get_normalized_expression,
        "atac": model.get_accessibility_estimates,
        "protein": model.get_protein_expression,
    }
    for mod, getter in getters.items():
        values = getter(return_numpy=True)  # every cell, with or without the modality
        assert values.shape == (trimodal.n_obs, trimodal[mod].n_vars)
        assert np.isfinite(values).all() and (values >= 0).all()
        source = "protein" if mod != "protein" else "rna"
        idx = np.flatnonzero(trimodal.obsm[source].reshape(-1))
        assert np.isfinite(getter(indices=idx, given=[source], return_numpy=True)).all()
    model.save(tmp_path / "model")
    loaded = MosaicVI.load(tmp_path / "model", adata=trimodal)
    for key, value in options.items():
        if key == "atac_closed_samples":
            assert loaded.module.heads["atac"].closed_samples == value
        else:
            assert getattr(loaded.module, key) == value
    np.testing.assert_array_equal(loaded.get_latent_representation(), z)


def test_invalid_options_name_the_argument(trimodal):
    MosaicVI.setup_mudata(trimodal, modalities=dict(zip(MODS, MODS)))
    for kwargs, match in (
        ({"fusion": "sum"}, "fusion"),
        ({"objective": "iwae"}, "objective"),
        ({"n_hidden": [64, 32], "n_layers": 3}, "n_layers"),
        ({"corruption_rate": -0.1}, "corruption_rate"),
    ):
        with pytest.raises(ValueError, match=match):
            MosaicVI(trimodal, **kwargs)


def test_posterior_predictive_library_of_cells_without_rna(trained_trimodal):
    """Cells lacking RNA draw libraries like the measured cells of their batch (issue 13).

    Before the modality heads, such cells were decoded with library log(max(0, 1)) = 0 and
    drew about 1 count each where measured cells drew hundreds.
    """
    model, mdata = trained_trimodal
    draws = model.posterior_predictive_sample(modality="rna", n_samples=5)
    assert draws.shape == (mdata.n_obs, mdata["rna"].n_vars, 5)
    library = draws.sum(axis=1).todense().mean(1)  # mean library of each cell's draws
    has_rna = mdata.obsm["rna"].ravel()
    observed = np.zeros(mdata.n_obs)
    observed[has_rna] = np.asarray(mdata["rna"][mdata.obs_names[has_rna]].X.sum(1)).ravel()
    batch = mdata.obs["batch"].to_numpy()
    for b in np.unique(batch):
        lacking = np.median(library[~has_rna & (batch == b)])
        measured = np.median(observed[has_rna & (batch == b)])
        assert 0.5 < lacking / measured < 2, (b, lacking, measured)


def test_posterior_predictive_sample_options(trained_trimodal):
    model, mdata = trained_trimodal
    every = model.posterior_predictive_sample(indices=[0, 1, 2])
    assert {m: x.shape for m, x in every.items()} == {
        "rna": (3, 40),
        "atac": (3, 60),
        "protein": (3, 10),
    }
    for x in every.values():
        values = x.todense()
        assert np.all(values >= 0) and np.array_equal(values, np.round(values))
    genes = model.posterior_predictive_sample(
        modality="rna", indices=[0, 1], feature_list=["gene3", "gene1"], n_samples=2
    )
    assert genes.shape == (2, 2, 2)
    has_protein = np.flatnonzero(mdata.obsm["protein"].ravel())[:4]
    given = model.posterior_predictive_sample(
        modality="rna", indices=has_protein, given=["protein"]
    )
    assert given.shape == (4, 40)
    for bad, error in ((0, ValueError), (2.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="n_samples"):
            model.posterior_predictive_sample(modality="rna", n_samples=bad)
    with pytest.raises(ValueError, match="feature_list"):
        model.posterior_predictive_sample(feature_list=["gene1"])
    with pytest.raises(ValueError, match="not set up with 'dna'"):
        model.posterior_predictive_sample(modality="dna")


def test_training_plan_uses_a_fused_adam(trained_trimodal):
    from mosaicvi.model import MosaicTrainingPlan

    model, _ = trained_trimodal
    assert MosaicVI._training_plan_cls is MosaicTrainingPlan
    for name in ("Adam", "AdamW"):
        plan = MosaicTrainingPlan(model.module, optimizer=name, lr=2e-3)
        optimizer = plan.configure_optimizers()["optimizer"]
        assert type(optimizer).__name__ == name
        assert optimizer.defaults["fused"] is True and optimizer.defaults["lr"] == 2e-3


@pytest.mark.parametrize("closed_samples", [None, 16])
def test_bf16_mixed_precision_trains(trimodal, closed_samples):
    """Sparse products run in float32 inside autocast; the rest in bfloat16."""
    MosaicVI.setup_mudata(trimodal, modalities=dict(zip(MODS, MODS)), batch_key="batch")
    model = MosaicVI(trimodal, n_latent=4, n_hidden=16, atac_closed_samples=closed_samples)
    model.train(max_epochs=2, batch_size=64, enable_progress_bar=False, precision="bf16-mixed")
    history = model.history
    # the ELBO plus the subset terms, each logged
    loss = sum(
        history[key].to_numpy(dtype=float).ravel()
        for key in history
        if key == "elbo_train" or (key.startswith("subset_") and key.endswith("_train"))
    )
    assert np.isfinite(loss).all() and loss[-1] < loss[0]
    assert np.isfinite(model.get_latent_representation()).all()


def test_second_train_call_trains_in_training_mode(trimodal):
    """A second ``train()`` (after getters left the module in eval mode) trains with dropout and
    the sampled ATAC likelihood, as the first one does."""
    from lightning.pytorch.callbacks import Callback

    class Mode(Callback):
        def __init__(self):
            self.seen = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen.append(pl_module.module.training)

    MosaicVI.setup_mudata(trimodal, modalities=dict(zip(MODS, MODS)), batch_key="batch")
    model = MosaicVI(trimodal, n_latent=3, n_hidden=16, atac_closed_samples=8)
    model.train(max_epochs=1, batch_size=64, enable_progress_bar=False)
    model.get_latent_representation()
    assert not model.module.training
    mode = Mode()
    model.train(max_epochs=1, batch_size=64, enable_progress_bar=False, callbacks=[mode])
    assert mode.seen and all(mode.seen)
