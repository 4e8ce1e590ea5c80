"""Issue 15: every bad or unusual input ends as a clear error or as documented behaviour.

Each test names the input of the issue's list it covers; ``docs/reliability.md`` has the table.
"""

import warnings

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from mosaicvi import MosaicVI
from mosaicvi.data import simulate_mosaic

ALL = {"rna": "rna", "atac": "atac", "protein": "protein"}


@pytest.fixture(scope="module")
def trained():
    """A small trained model and its MuData (tests that change data work on copies)."""
    mdata = simulate_mosaic(n_cells=140, n_genes=20, n_regions=30, n_proteins=6, seed=3)
    MosaicVI.setup_mudata(mdata, modalities=ALL, batch_key="batch")
    model = MosaicVI(mdata, n_latent=3, n_hidden=16)
    model.train(max_epochs=2, batch_size=64, enable_progress_bar=False)
    return model, mdata


def fresh():
    return simulate_mosaic(n_cells=140, n_genes=20, n_regions=30, n_proteins=6, seed=3)


def reordered(mdata: md.MuData, mod: str) -> md.MuData:
    """The same cells and counts with the features of ``mod`` in reverse order."""
    mods = {k: a.copy() for k, a in mdata.mod.items()}
    mods[mod] = mods[mod][:, ::-1].copy()
    out = md.MuData(mods)
    out.obs = mdata.obs.loc[out.obs_names].copy()
    return out


# ------------------------------------------------------------- silent wrong results
def test_genes_in_another_order_are_matched_by_name(trained, tmp_path):
    model, mdata = trained
    other = reordered(mdata, "rna")
    assert list(other["rna"].var_names) != list(mdata["rna"].var_names)
    np.testing.assert_allclose(
        model.get_latent_representation(adata=other),
        model.get_latent_representation(),
        rtol=1e-5,
        atol=1e-6,
    )
    expression = model.get_normalized_expression(adata=other)
    assert list(expression.columns) == list(mdata["rna"].var_names)  # the model's order
    np.testing.assert_allclose(expression.to_numpy(), model.get_normalized_expression(), 1e-5)
    # the same through load, and save again keeps the model's names
    model.save(tmp_path / "m")
    loaded = MosaicVI.load(tmp_path / "m", adata=reordered(mdata, "atac"))
    np.testing.assert_allclose(
        loaded.get_latent_representation(), model.get_latent_representation(), 1e-5, 1e-6
    )
    assert list(loaded.get_var_names()["atac"]) == list(mdata["atac"].var_names)


def test_proteins_in_another_order_dense(trained):
    model, mdata = trained
    other = reordered(mdata, "protein")
    other["protein"].X = other["protein"].X.toarray()
    np.testing.assert_allclose(
        model.get_latent_representation(adata=other),
        model.get_latent_representation(),
        rtol=1e-5,
        atol=1e-6,
    )


def test_other_genes_are_an_error(trained):
    model, mdata = trained
    mods = {k: a.copy() for k, a in mdata.mod.items()}
    mods["rna"].var_names = [f"other{j}" for j in range(mods["rna"].n_vars)]
    other = md.MuData(mods)
    other.obs = mdata.obs.loc[other.obs_names].copy()
    with pytest.raises(ValueError, match=r"features the model was set up with: 20 missing"):
        model.get_latent_representation(adata=other)


def test_counts_changed_in_place_after_training_are_caught(trained):
    model, mdata = trained
    rna = mdata["rna"]
    original = rna.X
    try:
        rna.X = original.copy()
        rna.X.data = np.log1p(rna.X.data / 7.0)  # a routine normalise + log1p
        with pytest.raises(ValueError, match="transformed in place after `setup_mudata`"):
            model.get_latent_representation()
        with pytest.raises(ValueError, match="non-integer"):
            model.train(max_epochs=1)
    finally:
        rna.X = original
    assert model.get_latent_representation().shape == (mdata.n_obs, 3)


def test_padded_looking_modality_warns():
    mdata = fresh()
    mods = {k: a.copy() for k, a in mdata.mod.items()}
    missing = mdata.obs_names.difference(mods["protein"].obs_names)
    pad = ad.AnnData(
        sparse.csr_matrix((len(missing), mods["protein"].n_vars), dtype=np.float32),
        obs=pd.DataFrame(index=missing),
        var=mods["protein"].var,
    )
    mods["protein"] = ad.concat([mods["protein"], pad])
    padded = md.MuData(mods)
    padded.obs = mdata.obs.loc[padded.obs_names].copy()
    with pytest.warns(UserWarning, match=r"presence_keys=\{'protein'"):
        MosaicVI.setup_mudata(padded, modalities=ALL, batch_key="batch")
    padded.obs["has_protein"] = padded.obs_names.isin(mdata["protein"].obs_names)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no warning with the presence column
        MosaicVI.setup_mudata(
            padded, modalities=ALL, batch_key="batch", presence_keys={"protein": "has_protein"}
        )


def test_unpadded_data_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        MosaicVI.setup_mudata(fresh(), modalities=ALL, batch_key="batch")


@pytest.mark.parametrize(
    "indices, error, match",
    [
        (np.ones(100, bool), ValueError, r"one value per cell \(140\)"),
        ([], ValueError, "selects no cell"),
        ([0, 140], IndexError, r"in \[0, 140\)"),
        ([-1], IndexError, r"in \[0, 140\)"),
        ([0.5], TypeError, "integer positions"),
    ],
)
def test_bad_indices(trained, indices, error, match):
    model, _ = trained
    with pytest.raises(error, match=match):
        model.get_latent_representation(indices=indices)


def test_max_epochs_zero_is_refused():
    mdata = fresh()
    MosaicVI.setup_mudata(mdata, modalities=ALL)
    model = MosaicVI(mdata, n_latent=3, n_hidden=16)
    with pytest.raises(ValueError, match="`max_epochs` must be at least 1"):
        model.train(max_epochs=0)
    with pytest.raises(RuntimeError, match="untrained model"):
        model.get_latent_representation()


def test_same_barcode_in_two_samples_is_not_paired_silently():
    rng = np.random.default_rng(0)
    rna = ad.AnnData(sparse.csr_matrix(rng.poisson(2, (20, 8)).astype(np.float32)))
    adt = ad.AnnData(sparse.csr_matrix(rng.poisson(5, (20, 4)).astype(np.float32)))
    rna.obs_names = [f"AAAC-{i}" for i in range(20)]
    adt.obs_names = [f"AAAC-{i}" for i in range(10, 30)]  # 10 barcodes shared by chance
    rna.obs["sample"], adt.obs["sample"] = "donor1", "donor2"
    adt.var_names = [f"p{j}" for j in range(4)]
    mdata = md.MuData({"rna": rna, "adt": adt})
    with pytest.raises(ValueError, match=r"different 'sample'.*Make barcodes unique"):
        MosaicVI.setup_mudata(mdata, modalities={"rna": "rna", "protein": "adt"})
    # prefixed with the sample, they are what they are: 20 + 20 unpaired cells
    rna.obs_names = "donor1_" + rna.obs_names
    adt.obs_names = "donor2_" + adt.obs_names
    mdata = md.MuData({"rna": rna, "adt": adt})
    MosaicVI.setup_mudata(mdata, modalities={"rna": "rna", "protein": "adt"})
    model = MosaicVI(mdata, n_latent=2, n_hidden=8)
    assert model.adata_manager.presence().sum(0).tolist() == [20, 20]


# ----------------------------------------------------------------- clear errors
def test_modalities_as_a_list():
    with pytest.raises(TypeError, match="`modalities` must be a dict"):
        MosaicVI.setup_mudata(fresh(), modalities=["rna", "protein"])


@pytest.mark.parametrize("arg", ["categorical_covariate_keys", "continuous_covariate_keys"])
def test_covariate_keys_as_a_string(arg):
    with pytest.raises(
        TypeError, match=rf"`{arg}` must be a list of column names.*\['cell_type'\]"
    ):
        MosaicVI.setup_mudata(fresh(), modalities=ALL, **{arg: "cell_type"})


def test_batch_key_not_a_string():
    with pytest.raises(TypeError, match="`batch_key` must be a column name"):
        MosaicVI.setup_mudata(fresh(), modalities=ALL, batch_key=["batch"])


def test_modality_replaced_without_update():
    mdata = fresh()
    mdata.mod["rna"] = mdata["rna"][:30].copy()
    with pytest.raises(ValueError, match=r"out of date.*mdata.update\(\)"):
        MosaicVI.setup_mudata(mdata, modalities=ALL)
    mdata.update()
    MosaicVI.setup_mudata(mdata, modalities=ALL)


@pytest.mark.parametrize(
    "n_samples, error", [(0, ValueError), (-1, ValueError), (2.5, TypeError), (True, TypeError)]
)
def test_bad_n_samples(trained, n_samples, error):
    model, _ = trained
    with pytest.raises(error, match="`n_samples`"):
        model.get_normalized_expression(n_samples=n_samples)
    with pytest.raises(error, match="`n_samples`"):
        model.posterior_predictive_sample(modality="rna", n_samples=n_samples)


def test_transform_batch_compared_as_strings():
    mdata = fresh()
    mdata.obs["plate"] = mdata.obs["batch"].cat.codes.astype(int)  # integer batch labels
    MosaicVI.setup_mudata(mdata, modalities=ALL, batch_key="plate")
    model = MosaicVI(mdata, n_latent=3, n_hidden=16)
    model.train(max_epochs=1, enable_progress_bar=False)
    np.testing.assert_array_equal(
        model.get_normalized_expression(transform_batch=1, return_numpy=True),
        model.get_normalized_expression(transform_batch="1", return_numpy=True),
    )
    with pytest.raises(ValueError, match=r"`transform_batch` must name batches.*\['0', '1'\]"):
        model.get_normalized_expression(transform_batch=7)


def test_anndata_instead_of_mudata(trained):
    model, mdata = trained
    with pytest.raises(TypeError, match="needs a MuData"):
        model.get_latent_representation(adata=mdata["rna"])


def test_cell_relabelled_to_an_unseen_batch(trained):
    model, mdata = trained
    before = mdata.obs["batch"].copy()
    try:
        batch = mdata.obs["batch"].cat.add_categories("batch9")
        batch.iloc[0] = "batch9"
        mdata.obs["batch"] = batch
        with pytest.raises(ValueError, match=r"categories the model was not set up with.*batch9"):
            model.get_latent_representation()
    finally:
        mdata.obs["batch"] = before


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"n_latent": 0}, ValueError, "`n_latent` must be at least 1"),
        ({"n_latent": -1}, ValueError, "`n_latent` must be at least 1"),
        ({"n_latent": 2.5}, TypeError, "`n_latent` must be an integer"),
        ({"n_hidden": [16, 0]}, ValueError, "`n_hidden` must be at least 1"),
        ({"n_layers": 0}, ValueError, "`n_layers` must be at least 1"),
        ({"dropout_rate": 1.0}, ValueError, "dropout_rate"),
        ({"atac_closed_samples": 0}, ValueError, "`atac_closed_samples` must be None or a"),
        ({"atac_closed_samples": "auto"}, ValueError, "`atac_closed_samples` must be None"),
        ({"atac_closed_samples": 10.0}, ValueError, "`atac_closed_samples` must be None or a"),
        ({"atac_closed_samples": True}, ValueError, "`atac_closed_samples` must be None or a"),
        ({"atac_closed_cells": 0}, ValueError, "`atac_closed_cells` must be 'auto'"),
        ({"atac_closed_cells": 1.5}, ValueError, "`atac_closed_cells` must be 'auto'"),
        ({"atac_closed_cells": "AUTO"}, ValueError, "`atac_closed_cells` must be 'auto'"),
        ({"atac_closed_cells": True}, ValueError, "`atac_closed_cells` must be 'auto'"),
        (
            {"atac_closed_cells": 0.5, "atac_closed_samples": 64},
            ValueError,
            "not both",
        ),
        (
            {"atac_likelihood": "poisson", "atac_closed_samples": 64},
            ValueError,
            "Bernoulli ATAC likelihood",
        ),
        (
            {"atac_likelihood": "poisson", "atac_closed_cells": 0.5},
            ValueError,
            "Bernoulli ATAC likelihood",
        ),
        ({"subset_terms": "some"}, ValueError, "`subset_terms` must be"),
    ],
)
def test_bad_model_sizes(kwargs, error, match):
    mdata = fresh()
    MosaicVI.setup_mudata(mdata, modalities=ALL)
    with pytest.raises(error, match=match):
        MosaicVI(mdata, **kwargs)


def test_modality_without_features():
    mdata = fresh()
    mdata.mod["protein"] = mdata["protein"][:, :0].copy()
    mdata.update()
    with pytest.raises(ValueError, match="has no features"):
        MosaicVI.setup_mudata(mdata, modalities=ALL)


def test_nullable_boolean_presence_column():
    mdata = fresh()
    has = mdata.obs_names.isin(mdata["protein"].obs_names)
    mdata.obs["has_protein"] = pd.array(has, dtype="boolean")
    MosaicVI.setup_mudata(mdata, modalities=ALL, presence_keys={"protein": "has_protein"})
    model = MosaicVI(mdata, n_latent=2, n_hidden=8)
    np.testing.assert_array_equal(model.adata_manager.presence()[:, 2], has)
    mdata.obs.loc[mdata.obs_names[0], "has_protein"] = pd.NA
    with pytest.raises(ValueError, match="missing value"):
        MosaicVI.setup_mudata(mdata, modalities=ALL, presence_keys={"protein": "has_protein"})


def test_boolean_atac_is_counts():
    mdata = fresh()
    mdata["atac"].X = (mdata["atac"].X > 0).astype(bool)
    MosaicVI.setup_mudata(mdata, modalities=ALL)
    model = MosaicVI(mdata, n_latent=3, n_hidden=16)
    model.train(max_epochs=2, enable_progress_bar=False)
    assert np.isfinite(model.history["elbo_train"].to_numpy(dtype=float)).all()
    assert np.isfinite(model.get_accessibility_estimates(return_numpy=True)).all()


def test_atac_options_without_atac_warn():
    import mosaicvi

    mdata = mosaicvi.data.load_pbmc_cite_mosaic()
    MosaicVI.setup_mudata(mdata, modalities={"rna": "rna", "protein": "protein"})
    with pytest.warns(UserWarning, match="no effect: no atac modality"):
        MosaicVI(mdata, n_latent=2, n_hidden=8, atac_closed_samples=64)


def test_a_failed_train_leaves_the_getters_on_the_exact_path(trained):
    model, _ = trained
    with pytest.raises(ValueError, match="chunk_size"):
        model.train(max_epochs=1, chunk_size=-1)
    assert not model.module.training
    with pytest.raises(ValueError, match="validation set"):
        model.train(max_epochs=1, early_stopping=True, train_size=1.0)
    assert not model.module.training


@pytest.mark.parametrize("chunk_size", ["64", float("nan"), [64], 64.0, 2.5, True])
def test_chunk_size_must_be_an_integer(trained, chunk_size):
    """A string, NaN, list or float (even a whole one) is refused, not converted or truncated;
    also when given through ``datasplitter_kwargs``."""
    model, _ = trained
    with pytest.raises(TypeError, match="`chunk_size` must be an integer"):
        model.train(max_epochs=1, chunk_size=chunk_size)
    with pytest.raises(TypeError, match="`chunk_size` must be an integer"):
        model.train(max_epochs=1, datasplitter_kwargs={"chunk_size": chunk_size})


def test_a_chunk_larger_than_the_data_warns():
    mdata = fresh()
    MosaicVI.setup_mudata(mdata, modalities=ALL)
    model = MosaicVI(mdata, n_latent=2, n_hidden=8)
    with pytest.warns(UserWarning, match="one chunk, so they are not shuffled"):
        model.train(max_epochs=1, chunk_size=mdata.n_obs, enable_progress_bar=False)


def test_early_stopping_monitors_the_objective_not_the_elbo_alone():
    """The history has the objective at the KL schedule's final weight: the joint and subset
    reconstruction terms plus that weight times their KL terms; early stopping runs on it (a
    missing monitor would make Lightning's callback fail)."""
    from mosaicvi.model import MAX_KL_WEIGHT

    mdata = fresh()
    MosaicVI.setup_mudata(mdata, modalities=ALL)
    model = MosaicVI(mdata, n_latent=2, n_hidden=8)
    model.train(max_epochs=2, early_stopping=True, enable_progress_bar=False)
    h = {k: v.to_numpy(dtype=float).ravel() for k, v in model.history.items()}
    subset_rec = sum(h[f"subset_reconstruction_loss_{m}_validation"] for m in ALL)
    expected = (
        h["reconstruction_loss_validation"]
        + subset_rec
        + MAX_KL_WEIGHT * (h["kl_local_validation"] + h["subset_kl_validation"])
    )
    assert np.isfinite(h["objective_validation"]).all()
    np.testing.assert_allclose(h["objective_validation"], expected, rtol=1e-4)


def test_validation_needing_options_without_validation_set_are_refused():
    mdata = fresh()
    MosaicVI.setup_mudata(mdata, modalities=ALL)
    model = MosaicVI(mdata, n_latent=2, n_hidden=8)
    with pytest.raises(ValueError, match="reduce_lr_on_plateau.*validation set"):
        model.train(max_epochs=1, train_size=1.0, plan_kwargs={"reduce_lr_on_plateau": True})
    with pytest.raises(TypeError, match="`plan_kwargs` must be a dict"):
        model.train(max_epochs=1, plan_kwargs="adam")
    # scvi-tools' default train_size (None) is the usual split, not an error
    model.train(max_epochs=1, early_stopping=True, train_size=None, enable_progress_bar=False)
    assert "objective_validation" in model.history
