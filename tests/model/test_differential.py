"""Differential analysis (issue 17): scvi-tools' Bayesian test on every modality, with given=."""

import gc
import weakref

import numpy as np
import pandas as pd
import pytest
import scvi
import torch
from scvi.model.base import DifferentialComputation

import mosaicvi.data._backed as backed
import mosaicvi.model._de_run as differential
import mosaicvi.model._de_samples as de_samples
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
    with pytest.raises(ValueError, match="is not a group of mdata.obs"):
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


def _previous(model, mdata, mod, cells1, cells2, n, seed, batches=None):
    """The implementation before issue 25: scvi-tools draws all the samples of each group
    through one ``model_fn`` (whole arrays) and reads whole groups for the pseudocounts."""
    rng = np.random.default_rng(seed)
    manager = model.get_anndata_manager(mdata, required=True)

    def model_fn(adata, indices, transform_batch=None, n_samples_overall=5000):
        cells = np.sort(rng.choice(np.asarray(indices), size=int(n_samples_overall)))
        return model._denoised(
            mod, adata, cells, None, transform_batch, 1, None, sample_latent=True
        )[0]

    class View:
        adata = mdata

        def get_from_registry(self, key):
            return self

        def __getitem__(self, mask):
            rows = manager.modality_rows()[mod]
            return manager.measured_counts(mod)[0][np.sort(rows[mask & (rows >= 0)])]

    computation = DifferentialComputation(model_fn, None, View())
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return computation.get_bayes_factors(
            cells1, cells2, mode="change", delta=0.05, batchid1=batches, batchid2=batches,
            use_observed_batches=batches is None, n_samples_overall=n,
        )  # fmt: skip


@pytest.mark.parametrize("batch_correction", [False, True])
def test_streamed_passes_give_the_previous_results(
    trained_trimodal, monkeypatch, batch_correction
):
    """Samples decoded in float32 passes over the features, the test on a few features at a
    time, raw counts read in small blocks: the same numbers as before (same seed), and no
    step holds more than its bound."""
    model, mdata = trained_trimodal
    types = mdata.obs["cell_type"].astype(str).to_numpy()
    cells1, cells2 = types == "type0", types != "type0"
    batches = list(model.measured_batches_["atac"]) if batch_correction else None
    reference = _previous(model, mdata, "atac", cells1, cells2, 240, 3, batches)
    n_regions = mdata["atac"].n_vars
    kwargs = {"idx1": cells1, "idx2": cells2, "n_samples_overall": 240, "seed": 3}
    kwargs["batch_correction"] = batch_correction
    whole = model.differential_accessibility(**kwargs)
    # bounds: 12 features per pass, 5 per test call, 7 rows of counts per read
    monkeypatch.setattr(differential, "SAMPLE_BYTES", 4 * 12 * 480)
    monkeypatch.setattr(differential, "TEST_BYTES", differential._TEST_BYTES_PER_VALUE * 5 * 240)
    monkeypatch.setattr(differential, "RAW_BLOCK_VALUES", 7 * n_regions)
    seen = {"scales": [], "rows": [], "columns": []}
    scale_sampler = de_samples._GivenSamples.scale_sampler
    read_rows = backed.read_rows
    blocks = MosaicVI._denoised_blocks

    def spy_scales(self, selection, **kw):
        out = scale_sampler(self, selection, **kw)
        seen["scales"].append(out["scale"])
        return out

    def spy_rows(matrix, rows, *args):
        seen["rows"].append(len(rows))
        return read_rows(matrix, rows, *args)

    def spy_blocks(self, *args, columns=None, **kw):
        seen["columns"].append(columns)
        return blocks(self, *args, columns=columns, **kw)

    monkeypatch.setattr(de_samples._GivenSamples, "scale_sampler", spy_scales)
    monkeypatch.setattr(backed, "read_rows", spy_rows)
    monkeypatch.setattr(MosaicVI, "_denoised_blocks", spy_blocks)
    streamed = model.differential_accessibility(**kwargs)
    pd.testing.assert_frame_equal(streamed, whole, check_exact=False, rtol=1e-5)
    for key in ("proba_de", "lfc_mean", "lfc_std", "scale1", "scale2", "bayes_factor"):
        np.testing.assert_allclose(
            streamed.loc[mdata["atac"].var_names, key], reference[key], rtol=1e-5, atol=1e-7
        )
    np.testing.assert_allclose(streamed["pseudocounts"], reference["pseudocounts"], rtol=1e-6)
    tested = [s for s in seen["scales"] if s.shape[0] > 1]  # not the pseudocount estimate
    assert tested and all(s.dtype == np.float32 and s.shape[1] <= 5 for s in tested)
    assert sum(s.shape[1] for s in tested) == 2 * n_regions  # every feature, both groups
    assert 0 < max(seen["rows"]) <= 7
    widths = {c.stop - c.start for c in seen["columns"]}
    assert max(widths) == 12 and len(seen["columns"]) > 2 * n_regions // 12


def test_batch_options_follow_scvi_tools(trained_trimodal):
    """batchid1 alone with batch_correction: batchid2 is every batch that measured the
    modality (scvi-tools' default, all batches); batchid without batch_correction: ignored,
    with a warning, as scvi-tools documents them (only used with batch_correction)."""
    model, mdata = trained_trimodal
    measured = sorted(model.measured_batches_["rna"])
    kwargs = {"groupby": "cell_type", "group1": "type0", "n_samples_overall": 120}
    one = model.differential_expression(batch_correction=True, batchid1=measured[:1], **kwargs)
    both = model.differential_expression(
        batch_correction=True, batchid1=measured[:1], batchid2=measured, **kwargs
    )
    pd.testing.assert_frame_equal(one, both)
    plain = model.differential_expression(**kwargs)
    with pytest.warns(UserWarning, match="`batchid1` ignored.*only used with `batch_correction"):
        ignored = model.differential_expression(batchid1=measured[:1], **kwargs)
    pd.testing.assert_frame_equal(ignored, plain)
    with pytest.raises(ValueError, match=r"`batchid2` must name batches of the model"):
        model.differential_expression(batch_correction=True, batchid2=["nope"], **kwargs)
    with pytest.raises(ValueError, match="`batchid1` names a batch twice"):
        model.differential_expression(batch_correction=True, batchid1=measured[:1] * 2, **kwargs)
    with pytest.raises(ValueError, match="each batch needs at least one sample"):
        model.differential_expression(
            batch_correction=True, **{**kwargs, "n_samples_overall": len(measured) - 1}
        )


def test_groups_are_matched_with_their_type(trained_trimodal):
    model, mdata = trained_trimodal
    with pytest.raises(ValueError, match=r"`group1`=3 \(int\) is not a group.*'type0'"):
        model.differential_expression(groupby="cell_type", group1=3)
    codes = mdata.obs["cell_type"].cat.codes.to_numpy()
    mdata.obs["code"] = codes  # an integer column (removed below)
    try:
        result = model.differential_expression(
            groupby="code", group1=0, group2=1, n_samples_overall=50, mode="vanilla"
        )
        assert set(result["comparison"]) == {"0 vs 1"}
        with pytest.raises(ValueError, match=r"`group1`='0' \(str\) is not a group"):
            model.differential_expression(groupby="code", group1="0")
        every = model.differential_expression(
            groupby="code", group2=1, n_samples_overall=50, mode="vanilla"
        )
        assert set(every["comparison"]) == {f"{c} vs 1" for c in set(codes) - {1}}
    finally:
        del mdata.obs["code"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "bogus"}, ValueError, "`mode` must be 'vanilla' or 'change'"),
        ({"delta": 0}, ValueError, r"`delta` must be in \(0.0, inf\)"),
        ({"delta": -0.5}, ValueError, r"`delta` must be in \(0.0, inf\)"),
        ({"delta": None}, ValueError, "`delta` must be a positive number"),
        ({"delta": "0.2"}, TypeError, "`delta` must be a number"),
        ({"fdr_target": 1.0}, ValueError, r"`fdr_target` must be in \(0.0, 1.0\)"),
        ({"fdr_target": 0}, ValueError, r"`fdr_target` must be in \(0.0, 1.0\)"),
        ({"n_samples_overall": 0}, ValueError, "`n_samples_overall` must be at least 1"),
        ({"n_samples_overall": 10.0}, TypeError, "`n_samples_overall` must be an integer"),
        ({"seed": -1}, ValueError, "`seed` must be at least 0"),
        ({"all_stats": "yes"}, TypeError, "`all_stats` must be True or False"),
        ({"batch_correction": 1}, TypeError, "`batch_correction` must be True or False"),
        ({"batch_size": 0}, ValueError, "`batch_size` must be at least 1"),
        ({"given": ["nope"]}, ValueError, "`given` must be a non-empty subset"),
        ({"group2": ["type1", "type2"]}, TypeError, "`group2` must be one group"),
        ({"group1": []}, ValueError, "`group1` is empty"),
        ({"group1": ["type1", "type1"]}, ValueError, "`group1` names a group twice"),
        ({"group1": "type1", "group2": "type1"}, ValueError, "a group against itself"),
        ({"groupby": None, "idx2": [0, 1]}, ValueError, "`idx2` needs `idx1`"),
        ({"groupby": None, "group1": "type1"}, ValueError, "need `groupby`"),
        ({"idx1": [0, 1]}, ValueError, "not both"),
        ({"groupby": 3}, TypeError, "`groupby` must be a column name"),
        ({"fdr": 0.1}, TypeError, r"Unexpected argument `fdr` \(pass `fdr_target`\)"),
        ({"use_observed_batches": True}, TypeError, r"\(pass `batch_correction`\)"),
        ({"pseudocounts": -1.0}, ValueError, r"`pseudocounts` must be in \[0.0, inf\)"),
        ({"threshold_counts": -1}, ValueError, r"`threshold_counts` must be in \[0.0, inf\)"),
        ({"test_mode": "one"}, ValueError, "`test_mode` must be 'two' or 'three'"),
        ({"cred_interval_lvls": [0.5, 1.5]}, ValueError, "`cred_interval_lvls` must be in"),
        ({"m_permutation": 0}, ValueError, "`m_permutation` must be at least 1"),
        ({"use_permutation": "no"}, TypeError, "`use_permutation` must be True or False"),
        ({"change_fn": "ratio"}, ValueError, "`change_fn` must be 'log-fold' or a function"),
        ({"m1_domain_fn": 3}, TypeError, "`m1_domain_fn` must be a function"),
    ],
)
def test_every_argument_is_checked(trained_trimodal, kwargs, error, match):
    model, _ = trained_trimodal
    kwargs = {"groupby": "cell_type", **kwargs}
    with pytest.raises(error, match=match):
        model.differential_expression(**kwargs)


def test_protein_background_flag_is_checked(trained_trimodal):
    model, _ = trained_trimodal
    with pytest.raises(TypeError, match="`include_background` must be True or False"):
        model.differential_protein(groupby="cell_type", include_background="no")


def test_samples_are_freed_when_each_comparison_ends(trained_trimodal, monkeypatch):
    """No reference cycle keeps a comparison's samples alive into the next one (which would
    double the memory of a one-vs-rest test): with the cyclic collector off, the arrays of
    each comparison are gone before the next is decoded, and after the last."""
    model, _ = trained_trimodal
    refs, alive = [], []
    decode = MosaicVI._decode_pass

    def spy(self, *args, **kwargs):
        alive.append(sum(r() is not None for r in refs))
        out = decode(self, *args, **kwargs)
        refs.extend(weakref.ref(a) for a in out)
        return out

    monkeypatch.setattr(MosaicVI, "_decode_pass", spy)
    gc.collect()
    gc.disable()
    try:
        model.differential_accessibility(groupby="cell_type", n_samples_overall=100)
    finally:
        gc.enable()
    assert len(refs) == 6  # 3 comparisons, 2 groups, one pass
    assert alive == [0, 0, 0]
    assert all(r() is None for r in refs)
