"""Predictive intervals and their calibration step (issue 17)."""

import math

import numpy as np
import pytest

from mosaicvi import MosaicVI
from mosaicvi.model._intervals import _scores, _widen


def test_conformal_offset_restores_coverage_of_too_narrow_intervals():
    rng = np.random.default_rng(0)
    truth = rng.poisson(10, size=(200, 30)).astype(float)
    lower = np.full_like(truth, 9.0)  # far too narrow for Poisson(10)
    upper = np.full_like(truth, 11.0)
    raw = ((truth >= lower) & (truth <= upper)).mean()
    scores = _scores(lower, upper, truth)
    n = scores.size
    offset = np.quantile(scores, math.ceil((n + 1) * 0.9) / n, method="higher")
    low, high = _widen(lower, upper, offset)
    assert raw < 0.5
    assert ((truth >= low) & (truth <= high)).mean() >= 0.9
    # fresh cells from the same distribution are covered too (split conformal)
    new = rng.poisson(10, size=(200, 30))
    assert ((new >= low) & (new <= high)).mean() >= 0.88
    # offset 0 leaves count bounds as they are
    same = _widen(np.array([0.0, 3.0, 7.0]), np.array([2.0, 3.0, 12.0]), 0.0)
    np.testing.assert_array_equal(same[0], [0, 3, 7])
    np.testing.assert_array_equal(same[1], [2, 3, 12])


def test_calibrate_intervals_fits_stores_and_applies_offsets(trained_trimodal, tmp_path):
    model, mdata = trained_trimodal
    both = mdata.obsm["protein"].reshape(-1).astype(bool) & mdata.obsm["rna"].reshape(-1).astype(
        bool
    )
    cells = np.flatnonzero(both)
    with pytest.raises(ValueError, match="Run `calibrate_intervals` first"):
        model.predictive_intervals("protein", 0.8, indices=cells, given=["rna"], calibrated=True)
    table = model.calibrate_intervals(
        "protein", given=["rna"], indices=cells, levels=(0.5, 0.8), n_samples=30
    )
    assert list(table.index) == [0.5, 0.8]
    assert (table["coverage_after"] >= table.index.to_numpy()).all()  # the conformal guarantee
    assert (table["n_cells"] == len(cells)).all()
    stored = model.interval_calibration_["protein"]
    assert stored["given"] == ["rna"] and set(stored["offsets"]) == {"0.5", "0.8"}

    raw = model.predictive_intervals(
        "protein", 0.8, indices=cells[:20], given=["rna"], n_samples=30, calibrated=False
    )
    cal = model.predictive_intervals(
        "protein", 0.8, indices=cells[:20], given=["rna"], n_samples=30
    )
    assert raw[0].shape == cal[0].shape == (20, 10)
    assert (cal[0].to_numpy() <= cal[1].to_numpy()).all()
    if stored["offsets"]["0.8"] > 0:  # wider than the raw intervals on average
        assert (cal[1] - cal[0]).to_numpy().mean() > (raw[1] - raw[0]).to_numpy().mean()
    with pytest.raises(ValueError, match="given=\\['atac'\\]"):
        model.predictive_intervals("protein", 0.8, given=["atac"], calibrated=True)
    with pytest.raises(ValueError, match="level 0.9"):
        model.predictive_intervals("protein", 0.9, given=["rna"], calibrated=True)

    model.save(tmp_path / "m")
    loaded = MosaicVI.load(tmp_path / "m", adata=mdata)
    assert loaded.interval_calibration_ == model.interval_calibration_


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
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        model.calibrate_intervals("protein", given=["rna"], levels=(1.5,))
