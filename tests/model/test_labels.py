"""MosaicANVI: labels at set-up, the classification term, predictions, calibration, files, queries."""

import math

import mudata as md
import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from scipy.special import softmax

from mosaicvi import MosaicANVI, MosaicVI
from mosaicvi.data import simulate_mosaic
from mosaicvi.metrics import expected_calibration_error
from mosaicvi.model._labels import conformal_threshold, fit_temperature
from mosaicvi.module import MosaicVAE

ALL = {"rna": "rna", "atac": "atac", "protein": "protein"}
TRAIN = {"batch_size": 64, "enable_progress_bar": False}


def _labelled(seed=0, n_cells=420, share=0.6):
    """Simulated trimodal mosaic with ``label`` = cell type for a share of the cells."""
    mdata = simulate_mosaic(n_cells=n_cells, n_genes=40, n_regions=60, n_proteins=10, seed=seed)
    rng = np.random.default_rng(seed)
    types = mdata.obs["cell_type"].astype(str).to_numpy()
    mdata.obs["label"] = np.where(rng.random(mdata.n_obs) < share, types, "Unknown")
    return mdata


def _setup(mdata, **kwargs):
    MosaicANVI.setup_mudata(
        mdata,
        modalities=ALL,
        labels_key="label",
        unlabeled_category="Unknown",
        batch_key="batch",
        **kwargs,
    )


@pytest.fixture(scope="module")
def trained():
    scvi.settings.seed = 0
    mdata = _labelled()
    _setup(mdata)
    model = MosaicANVI(mdata, n_latent=5, n_hidden=32)
    model.train(max_epochs=40, **TRAIN)
    return model, mdata


# ------------------------------------------------------------------------------- set-up
def test_setup_errors_name_the_fix():
    mdata = _labelled()
    mdata.obs["none"] = "Unknown"
    with pytest.raises(ValueError, match="No cell is labeled"):
        MosaicANVI.setup_mudata(
            mdata, modalities=ALL, labels_key="none", unlabeled_category="Unknown"
        )
    mdata.obs["one"] = np.where(np.arange(mdata.n_obs) < 5, "T", "Unknown")
    mdata.obs["nan"] = mdata.obs["label"].where(np.arange(mdata.n_obs) > 3)
    with pytest.raises(ValueError, match="fillna"):
        MosaicANVI.setup_mudata(mdata, modalities=ALL, labels_key="nan", unlabeled_category="U")
    mdata.obs["placeholder"] = mdata.obs["label"]
    with pytest.raises(ValueError, match="would be trained as a cell type"):
        MosaicANVI.setup_mudata(
            mdata, modalities=ALL, labels_key="placeholder", unlabeled_category="Unlabeled"
        )
    mdata.obs["ints"] = np.where(mdata.obs["label"] == "Unknown", -1, np.arange(mdata.n_obs) % 3)
    mdata.obs["floats"] = mdata.obs["ints"].astype(float)
    with pytest.raises(ValueError, match="unlabeled_category='-1.0'"):
        MosaicANVI.setup_mudata(mdata, modalities=ALL, labels_key="floats", unlabeled_category=-1)
    with pytest.raises(ValueError, match="a classifier needs at least two"):
        MosaicANVI.setup_mudata(
            mdata, modalities=ALL, labels_key="one", unlabeled_category="Unknown"
        )
    with pytest.raises(ValueError, match="unlabeled_category='Unknown'"):
        MosaicANVI.setup_mudata(
            mdata, modalities=ALL, labels_key="label", unlabeled_category="unknown"
        )
    mdata.obs["gap"] = mdata.obs["label"].where(np.arange(mdata.n_obs) > 3)
    with pytest.raises(ValueError, match="missing value"):
        MosaicANVI.setup_mudata(
            mdata, modalities=ALL, labels_key="gap", unlabeled_category="Unknown"
        )
    with pytest.raises(KeyError, match="not in mdata.obs"):
        MosaicANVI.setup_mudata(mdata, modalities=ALL, labels_key="nope", unlabeled_category="U")
    with pytest.raises(TypeError, match="labels_key"):
        MosaicANVI.setup_mudata(
            mdata, modalities=ALL, labels_key=["label"], unlabeled_category="U"
        )
    with pytest.raises(TypeError, match="unlabeled_category"):
        MosaicANVI.setup_mudata(mdata, modalities=ALL, labels_key="label", unlabeled_category=None)
    MosaicVI.setup_mudata(mdata, modalities=ALL)
    with pytest.raises(ValueError, match="not set up with labels"):
        MosaicANVI(mdata)


def test_every_cell_labelled_warns_and_labels_are_not_written():
    mdata = _labelled()
    before = mdata.obs.copy()
    mdata.obs["full"] = mdata.obs["cell_type"].astype(str)
    with pytest.warns(UserWarning, match="Every cell is labeled"):
        MosaicANVI.setup_mudata(mdata, modalities=ALL, labels_key="full", unlabeled_category="?")
    pd.testing.assert_frame_equal(mdata.obs.drop(columns="full"), before)
    model = MosaicANVI(mdata, n_latent=3, n_hidden=16)
    assert model.label_categories == sorted(set(mdata.obs["full"]))


# ------------------------------------------------------------------- classification term
def test_classification_term_is_the_weighted_cross_entropy_of_labelled_cells():
    scvi.settings.seed = 0
    mdata = _labelled(n_cells=140)
    _setup(mdata)
    model = MosaicANVI(mdata, n_latent=4, n_hidden=16, classification_ratio=3.0)
    module = model.module.eval()
    tensors = next(iter(model._make_data_loader(adata=mdata, batch_size=140)))
    inf, gen, out = module(tensors)
    plain = MosaicVAE.loss(module, tensors, inf, gen)
    labels = tensors["labels"].reshape(-1).long()
    labelled = labels < module.n_labels
    comp = inf["components"]
    ce = []
    for c in range(comp["weights"].shape[0]):
        w = comp["weights"][c, labelled]
        logp = torch.log_softmax(module.classify(comp["loc"][c, labelled]), -1)
        ce.append(-w * logp[torch.arange(int(labelled.sum())), labels[labelled]])
    weights = comp["weights"][:, labelled].sum(0)
    expected = (torch.stack(ce).sum(0) / weights).mean()
    torch.testing.assert_close(out.extra_metrics["classification_loss"], expected)
    torch.testing.assert_close(out.loss, plain.loss + 3.0 * expected)
    # single-modality cells are classified from their one posterior; paired cells also from
    # each modality's own (the subset terms' components)
    n_used = (comp["weights"][:, labelled] > 0).sum(0)
    present = tensors["presence"][labelled].sum(1)
    assert torch.equal(n_used, torch.where(present > 1, present + 1, 1).to(n_used.dtype))
    # the ELBO monitored by early stopping has no label in it
    torch.testing.assert_close(out.extra_metrics["objective"], plain.extra_metrics["objective"])


def test_unlabelled_cells_leave_the_loss_that_of_mosaicvi():
    scvi.settings.seed = 0
    mdata = _labelled(n_cells=140)
    mdata.obs["label"] = np.where(np.arange(mdata.n_obs) < 10, mdata.obs["label"], "Unknown")
    mdata.obs.loc[mdata.obs_names[:10], "label"] = ["a", "b"] * 5
    _setup(mdata)
    model = MosaicANVI(mdata, n_latent=4, n_hidden=16)
    module = model.module.eval()
    loader = model._make_data_loader(adata=mdata, indices=np.arange(10, 140), batch_size=200)
    tensors = next(iter(loader))
    inf, gen, out = module(tensors)
    plain = MosaicVAE.loss(module, tensors, inf, gen)
    assert float(out.extra_metrics["classification_loss"]) == 0.0
    assert torch.equal(out.loss, plain.loss)


# ----------------------------------------------------------------------------- predict
def test_predict_labels_probabilities_and_given(trained):
    model, mdata = trained
    truth = mdata.obs["cell_type"].astype(str).to_numpy()
    pred = model.predict()
    assert pred.shape == (mdata.n_obs,) and set(pred) <= set(model.label_categories)
    assert (pred == truth).mean() > 0.9
    soft = model.predict(soft=True)
    assert list(soft.columns) == model.label_categories and list(soft.index) == list(
        mdata.obs_names
    )
    np.testing.assert_allclose(soft.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(
        soft.to_numpy().argmax(1), pd.Index(model.label_categories).get_indexer(pred)
    )
    has_rna = np.flatnonzero(mdata.obsm["rna"])
    from_rna = model.predict(indices=has_rna, given=["rna"])
    assert (from_rna == truth[has_rna]).mean() > 0.8
    # from RNA alone = what the classifier says at the RNA-only posterior mean
    z = model.get_latent_representation(indices=has_rna, given=["rna"])
    with torch.no_grad():
        logits = model.module.classify(torch.as_tensor(z)).numpy()
    np.testing.assert_array_equal(np.asarray(model.label_categories)[logits.argmax(1)], from_rna)
    with pytest.raises(ValueError, match="none of the modalities"):
        model.predict(given=["rna"])


def test_calibration_is_per_combination_of_modalities(trained):
    model, _ = trained
    # trimodal cells in every subset: every non-empty combination is calibrated
    assert set(model.label_calibration_) == {
        "atac",
        "protein",
        "rna",
        "atac+protein",
        "atac+rna",
        "protein+rna",
        "atac+protein+rna",
    }
    for entry in model.label_calibration_.values():
        assert entry["n_cells"] == len(entry["scores"]) > 0 and entry["temperature"] > 0
    table = model.calibrate()
    assert list(table.columns) == ["n_cells", "temperature", "ece", "ece_calibrated"]
    assert (table["ece_calibrated"] <= table["ece"] + 0.05).all()


def test_calibrated_probabilities_use_the_temperature_of_the_prediction(trained):
    model, mdata = trained
    cells = np.flatnonzero(mdata.obsm["rna"] & mdata.obsm["protein"])
    raw = model.predict(indices=cells, given=["rna"], soft=True, calibrated=False)
    scaled = model.predict(indices=cells, given=["rna"], soft=True)
    t = model.label_calibration_["rna"]["temperature"]
    expected = softmax(np.log(raw.to_numpy()) / t, axis=1)
    np.testing.assert_allclose(scaled.to_numpy(), expected, rtol=1e-5, atol=1e-7)


def test_prediction_sets_follow_the_conformal_threshold(trained):
    model, mdata = trained
    sets = model.predict_sets(level=0.8)
    raw = model.predict(soft=True, calibrated=False).to_numpy()
    keys = np.array(
        [
            "+".join(sorted(m for m in ("rna", "atac", "protein") if mdata.obsm[m][i]))
            for i in range(mdata.n_obs)
        ]
    )
    for key in np.unique(keys):
        q = conformal_threshold(np.asarray(model.label_calibration_[key]["scores"]), 0.8)
        np.testing.assert_array_equal(sets.to_numpy()[keys == key], 1 - raw[keys == key] <= q)
    with pytest.warns(UserWarning, match="too few for level 0.99"):
        bigger = model.predict_sets(level=0.99).to_numpy()
    assert (bigger >= sets.to_numpy()).all()
    for level in (0, 1, 1.5, "0.9", True):
        with pytest.raises(ValueError, match="level"):
            model.predict_sets(level=level)


def test_conformal_sets_cover_exchangeable_cells_at_the_level():
    """Split conformal on synthetic, miscalibrated classifiers: coverage ~ level, not accuracy."""
    rng = np.random.default_rng(0)
    n, k, level = 20_000, 6, 0.9
    labels = rng.integers(k, size=2 * n)
    x = rng.normal(size=(2 * n, k)) + 2.5 * np.eye(k)[labels]
    # the Bayes posterior's logits are 2.5 x: these are over-confident by a factor of 2
    logits = 5.0 * x
    probs = softmax(logits, axis=1)
    scores = 1 - probs[np.arange(n), labels[:n]]
    q = conformal_threshold(scores, level)
    test = 1 - probs[n:] <= q
    coverage = test[np.arange(n), labels[n:]].mean()
    assert abs(coverage - level) < 0.01
    # temperature scaling recovers the over-confidence and lowers the ECE
    t = fit_temperature(logits[:n], labels[:n])
    assert 1.9 < t < 2.1
    before = expected_calibration_error(probs[n:], labels[n:])
    after = expected_calibration_error(softmax(logits[n:] / t, axis=1), labels[n:])
    assert after < 0.02 < before
    assert conformal_threshold(np.arange(5.0), 0.9) == math.inf


def test_calibrate_with_given_labels_and_errors(trained):
    model, mdata = trained
    saved = dict(model.label_calibration_)
    try:
        unlabelled = np.flatnonzero(mdata.obs["label"] == "Unknown")
        truth = mdata.obs["cell_type"].astype(str).to_numpy()[unlabelled]
        table = model.calibrate(indices=unlabelled, labels=truth)
        assert table["n_cells"].max() <= len(unlabelled)
        with pytest.raises(ValueError, match="one label per cell"):
            model.calibrate(indices=unlabelled, labels=truth[:-1])
        with pytest.raises(ValueError, match="does not know"):
            model.calibrate(indices=unlabelled, labels=np.full(len(unlabelled), "zzz"))
        with pytest.raises(ValueError, match="None of the cells"):
            model.calibrate(indices=unlabelled)
        model.label_calibration_ = {"rna": saved["rna"]}
        with pytest.raises(ValueError, match="No calibration for predictions from"):
            model.predict_sets()
        with pytest.warns(UserWarning, match="uncalibrated"):
            model.predict(soft=True)
    finally:
        model.label_calibration_ = saved


def test_no_held_out_labels_warns_and_sets_need_calibration():
    scvi.settings.seed = 0
    mdata = _labelled(n_cells=140)
    _setup(mdata)
    model = MosaicANVI(mdata, n_latent=3, n_hidden=16)
    with pytest.warns(UserWarning, match="not calibrated"):
        model.train(max_epochs=2, train_size=1.0, **TRAIN)
    assert model.label_calibration_ == {}
    with pytest.raises(ValueError, match="No calibration"):
        model.predict_sets()
    with pytest.raises(ValueError, match="No held-out labeled cells"):
        model.calibrate()


# ----------------------------------------------------------------- from MosaicVI, files
def test_from_mosaicvi_model_starts_from_its_weights(trained_trimodal):
    vi, mdata = trained_trimodal
    mdata = mdata.copy()
    mdata.obs["label"] = np.where(
        np.arange(mdata.n_obs) % 2 == 0, mdata.obs["cell_type"].astype(str), "Unknown"
    )
    model = MosaicANVI.from_mosaicvi_model(vi, "Unknown", "label", adata=mdata)
    state, vi_state = model.module.state_dict(), vi.module.state_dict()
    assert set(state) - set(vi_state) == {k for k in state if k.startswith("classifier.")}
    for key, value in vi_state.items():
        assert torch.equal(state[key], value), key
    model.train(max_epochs=3, **TRAIN)
    assert model.history["kl_weight"].iloc[0, 0] == model.history["kl_weight"].iloc[-1, 0]
    assert model.was_pretrained
    with pytest.raises(TypeError, match="Unknown argument"):
        MosaicANVI.from_mosaicvi_model(vi, "Unknown", "label", adata=mdata, foo=1)
    untrained = MosaicVI(vi.adata, n_latent=5, n_hidden=32)
    with pytest.raises(RuntimeError, match="not trained"):
        MosaicANVI.from_mosaicvi_model(untrained, "Unknown", "label", adata=mdata)
    with pytest.raises(ValueError, match="come from the MosaicVI model"):
        MosaicANVI.from_mosaicvi_model(vi, "Unknown", "label", adata=mdata, n_latent=7)
    with pytest.raises(TypeError, match="must be a MosaicVI model"):
        MosaicANVI.from_mosaicvi_model(model, "Unknown", "label")
    other = mdata.copy()
    other.obs["batch"] = other.obs["batch"].astype(str) + "x"
    with pytest.raises(ValueError, match="must have the MosaicVI model.s batches"):
        MosaicANVI.from_mosaicvi_model(vi, "Unknown", "label", adata=other)


def test_save_load_keeps_predictions_and_calibration(trained, tmp_path):
    model, mdata = trained
    model.save(tmp_path / "m", save_anndata=True)
    loaded = MosaicANVI.load(tmp_path / "m")
    assert loaded.label_calibration_ == model.label_calibration_
    pd.testing.assert_frame_equal(loaded.predict(soft=True), model.predict(soft=True))
    pd.testing.assert_frame_equal(loaded.predict_sets(), model.predict_sets())
    with pytest.raises(ValueError, match="MosaicANVI model, not MosaicVI"):
        MosaicVI.load(tmp_path / "m")


def test_new_data_with_unknown_labels_is_refused(trained):
    model, mdata = trained
    other = mdata.copy()
    other.obs["label"] = other.obs["label"].astype(str)
    other.obs.iloc[0, other.obs.columns.get_loc("label")] = "a new type"
    with pytest.raises(ValueError, match="labels the model does not know"):
        model.predict(adata=other)
    # without the column every cell is unlabeled: predictions still work
    plain = mdata.copy()
    del plain.obs["label"]
    np.testing.assert_array_equal(model.predict(adata=plain), model.predict())


def test_query_cells_are_predicted_with_the_reference_classifier_and_calibration(trained):
    model, mdata = trained
    first = mdata.obs["batch"].astype(str).iloc[0]
    query = mdata[mdata.obs["batch"].astype(str) == first].copy()
    query = md.MuData({k: a.copy() for k, a in query.mod.items()})
    query.obs = mdata.obs.loc[query.obs_names].copy()
    query.obs["batch"] = "new"
    del query.obs["label"]
    query = MosaicANVI.prepare_query_mudata(query, model)
    q = MosaicANVI.load_query_data(query, model)
    classifier = {k: v.clone() for k, v in q.module.classifier.state_dict().items()}
    q.train(max_epochs=3, **TRAIN)
    for key, value in q.module.classifier.state_dict().items():
        assert torch.equal(value, classifier[key])
    assert q.label_calibration_ == model.label_calibration_
    truth = query.obs["cell_type"].astype(str).to_numpy()
    assert (q.predict() == truth).mean() > 0.8
    assert q.predict_sets().shape == (query.n_obs, len(model.label_categories))


def test_calibration_batches_hold_their_labels_out_of_training_and_calibrate():
    scvi.settings.seed = 0
    mdata = _labelled(n_cells=210)
    _setup(mdata)
    model = MosaicANVI(mdata, n_latent=3, n_hidden=16)
    held = str(mdata.obs["batch"].astype(str).iloc[0])
    # the held-out batch's labels leave the classification term exactly
    module = model.module.eval()
    tensors = next(iter(model._make_data_loader(adata=mdata, batch_size=210)))
    in_batch = tensors["batch"].reshape(-1) == model.adata_manager.batch_categories().index(held)
    relabelled = dict(tensors)
    relabelled["labels"] = torch.where(
        in_batch[:, None], torch.full_like(tensors["labels"], module.n_labels), tensors["labels"]
    )
    inf, gen, _ = module(relabelled)
    expected = module.loss(relabelled, inf, gen).extra_metrics["classification_loss"]
    module.held_out_batches[model.adata_manager.batch_categories().index(held)] = True
    module.holds_out_batches = True
    got = module.loss(tensors, inf, gen).extra_metrics["classification_loss"]
    module.held_out_batches.zero_()
    module.holds_out_batches = False
    torch.testing.assert_close(got, expected)
    model.train(max_epochs=2, calibration_batches=np.array([held]), **TRAIN)
    assert not model.module.held_out_batches.any() and not model.module.holds_out_batches
    labelled = (mdata.obs["batch"].astype(str) == held) & (mdata.obs["label"] != "Unknown")
    n_rna = int((labelled.to_numpy() & np.asarray(mdata.obsm["rna"]).reshape(-1)).sum())
    assert model.label_calibration_["rna"]["n_cells"] == n_rna
    for bad, error in (
        ("b", TypeError),
        ([], TypeError),
        (["nope"], ValueError),
        (model.adata_manager.batch_categories(), ValueError),
    ):
        with pytest.raises(error, match="calibration_batches"):
            model.train(max_epochs=1, calibration_batches=bad, **TRAIN)


def test_training_again_never_calibrates_on_labels_it_trained_on():
    scvi.settings.seed = 0
    mdata = _labelled(n_cells=280)
    _setup(mdata)
    model = MosaicANVI(mdata, n_latent=3, n_hidden=16)
    model.train(max_epochs=2, **TRAIN)
    first = set(model._trained_label_cells)
    assert first and not first & set(model._held_out_cells)
    scvi.settings.seed = 1  # another split: some validation cells trained before
    with pytest.warns(UserWarning, match="in an earlier training"):
        model.train(max_epochs=2, **TRAIN)
    assert not set(model._held_out_cells) & set(model._trained_label_cells)
    assert first <= set(model._trained_label_cells)
    trained = model.adata.obs_names.get_indexer(list(first)[:20])
    with pytest.warns(UserWarning, match="trained the classifier with their labels"):
        model.calibrate(indices=trained)


def test_labels_gone_after_setup_and_unsupported_options_are_refused():
    scvi.settings.seed = 0
    mdata = _labelled(n_cells=140)
    _setup(mdata)
    model = MosaicANVI(mdata, n_latent=3, n_hidden=16)
    mdata.obs["label"] = "Unknown"
    with pytest.raises(ValueError, match="No cell of the data is labeled now"):
        model.train(max_epochs=1, **TRAIN)
    with pytest.raises(ValueError, match="fusion"):
        MosaicANVI(mdata, fusion="moe")


def test_a_frozen_query_does_not_train_on_labels_its_data_carry(trained):
    model, mdata = trained
    first = mdata.obs["batch"].astype(str).iloc[0]
    query = mdata[mdata.obs["batch"].astype(str) == first].copy()
    query = md.MuData({k: a.copy() for k, a in query.mod.items()})
    query.obs = mdata.obs.loc[query.obs_names].copy()
    query.obs["batch"] = "new"
    query.obs["label"] = query.obs["cell_type"].astype(str)  # true labels kept for scoring
    q = MosaicANVI.load_query_data(MosaicANVI.prepare_query_mudata(query, model), model)
    q.train(max_epochs=2, **TRAIN)
    assert (q.history["classification_loss_train"].to_numpy() == 0).all()


def test_ece_and_indices_refuse_what_they_cannot_read():
    probs = np.array([[0.8, 0.2], [0.3, 0.7]])
    assert expected_calibration_error(probs, np.array([0, 1])) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="class indices"):
        expected_calibration_error(probs, np.array(["a", "b"]))
    with pytest.raises(ValueError, match="summing to 1"):
        expected_calibration_error(probs * 2, np.array([0, 1]))
    with pytest.raises(ValueError, match="summing to 1"):
        expected_calibration_error(np.full((2, 2), np.nan), np.array([0, 1]))
    from mosaicvi.model._gate import _check_indices

    with pytest.warns(UserWarning, match="only 0 and 1"):
        _check_indices(np.array([0, 1, 1, 0]), 4)
