"""Features unmeasured in some batches (panels that differ) and NaN entries."""

import logging
import warnings

import numpy as np
import pandas as pd
import pytest
import scvi
import torch

from mosaicvi import MosaicVI
from mosaicvi.data import simulate_mosaic
from mosaicvi.module import MosaicVAE

MODS = {"rna": "rna", "protein": "protein"}
HIDDEN = [f"protein{j}" for j in range(8)]  # not in batch0's panel


def cite(seed=0, n_cells=240):
    """RNA + protein with two batches; dense protein counts (float32)."""
    mdata = simulate_mosaic(n_cells=n_cells, seed=seed)
    mdata.mod.pop("atac")
    mdata.update()
    keep = mdata.obs_names[mdata.obsm["rna"].ravel() | mdata.obsm["protein"].ravel()]
    mdata = mdata[keep].copy()
    prot = mdata.mod["protein"]
    x = prot.X.toarray() if hasattr(prot.X, "toarray") else np.asarray(prot.X)
    prot.X = x.astype(np.float32)
    return mdata


def protein_batch(mdata):
    prot = mdata.mod["protein"]
    return mdata.obs.loc[prot.obs_names, "batch"].astype(str).to_numpy()


def hide(mdata, value=0.0):
    """batch0's cells lose the HIDDEN proteins (zeros as a concatenation gives, or NaN)."""
    prot = mdata.mod["protein"]
    rows = np.flatnonzero(protein_batch(mdata) == "batch0")
    cols = prot.var_names.get_indexer(HIDDEN)
    prot.X[np.ix_(rows, cols)] = value
    return rows, cols


def masks_frame(mdata):
    names = mdata.mod["protein"].var_names
    frame = pd.DataFrame(True, index=["batch0"], columns=names)
    frame.loc["batch0", HIDDEN] = False
    return {"protein": frame}


def train(mdata, epochs=3, **model_kwargs):
    scvi.settings.seed = 0
    model = MosaicVI(mdata, n_latent=4, n_hidden=16, **model_kwargs)
    model.train(max_epochs=epochs, batch_size=64, enable_progress_bar=False)
    return model


def test_heuristic_masks_zero_columns_with_a_warning_and_can_be_turned_off():
    mdata = cite()
    hide(mdata)
    with pytest.warns(UserWarning, match=r"Batch 'batch0': 8 of the 20 'protein' features"):
        MosaicVI.setup_mudata(mdata, modalities=MODS, batch_key="batch")
    model = MosaicVI(mdata, n_latent=4, n_hidden=16)
    mask = model.adata_manager.feature_masks()["protein"]
    names = list(mdata.mod["protein"].var_names)
    expected = ~np.isin(names, HIDDEN)
    np.testing.assert_array_equal(mask[0], expected)
    assert mask[1].all()
    assert "rna" not in model.adata_manager.feature_masks()

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        MosaicVI.setup_mudata(mdata, modalities=MODS, batch_key="batch", infer_feature_masks=False)
    model = MosaicVI(mdata, n_latent=4, n_hidden=16)
    assert model.adata_manager.feature_masks() == {}


def test_heuristic_leaves_rare_features_measured():
    """A feature that is merely rare (few expected counts) stays a measured zero."""
    mdata = cite()
    prot = mdata.mod["protein"]
    rows = np.flatnonzero(protein_batch(mdata) == "batch0")
    prot.X[:, 0] = 0
    prot.X[np.flatnonzero(protein_batch(mdata) == "batch1")[:3], 0] = 1  # ~3 counts elsewhere
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        MosaicVI.setup_mudata(mdata, modalities=MODS, batch_key="batch")
    assert len(rows) >= 10


def test_masked_counts_change_neither_the_loss_nor_the_latent():
    """The likelihood and the expert ignore a masked entry's value, whatever it is."""
    torch.manual_seed(0)
    mask = np.ones((2, 6), dtype=bool)
    mask[0, :3] = False
    module = MosaicVAE(
        {"rna": 10, "protein": 6},
        n_batch=2,
        n_latent=3,
        n_hidden=8,
        feature_masks={"protein": mask},
    )
    module.eval()
    tensors = {
        "X_rna": torch.poisson(torch.full((8, 10), 3.0)),
        "X_protein": torch.poisson(torch.full((8, 6), 20.0)),
        "presence": torch.ones(8, 2),
        "batch": torch.tensor([[0], [1]] * 4),
    }
    changed = dict(tensors)
    x = tensors["X_protein"].clone()
    x[0::2, :3] = torch.tensor([0.0, 500.0, 7.0])  # batch 0's unmeasured proteins
    changed["X_protein"] = x

    def run(t):
        torch.manual_seed(1)
        inf, gen, out = module(t)
        return inf["qz"].loc, out.loss, out.reconstruction_loss["protein"]

    loc_a, loss_a, rec_a = run(tensors)
    loc_b, loss_b, rec_b = run(changed)
    torch.testing.assert_close(loc_a, loc_b, rtol=0, atol=0)
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=0)
    torch.testing.assert_close(rec_a, rec_b, rtol=0, atol=0)
    # and a measured entry does change it
    x2 = tensors["X_protein"].clone()
    x2[0, 4] += 50
    _, loss_c, _ = run({**tensors, "X_protein": x2})
    assert loss_c != loss_a


def test_batch_mask_agrees_with_the_features_removed_as_nan():
    """Masking batch0's panel equals training on data whose removed entries are NaN."""
    masked = cite()
    hide(masked)
    MosaicVI.setup_mudata(
        masked, modalities=MODS, batch_key="batch", feature_masks=masks_frame(masked)
    )
    a = train(masked, protein_likelihood="nb")

    removed = cite()
    hide(removed, value=np.nan)
    MosaicVI.setup_mudata(removed, modalities=MODS, batch_key="batch", infer_feature_masks=False)
    b = train(removed, protein_likelihood="nb")
    assert b.module.heads["protein"].nan_entries and b.adata_manager.feature_masks() == {}
    np.testing.assert_allclose(
        a.history["elbo_train"].to_numpy(dtype=float),
        b.history["elbo_train"].to_numpy(dtype=float),
        rtol=1e-5,
    )
    np.testing.assert_allclose(
        a.get_latent_representation(give_mean=True),
        b.get_latent_representation(give_mean=True),
        rtol=1e-4,
        atol=1e-5,
    )
    # imputation covers the unmeasured proteins, finite
    imputed = b.get_protein_expression()
    assert np.isfinite(np.asarray(imputed)).all()


def test_latent_ignores_masked_counts_after_training():
    mdata = cite()
    hide(mdata)
    MosaicVI.setup_mudata(
        mdata, modalities=MODS, batch_key="batch", feature_masks=masks_frame(mdata)
    )
    model = train(mdata)
    z = model.get_latent_representation(give_mean=True)
    rows, cols = hide(mdata, value=30.0)  # counts appear where batch0 measured nothing
    z2 = model.get_latent_representation(give_mean=True)
    np.testing.assert_allclose(z, z2, rtol=0, atol=0)
    samples = model.posterior_predictive_sample(modality="protein", n_samples=1)
    assert samples.shape[1] == 20
    # batch0's cells: its unmeasured proteins decoded under batch1 (the batch that measured
    # them), its measured ones under its own batch
    cells = np.flatnonzero(mdata.obs["batch"].astype(str).to_numpy() == "batch0")
    default = model.get_protein_expression(indices=cells)
    under1 = model.get_protein_expression(indices=cells, transform_batch="batch1")
    under0 = model.get_protein_expression(indices=cells, transform_batch="batch0")
    measured = [c for c in default.columns if c not in HIDDEN]
    np.testing.assert_allclose(default[HIDDEN], under1[HIDDEN], rtol=1e-5)
    np.testing.assert_allclose(default[measured], under0[measured], rtol=1e-5)


def test_feature_masks_bad_inputs():
    mdata = cite()
    with pytest.raises(ValueError, match="not found in"):
        MosaicVI.setup_mudata(
            mdata,
            modalities=MODS,
            batch_key="batch",
            feature_masks={"protein": {"nope": ["protein0"]}},
        )
    with pytest.raises(ValueError, match="does not have"):
        MosaicVI.setup_mudata(
            mdata,
            modalities=MODS,
            batch_key="batch",
            feature_masks={"protein": {"batch0": ["CD3"]}},
        )
    frame = masks_frame(mdata)["protein"].astype(int)
    with pytest.raises(TypeError, match="booleans"):
        MosaicVI.setup_mudata(
            mdata, modalities=MODS, batch_key="batch", feature_masks={"protein": frame}
        )
    with pytest.raises(ValueError, match="not in `modalities`"):
        MosaicVI.setup_mudata(
            mdata, modalities=MODS, batch_key="batch", feature_masks={"atac": {"batch0": []}}
        )
    with pytest.raises(TypeError, match="infer_feature_masks"):
        MosaicVI.setup_mudata(mdata, modalities=MODS, batch_key="batch", infer_feature_masks="no")


def test_raw_statistics_use_measured_entries_only():
    mdata = cite()
    hide(mdata)
    MosaicVI.setup_mudata(
        mdata, modalities=MODS, batch_key="batch", feature_masks=masks_frame(mdata)
    )
    model = train(mdata, epochs=1)
    manager = model.adata_manager
    everyone = np.ones(mdata.n_obs, dtype=bool)
    stats = model._measured_stats(manager, "protein", everyone, everyone)
    prot = mdata.mod["protein"]
    batch = protein_batch(mdata)
    j = list(prot.var_names).index(HIDDEN[0])
    measured = batch == "batch1"
    assert stats["n_measured1"][j] == measured.sum()
    np.testing.assert_allclose(stats["raw_mean1"][j], prot.X[measured, j].mean(), rtol=1e-6)
    k = list(prot.var_names).index("protein15")
    assert stats["n_measured1"][k] == prot.n_obs


def test_query_with_half_the_panel_is_masked(caplog):
    ref = cite(seed=0)
    MosaicVI.setup_mudata(ref, modalities=MODS, batch_key="batch")
    reference = train(ref, epochs=2)
    query = cite(seed=1)
    query.obs["batch"] = "query"
    query.mod["protein"] = query.mod["protein"][:, 10:].copy()
    query.update()
    query.obs["batch"] = "query"
    with caplog.at_level(logging.WARNING):
        prepared = MosaicVI.prepare_query_mudata(query, reference)
    assert "10 masked" in caplog.text
    model = MosaicVI.load_query_data(prepared, reference)
    mask = model.adata_manager.feature_masks()["protein"]
    categories = model.adata_manager.batch_categories()
    row = mask[categories.index("query")]
    assert not row[:10].any() and row[10:].all()
    assert mask[[categories.index(b) for b in ("batch0", "batch1")]].all()
    model.train(max_epochs=2, batch_size=64, enable_progress_bar=False)
    imputed = np.asarray(model.get_protein_expression())
    assert imputed.shape[1] == 20 and np.isfinite(imputed).all()


def test_rna_heuristic_masks_a_smaller_panel_but_not_a_few_missing_genes():
    """A few genes with no count in a batch are biology; half of the panel is a panel."""
    mdata = cite()
    rna = mdata.mod["rna"]
    x = rna.X.toarray() if hasattr(rna.X, "toarray") else np.array(rna.X)
    x = x.astype(np.float32)
    batch = mdata.obs.loc[rna.obs_names, "batch"].astype(str).to_numpy()
    rows = np.flatnonzero(batch == "batch0")
    few = x.copy()
    few[np.ix_(rows, np.arange(3))] = 0
    rna.X = few
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        MosaicVI.setup_mudata(mdata, modalities=MODS, batch_key="batch")
    half = x.copy()
    half[np.ix_(rows, np.arange(0, rna.n_vars, 2))] = 0
    rna.X = half
    with pytest.warns(UserWarning, match=r"Batch 'batch0': \d+ of the \d+ 'rna' features"):
        MosaicVI.setup_mudata(mdata, modalities=MODS, batch_key="batch")


def test_masks_that_leave_nothing_or_never_measure_a_feature_are_flagged():
    mdata = cite()
    names = list(mdata.mod["protein"].var_names)
    with pytest.raises(ValueError, match="Every 'protein' feature is marked unmeasured"):
        MosaicVI.setup_mudata(
            mdata, modalities=MODS, batch_key="batch", feature_masks={"protein": {"batch0": names}}
        )
    with pytest.warns(UserWarning, match="unmeasured in every batch"):
        MosaicVI.setup_mudata(
            mdata,
            modalities=MODS,
            batch_key="batch",
            feature_masks={"protein": {"batch0": names[:1], "batch1": names[:1]}},
        )
    with pytest.raises(TypeError, match="must be a list of the feature names"):
        MosaicVI.setup_mudata(
            mdata, modalities=MODS, batch_key="batch", feature_masks={"protein": {"batch0": "x"}}
        )
    with pytest.raises(ValueError, match="without `batch_key` the one batch is named '0'"):
        MosaicVI.setup_mudata(
            mdata, modalities=MODS, feature_masks={"protein": {"batch0": names[:1]}}
        )


def test_nan_in_data_given_to_a_getter_is_read_as_unmeasured():
    """A model trained without NaN reads NaN in new data as unmeasured, not as a number."""
    mdata = cite()
    MosaicVI.setup_mudata(mdata, modalities=MODS, batch_key="batch")
    model = train(mdata, epochs=1)
    assert not model.module.heads["protein"].nan_entries
    other = cite()
    z = model.get_latent_representation(adata=other)
    x = other.mod["protein"].X
    x[:5, 0] = np.nan
    z_nan = model.get_latent_representation(adata=other)
    assert np.isfinite(z_nan).all()
    assert model.module.heads["protein"].nan_entries
    unchanged = ~np.isin(
        np.arange(other.n_obs), other.obs_names.get_indexer(other.mod["protein"].obs_names[:5])
    )
    np.testing.assert_allclose(z_nan[unchanged], z[unchanged], rtol=1e-5, atol=1e-6)


def test_a_query_with_zero_columns_not_marked_warns():
    ref = cite(seed=0)
    MosaicVI.setup_mudata(ref, modalities=MODS, batch_key="batch")
    reference = train(ref, epochs=1)
    query = cite(seed=1)
    query.obs["batch"] = "query"
    query.mod["protein"].X[:, 10:] = 0
    with pytest.warns(UserWarning, match="Query batch 'query': 10 'protein' feature"):
        MosaicVI.load_query_data(query, reference)


def test_a_query_reusing_a_reference_batch_name_with_a_smaller_panel_is_refused():
    ref = cite(seed=0)
    MosaicVI.setup_mudata(ref, modalities=MODS, batch_key="batch")
    reference = train(ref, epochs=1)
    query = cite(seed=1)  # batches "batch0"/"batch1": the reference's names
    query.mod["protein"] = query.mod["protein"][:, 10:].copy()
    query.update()
    prepared = MosaicVI.prepare_query_mudata(query, reference)
    with pytest.raises(ValueError, match="batch names of their own"):
        reference.get_latent_representation(adata=prepared)


def test_a_registry_from_before_feature_masks_gets_no_masks():
    """Data registered from a model saved before feature masks existed get none invented."""
    from copy import deepcopy

    mdata = cite()
    MosaicVI.setup_mudata(mdata, modalities=MODS, batch_key="batch")
    model = train(mdata, epochs=1)
    registry = deepcopy(model.registry_)
    del registry["field_registries"]["feature_masks"]
    args = {
        k: v
        for k, v in registry["setup_args"].items()
        if k not in ("feature_masks", "infer_feature_masks")
    }
    data = cite()
    hide(data)  # zero columns the heuristic would mask
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        MosaicVI.setup_mudata(data, source_registry=registry, **args)
    manager = MosaicVI._get_most_recent_anndata_manager(data, required=True)
    assert manager.feature_masks() == {}
