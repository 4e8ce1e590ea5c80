"""Differential analysis (issue 17): scvi-tools' Bayesian test on every modality, with given=."""

import numpy as np
import pandas as pd
import pytest
import scvi

from mosaicvi import MosaicVI
from mosaicvi.data import simulate_mosaic

ALL = {"rna": "rna", "atac": "atac", "protein": "protein"}


@pytest.fixture(scope="module")
def trained_700():
    """A trimodal model trained long enough for its imputations to carry the cell types."""
    scvi.settings.seed = 0
    mdata = simulate_mosaic(n_cells=700, n_genes=40, n_regions=60, n_proteins=10, seed=0)
    MosaicVI.setup_mudata(mdata, modalities=ALL, batch_key="batch")
    model = MosaicVI(mdata, n_latent=5, n_hidden=32)
    model.train(max_epochs=60, batch_size=64, enable_progress_bar=False)
    return model, mdata


def test_differential_protein_of_cells_without_protein_finds_the_planted_markers(trained_700):
    model, mdata = trained_700
    obs_before = mdata.obs.copy()
    types = mdata.obs["cell_type"].astype(str).to_numpy()
    has_protein = mdata.obsm["protein"].reshape(-1).astype(bool)
    has_rna = mdata.obsm["rna"].reshape(-1).astype(bool)
    # the truth, from the cells that were measured: log ratio of type0 to the rest
    measured = mdata["protein"].to_df()
    measured_types = mdata.obs.loc[measured.index, "cell_type"].astype(str)
    ratio = np.log1p(measured[measured_types == "type0"].mean()) - np.log1p(
        measured[measured_types != "type0"].mean()
    )
    strong, flat = ratio.index[ratio.abs() > 1], ratio.index[ratio.abs() < 0.1]
    assert len(strong) >= 3 and len(flat) >= 1
    # tested on cells that never had protein, from their RNA alone
    lacking = ~has_protein & has_rna
    result = model.differential_protein(
        idx1=lacking & (types == "type0"),
        idx2=lacking & (types != "type0"),
        given=["rna"],
        n_samples_overall=1000,
    )
    # every planted marker more likely differential than not, most of them near certain (the
    # weakest one's imputation from RNA varies with the initial weights: 0.5-0.6 at seed 0
    # since issue 24 changed how the first layers are drawn)
    assert (result.loc[strong, "proba_de"] > 0.5).all()
    assert result.loc[strong, "proba_de"].median() > 0.95
    assert (np.sign(result.loc[strong, "lfc_mean"]) == np.sign(ratio[strong])).all()
    assert result.loc[flat, "proba_de"].max() < result.loc[strong, "proba_de"].min()
    assert {"proba_de", "lfc_mean", "bayes_factor", "is_de_fdr_0.05", "comparison"} <= set(
        result.columns
    )
    assert (result["n_measured1"] == 0).all()  # none of these cells had protein
    pd.testing.assert_frame_equal(mdata.obs, obs_before)  # no temporary column left behind


@pytest.mark.parametrize("method", ["differential_expression", "differential_accessibility"])
def test_groupby_every_group_against_the_rest(trained_trimodal, method):
    model, mdata = trained_trimodal
    result = getattr(model, method)(groupby="cell_type", n_samples_overall=300, mode="vanilla")
    assert set(result["comparison"]) == {f"type{t} vs Rest" for t in range(3)}
    n_features = mdata["rna" if method == "differential_expression" else "atac"].n_vars
    assert len(result) == 3 * n_features
    assert np.isfinite(result["bayes_factor"]).all()
    assert list(result.columns[:2]) == ["proba_m1", "proba_m2"]


def test_same_seed_same_result_and_clear_errors(trained_trimodal):
    model, mdata = trained_trimodal
    kwargs = {"groupby": "cell_type", "group1": "type1", "group2": "type2"}
    a = model.differential_expression(n_samples_overall=200, **kwargs)
    b = model.differential_expression(n_samples_overall=200, **kwargs)
    pd.testing.assert_frame_equal(a, b)
    with pytest.raises(ValueError, match="not in mdata.obs"):
        model.differential_expression(groupby="cell_type", group1="type9")
    with pytest.raises(KeyError, match="`groupby`"):
        model.differential_expression(groupby="nope")
    with pytest.raises(ValueError, match="`mode`"):
        model.differential_expression(mode="bogus", **kwargs)
    with pytest.raises(IndexError, match=r"`idx1` must be cell positions in \[0, 350\)"):
        model.differential_expression(idx1=[0, 350])
    with pytest.raises(ValueError, match="A boolean `idx2` mask needs one value per cell"):
        model.differential_expression(idx1=[0, 1], idx2=np.ones(10, bool))
    only_atac = (mdata.obs["subset"] == "atac").to_numpy()
    with pytest.raises(
        ValueError, match=r"has no cell with any of the modalities given=\['rna'\]"
    ):
        model.differential_protein(idx1=only_atac, given=["rna"])


def test_differential_needs_a_trained_model(trimodal):
    MosaicVI.setup_mudata(trimodal, modalities={m: m for m in ("rna", "atac", "protein")})
    model = MosaicVI(trimodal, n_latent=2, n_hidden=8)
    with pytest.raises(RuntimeError, match="untrained"):
        model.differential_expression(groupby="cell_type")


def test_predictive_quantiles_cover_held_out_protein(trained_700):
    """Protein imputed from RNA for cells whose protein the model saw: nominal 90% intervals
    of the posterior predictive cover most measured counts, and the levels are ordered."""
    model, mdata = trained_700
    cells = np.flatnonzero(
        mdata.obsm["protein"].reshape(-1).astype(bool) & mdata.obsm["rna"].reshape(-1).astype(bool)
    )
    q = model.posterior_predictive_quantiles(
        "protein", indices=cells, given=["rna"], quantiles=[0.05, 0.5, 0.95], n_samples=50
    )
    low, mid, high = q[0.05], q[0.5], q[0.95]
    assert low.shape == (len(cells), mdata["protein"].n_vars)
    assert (low.to_numpy() <= mid.to_numpy()).all() and (mid.to_numpy() <= high.to_numpy()).all()
    assert np.array_equal(low.to_numpy(), np.round(low.to_numpy()))  # counts
    truth = mdata["protein"][mdata.obs_names[cells]].to_df().to_numpy()
    covered = ((truth >= low.to_numpy()) & (truth <= high.to_numpy())).mean()
    assert 0.6 < covered <= 1.0
    with pytest.raises(ValueError, match="`quantiles`"):
        model.posterior_predictive_quantiles("protein", quantiles=[1.5])
