"""Predictive intervals and their calibration step (issues 17 and 25)."""

import math

import numpy as np
import pytest
import torch

from mosaicvi import MosaicVI
from mosaicvi.model._interval_scores import (
    _fit_scales,
    _pooled_scale,
    _scaled,
    _scores,
)


def _covered(truth, low, high):
    return ((truth >= low) & (truth <= high)).mean()


@pytest.mark.parametrize(
    ("lower", "upper", "widens"),
    [(9.0, 11.0, True), (0.0, 40.0, False)],  # too narrow, too wide for Poisson(10)
)
def test_scale_restores_coverage_of_too_narrow_and_too_wide_intervals(lower, upper, widens):
    rng = np.random.default_rng(0)
    shape = (300, 30)
    truth = rng.poisson(10, size=shape).astype(float)
    low0, high0 = np.full(shape, lower), np.full(shape, upper)
    median = np.full(shape, 10.0)
    mean = 10.0 + rng.normal(0, 0.3, size=shape)  # a predicted mean, continuous
    for level in (0.5, 0.8, 0.9):
        scale = _pooled_scale(_scores(low0, median, high0, mean, truth), shape[0], level)
        assert (scale > 1) == widens
        low, high = _scaled(low0, median, high0, mean, scale)
        # fresh cells from the same distribution: covered at the level (split conformal),
        # neither at the raw coverage nor at a rounded-out one
        new = rng.poisson(10, size=shape)
        assert abs(_covered(new, low, high) - level) < 0.03, level
        assert abs(_covered(new, low0, high0) - level) > 0.05
        assert ((high - low).mean() > (high0 - low0).mean()) == widens


def test_scaled_interval_is_the_counts_whose_score_is_at_most_the_scale():
    rng = np.random.default_rng(1)
    median = rng.integers(0, 30, size=400).astype(float)
    lower = np.maximum(median - rng.integers(0, 6, size=400), 0)
    upper = median + rng.integers(0, 12, size=400)
    mean = median + rng.uniform(-0.5, 0.5, size=400).clip(-median)
    # scale 1 is the raw interval
    low, high = _scaled(lower, median, upper, mean, 1.0)
    np.testing.assert_array_equal(low, lower)
    np.testing.assert_array_equal(high, upper)
    for scale in (0.0, 0.3, 1.0, 2.5):
        low, high = _scaled(lower, median, upper, mean, scale)
        assert (low <= median).all() and (median <= high).all()  # the median always held
        for y in range(0, 80, 3):
            s = _scores(lower, median, upper, mean, np.full(400, float(y)))
            inside = (low <= y) & (y <= high)
            np.testing.assert_array_equal(inside, s <= scale + 1e-9)


def test_one_exchangeable_unit_per_cell():
    # n cells: the pooled scale covers level * (n + 1) / n of the pairs, not (N + 1) / N
    scores = np.random.default_rng(2).uniform(size=(20, 500))
    scale = _pooled_scale(scores, 20, 0.8)
    assert (scores <= scale).mean() == pytest.approx(0.8 * 21 / 20, abs=1e-3)
    # too few cells for the level: the largest score
    assert _pooled_scale(scores, 20, 0.97) == scores.max()
    # per feature: the ceil((n + 1) level)-th smallest of each feature's n cells
    use = np.ones_like(scores, dtype=bool)
    per_feature = np.asarray(_fit_scales(scores, use, 0.8, "feature", None, None))
    k = math.ceil(21 * 0.8)
    np.testing.assert_allclose(per_feature, np.sort(scores, axis=0)[k - 1])
    # per bin of the predicted mean: each bin its own scale
    bins = np.repeat([[0, 1]], 250, axis=0).reshape(1, -1).repeat(20, axis=0)
    wide = scores * np.where(bins == 1, 10.0, 1.0)
    by_bin = _fit_scales(wide, use, 0.8, "predicted", bins, 2)
    assert by_bin[1] > 5 * by_bin[0]


def _both(mdata, a, b):
    return np.flatnonzero(
        mdata.obsm[a].reshape(-1).astype(bool) & mdata.obsm[b].reshape(-1).astype(bool)
    )


def test_calibrate_intervals_fits_stores_and_applies_scales(trained_trimodal, tmp_path):
    model, mdata = trained_trimodal
    cells = _both(mdata, "protein", "rna")
    before = dict(model.interval_calibration_)
    try:
        model.interval_calibration_ = {}
        with pytest.raises(ValueError, match="Run `calibrate_intervals` first"):
            model.predictive_intervals(
                "protein", 0.8, indices=cells, given=["rna"], calibrated=True
            )
        table = model.calibrate_intervals(
            "protein", given=["rna"], indices=cells, levels=(0.5, 0.8), n_samples=30
        )
        assert list(table.index) == [
            ("cell", 0.5),
            ("cell", 0.8),
            ("batch", 0.5),
            ("batch", 0.8),
        ]
        levels = table.index.get_level_values("level").to_numpy()
        # in-sample, the pooled scale covers at least level * (n + 1) / n of the pairs
        assert (table["coverage_after"] >= levels * (len(cells) + 1) / len(cells) - 1e-9).all()
        assert (table["coverage_after"] < levels + 0.1).all()  # not rounded out to 1
        assert (table["n_cells"] == len(cells)).all()
        stored = model.interval_calibration_["protein"]
        assert stored["format"] == 2 and stored["given"] == ["rna"]
        assert set(stored["scales"]) == {"cell", "batch"}
        assert set(stored["scales"]["cell"]) == {"0.5", "0.8"}

        raw = model.predictive_intervals(
            "protein", 0.8, indices=cells[:20], given=["rna"], n_samples=30, calibrated=False
        )
        cal = model.predictive_intervals(
            "protein", 0.8, indices=cells[:20], given=["rna"], n_samples=30
        )
        assert raw[0].shape == cal[0].shape == (20, 10)
        assert (cal[0].to_numpy() <= cal[1].to_numpy()).all()
        scale = stored["scales"]["cell"]["0.8"]
        if scale != pytest.approx(1.0, abs=0.05):  # narrower or wider, as the scale says
            narrower = (cal[1] - cal[0]).to_numpy().mean() < (raw[1] - raw[0]).to_numpy().mean()
            assert narrower == (scale < 1)
        with pytest.raises(ValueError, match="given=\\['atac'\\]"):
            model.predictive_intervals("protein", 0.8, given=["atac"], calibrated=True)
        with pytest.raises(ValueError, match="level 0.9"):
            model.predictive_intervals("protein", 0.9, given=["rna"], calibrated=True)

        model.save(tmp_path / "m")
        loaded = MosaicVI.load(tmp_path / "m", adata=mdata)
        assert loaded.interval_calibration_ == model.interval_calibration_

        for stratify, length in (("feature", 10), ("predicted", None)):
            table = model.calibrate_intervals(
                "protein",
                given=["rna"],
                indices=cells,
                levels=(0.8,),
                stratify=stratify,
                n_samples=30,
            )
            stored = model.interval_calibration_["protein"]
            scales = stored["scales"]["batch"]["0.8"]
            expected = length or len(stored["bin_edges"]) + 1
            assert stored["stratify"] == stratify and len(scales) == expected
            low, high = model.predictive_intervals(
                "protein", 0.8, indices=cells[:5], given=["rna"], n_samples=30
            )
            assert (low.to_numpy() <= high.to_numpy()).all()
        table = model.calibrate_intervals(
            "protein", given=["rna"], indices=cells, levels=(0.8,), target="nonzero", n_samples=30
        )
        assert (table["coverage_nonzero_after"] >= 0.8).all()
    finally:
        model.interval_calibration_ = before


def test_calibration_decodes_the_cells_with_the_modality_hidden(trained_trimodal):
    """Calibration cells get the plug-in context, not their own: their RNA depth is unused."""
    model, mdata = trained_trimodal
    cells = _both(mdata, "rna", "protein")[:30]
    deeper = mdata.copy()
    rows = deeper["rna"].obs_names.get_indexer(mdata.obs_names[cells])
    x = deeper["rna"].X
    x = x.tolil() if hasattr(x, "tolil") else x
    x[rows] = x[rows] * 8
    deeper["rna"].X = x.tocsr() if hasattr(x, "tocsr") else x

    def means(data, situation):
        torch.manual_seed(0)
        return model._interval_stats("rna", data, cells, ["protein"], [0.5], 20, None, situation)[
            3
        ]

    for situation in ("cell", "batch"):
        np.testing.assert_allclose(means(mdata, situation), means(deeper, situation))
    # decoded with their own, measured depth (not what calibration does), they differ
    assert means(deeper, None).mean() > 2 * means(mdata, None).mean()


def test_interval_arguments_are_checked(trained_trimodal):
    model, mdata = trained_trimodal
    for level in ([0.5, 0.9], None, 1.5, 0.0, True, "0.9"):
        with pytest.raises(ValueError, match="`level`"):
            model.predictive_intervals("protein", level, given=["rna"])
    with pytest.raises(ValueError, match="`levels`"):
        model.calibrate_intervals("protein", given=["rna"], levels=0.9)
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        model.calibrate_intervals("protein", given=["rna"], levels=(1.5,))
    with pytest.raises(ValueError, match="`stratify`"):
        model.calibrate_intervals("protein", given=["rna"], stratify="gene")
    with pytest.raises(ValueError, match="`target`"):
        model.calibrate_intervals("protein", given=["rna"], target="positive")


def test_an_old_calibration_is_refused_with_a_clear_error(trained_trimodal):
    model, mdata = trained_trimodal
    before = dict(model.interval_calibration_)
    try:
        # the format of issue 17: one log1p offset per level, fit on measured cells
        model.interval_calibration_ = {
            "protein": {"given": ["rna"], "offsets": {"0.9": 0.0}, "n_cells": 40}
        }
        cells = _both(mdata, "protein", "rna")[:5]
        for calibrated in (None, True):
            with pytest.raises(ValueError, match="older version.*calibrate_intervals"):
                model.predictive_intervals(
                    "protein", 0.9, indices=cells, given=["rna"], calibrated=calibrated
                )
        low, high = model.predictive_intervals(
            "protein", 0.9, indices=cells, given=["rna"], n_samples=10, calibrated=False
        )
        assert low.shape == (5, 10)
    finally:
        model.interval_calibration_ = before


def test_calibrate_intervals_refuses_what_it_cannot_fit(trained_trimodal):
    model, mdata = trained_trimodal
    with pytest.raises(ValueError, match="not\\s+'protein' itself"):
        model.calibrate_intervals("protein", given=["protein"])
    has_protein = mdata.obsm["protein"].reshape(-1).astype(bool)
    lacking = np.flatnonzero(~has_protein)[:25]
    with pytest.raises(ValueError, match="lack 'protein'"):
        model.calibrate_intervals("protein", given=["rna"], indices=lacking)
    with pytest.raises(ValueError, match="at least 20"):
        model.calibrate_intervals("protein", given=["rna"])  # too few validation cells
    both = np.flatnonzero(has_protein & mdata.obsm["rna"].reshape(-1).astype(bool))[:10]
    with pytest.raises(ValueError, match="more than once"):  # 10 cells are not 30 units
        model.calibrate_intervals("protein", given=["rna"], indices=np.r_[both, both, both])
    with pytest.raises(TypeError, match="MuData"):
        model.calibrate_intervals("protein", given=["rna"], adata=mdata["rna"], indices=both)


def test_levels_close_together_keep_their_own_keys():
    from mosaicvi.model._interval_scores import _level_key

    assert _level_key(0.9) != _level_key(0.9000001) and _level_key(0.9999999) != "1"
    assert _level_key(0.8) == "0.8"


def test_training_drops_a_calibration_fit_before():
    """Scales fit on the old weights would be applied to the new ones: training drops them."""
    from mosaicvi import MosaicVI
    from mosaicvi.data import simulate_mosaic

    mdata = simulate_mosaic(n_cells=120, n_genes=15, n_regions=20, n_proteins=5, seed=1)
    modalities = {"rna": "rna", "atac": "atac", "protein": "protein"}
    MosaicVI.setup_mudata(mdata, modalities=modalities)
    model = MosaicVI(mdata, n_latent=2, n_hidden=8)
    model.interval_calibration_ = {"protein": {"format": 2}}
    with pytest.raises(ValueError, match="validation set"):  # refused: nothing dropped
        model.train(max_epochs=1, early_stopping=True, train_size=1.0)
    assert model.interval_calibration_
    with pytest.warns(UserWarning, match="calibration fit before.*dropped"):
        model.train(max_epochs=1, enable_progress_bar=False)
    assert model.interval_calibration_ == {}


def test_default_calibration_cells_are_never_fitted_and_follow_the_data(tmp_path):
    """Issue 29: validation cells kept by name; a new split drops cells fitted before."""
    from mosaicvi.data import simulate_mosaic

    mdata = simulate_mosaic(n_cells=800, n_genes=15, n_regions=20, n_proteins=5, seed=1)
    MosaicVI.setup_mudata(mdata, modalities={"rna": "rna", "atac": "atac", "protein": "protein"})
    model = MosaicVI(mdata, n_latent=3, n_hidden=16)
    model.train(max_epochs=1, train_size=0.5, enable_progress_bar=False)
    names = mdata.obs_names
    first_fit = set(names[model.train_indices])
    assert set(model._validation_cells) == set(names[model.validation_indices])
    model.train(max_epochs=1, train_size=0.5, enable_progress_bar=False)  # a new split
    default = set(model._validation_cells)
    assert default and default.isdisjoint(first_fit | set(names[model.train_indices]))
    table = model.calibrate_intervals("protein", given=["rna"], levels=(0.9,), n_samples=5)
    both = mdata.obsm["protein"].reshape(-1).astype(bool) & mdata.obsm["rna"].reshape(-1)
    assert table["n_cells"].iloc[0] == len(default & set(names[both.astype(bool)]))
    # the model given other data (same cells in another order): no stale positions
    model.save(tmp_path / "m")
    shuffled = mdata[np.random.default_rng(0).permutation(mdata.n_obs)].copy()
    loaded = MosaicVI.load(tmp_path / "m", adata=shuffled)
    with pytest.raises(ValueError, match="Pass `indices`"):
        loaded.calibrate_intervals("protein", given=["rna"], levels=(0.9,))


def test_default_calibration_cells_refused_when_the_training_history_is_unknown(tmp_path):
    """Issue 29: a failed run, loaded weights, weights of another model count as fitted."""
    from lightning.pytorch.callbacks import Callback

    from mosaicvi import MosaicANVI
    from mosaicvi.data import simulate_mosaic

    class Fail(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            raise RuntimeError("stopped part-way")

    mods = {"rna": "rna", "atac": "atac", "protein": "protein"}
    mdata = simulate_mosaic(n_cells=300, n_genes=15, n_regions=20, n_proteins=5, seed=2)
    MosaicVI.setup_mudata(mdata, modalities=mods)
    model = MosaicVI(mdata, n_latent=3, n_hidden=16)
    model.train(max_epochs=1, train_size=0.5, enable_progress_bar=False)
    assert len(model._validation_cells)
    with pytest.raises(RuntimeError, match="part-way"):
        model.train(max_epochs=2, train_size=0.5, callbacks=[Fail()], enable_progress_bar=False)
    with pytest.raises(ValueError, match="No validation cell is left"):
        model.calibrate_intervals("protein", given=["rna"], levels=(0.9,))
    model.save(tmp_path / "m")
    loaded = MosaicVI.load(tmp_path / "m", adata=mdata)
    loaded.train(max_epochs=1, train_size=0.5, enable_progress_bar=False)
    with pytest.raises(ValueError, match="No validation cell is left"):
        loaded.calibrate_intervals("protein", given=["rna"], levels=(0.9,))
    # a semi-supervised model from a MosaicVI trained in this session knows its cells
    fresh = MosaicVI(mdata, n_latent=3, n_hidden=16)
    fresh.train(max_epochs=1, train_size=0.5, enable_progress_bar=False)
    mdata.obs["label"] = np.where(np.arange(mdata.n_obs) % 2, "a", "b")
    anvi = MosaicANVI.from_mosaicvi_model(fresh, "unknown", labels_key="label")
    anvi.train(max_epochs=1, train_size=0.5, enable_progress_bar=False)
    assert set(anvi._validation_cells).isdisjoint(set(fresh._fitted_cells))


def test_cells_kept_by_name_are_found_or_refused_clearly():
    """The one lookup behind both calibrations' default cells (intervals and labels)."""
    import pandas as pd

    from mosaicvi.model._gate import _cells_by_name

    names = pd.Index(["a", "b", "c"])
    np.testing.assert_array_equal(_cells_by_name(names, ["c", "a"], "validation cells"), [2, 0])
    with pytest.raises(ValueError, match="no longer hold its validation cells"):
        _cells_by_name(names, ["a", "z"], "validation cells")
    with pytest.raises(ValueError, match="repeated cell names.*pass `indices`"):
        _cells_by_name(pd.Index(["a", "a", "c"]), ["c"], "labeled cells held out in training")
