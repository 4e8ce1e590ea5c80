import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from mosaicvi import MosaicVI
from mosaicvi._constants import REGISTRY_KEYS

ALL = {"rna": "rna", "atac": "atac", "protein": "protein"}


def snapshot(mdata):
    return {
        "mods": list(mdata.mod),
        "obs": mdata.obs.copy(),
        "obsm": sorted(mdata.obsm.keys()),
        "mod_obs": {k: a.obs.copy() for k, a in mdata.mod.items()},
        "mod_obsm": {k: sorted(a.obsm.keys()) for k, a in mdata.mod.items()},
        "X": {k: a.X for k, a in mdata.mod.items()},
        "X_copy": {k: a.X.copy() for k, a in mdata.mod.items()},
        "X_format": {k: a.X.format for k, a in mdata.mod.items()},
    }


def test_setup_leaves_mudata_unchanged(trimodal):
    before = snapshot(trimodal)
    MosaicVI.setup_mudata(
        trimodal,
        modalities={"protein": "protein", "rna": "rna", "atac": "atac"},
        batch_key="batch",
        categorical_covariate_keys=["cell_type"],
    )
    MosaicVI(trimodal)
    after = snapshot(trimodal)
    assert after["mods"] == before["mods"]
    pd.testing.assert_frame_equal(after["obs"], before["obs"])
    assert after["obsm"] == before["obsm"]
    for k in before["mods"]:
        pd.testing.assert_frame_equal(after["mod_obs"][k], before["mod_obs"][k])
        assert after["mod_obsm"][k] == before["mod_obsm"][k]
        assert trimodal.mod[k].X is before["X"][k]  # not replaced, copied or densified
        assert after["X_format"][k] == before["X_format"][k]
        assert (trimodal.mod[k].X != before["X_copy"][k]).nnz == 0


def test_presence_comes_from_mudata_not_from_zero_rows(trimodal):
    # a measured cell with zero counts is still measured
    rna = trimodal.mod["rna"]
    x = rna.X.toarray()
    x[0] = 0
    rna.X = sparse.csr_matrix(x)
    MosaicVI.setup_mudata(trimodal, modalities=ALL, batch_key="batch")
    model = MosaicVI(trimodal)
    mask = model.adata_manager.presence()
    expected = np.stack([trimodal.obsm[m].reshape(-1) for m in ("rna", "atac", "protein")], 1)
    np.testing.assert_array_equal(mask, expected)
    first = trimodal.obs_names.get_loc(rna.obs_names[0])
    assert mask[first, 0]
    counts = model.adata_manager.get_state_registry(REGISTRY_KEYS.PRESENCE)["n_cells_per_modality"]
    assert dict(counts) == {m: trimodal.mod[m].n_obs for m in ALL}
    subsets = set(map(tuple, mask.astype(int)))
    assert len(subsets) == 7


def test_padded_mudata_with_presence_column():
    rng = np.random.default_rng(0)
    n = 40
    names = [f"c{i}" for i in range(n)]
    rna = ad.AnnData(sparse.csr_matrix(rng.poisson(2, (n, 10)).astype(np.float32)))
    prot = ad.AnnData(rng.poisson(5, (n, 4)).astype(np.float32))  # dense, padded with zeros
    rna.obs_names = prot.obs_names = names
    prot.var_names = [f"p{j}" for j in range(4)]
    mdata = md.MuData({"rna": rna, "adt": prot})
    has_protein = np.arange(n) % 2 == 0
    mdata.obs["has_adt"] = has_protein
    prot.X[~has_protein] = 0
    MosaicVI.setup_mudata(
        mdata, modalities={"rna": "rna", "protein": "adt"}, presence_keys={"protein": "has_adt"}
    )
    model = MosaicVI(mdata, n_latent=3, n_hidden=16)
    mask = model.adata_manager.presence()
    np.testing.assert_array_equal(mask[:, 1], has_protein)
    assert model.summary_stats.n_batch == 1
    model.train(max_epochs=2, enable_progress_bar=False)
    assert model.get_protein_expression().shape == (n, 4)


def test_layers_and_covariates(trimodal):
    for a in trimodal.mod.values():
        a.layers["counts"] = a.X.copy()
        a.X = a.X.astype(np.float32) * 0.5  # not counts: must be ignored
    trimodal.obs["depth"] = np.linspace(0, 1, trimodal.n_obs)
    MosaicVI.setup_mudata(
        trimodal,
        modalities=ALL,
        layers=dict.fromkeys(ALL, "counts"),
        batch_key="batch",
        categorical_covariate_keys=["cell_type"],
        continuous_covariate_keys=["depth"],
    )
    model = MosaicVI(trimodal, n_latent=3, n_hidden=16)
    assert model.summary_stats.n_extra_categorical_covs == 1
    assert model.summary_stats.n_extra_continuous_covs == 1
    model.train(max_epochs=1, enable_progress_bar=False)
    assert np.isfinite(model.get_latent_representation()).all()


def bad(mdata, mod, fn):
    a = mdata.mod[mod]
    x = a.X.toarray()
    fn(x)
    a.X = sparse.csr_matrix(x)
    return mdata


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda x: x.__setitem__((0, 0), 1.5), r"mdata.mod\['rna'\].X contains non-integer"),
        (lambda x: x.__setitem__((0, 0), -1), r"mdata.mod\['rna'\].X contains negative"),
        (lambda x: x.__setitem__((0, 0), np.inf), r"mdata.mod\['rna'\].X contains infinite"),
    ],
)
def test_bad_values_are_rejected(trimodal, mutate, match):
    bad(trimodal, "rna", mutate)
    with pytest.raises(ValueError, match=match):
        MosaicVI.setup_mudata(trimodal, modalities=ALL, batch_key="batch")


def test_bad_layer_values_name_the_layer(trimodal):
    trimodal.mod["protein"].layers["counts"] = trimodal.mod["protein"].X * 0.5
    with pytest.raises(ValueError, match=r"mdata.mod\['protein'\].layers\['counts'\]"):
        MosaicVI.setup_mudata(trimodal, modalities=ALL, layers={"protein": "counts"})


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"modalities": {}}, ValueError, "No modality given"),
        ({"modalities": {"rna": "gex"}}, KeyError, "Modality 'gex'.*not in the MuData"),
        ({"modalities": {"dna": "rna"}}, ValueError, r"Unknown data type\(s\) \['dna'\]"),
        ({"modalities": ALL, "layers": {"rna": "raw"}}, KeyError, "Layer 'raw'.*'rna'"),
        ({"modalities": ALL, "batch_key": "donor"}, KeyError, "Column 'donor'.*batch"),
        (
            {"modalities": ALL, "continuous_covariate_keys": ["age"]},
            KeyError,
            "Continuous covariate 'age'",
        ),
        (
            {"modalities": ALL, "presence_keys": {"rna": "has_rna"}},
            KeyError,
            "Presence column 'has_rna'",
        ),
        ({"modalities": {"rna": "rna", "protein": "rna"}}, ValueError, "its own modality"),
    ],
)
def test_setup_errors(trimodal, kwargs, error, match):
    with pytest.raises(error, match=match):
        MosaicVI.setup_mudata(trimodal, **kwargs)


def test_cells_without_any_registered_modality(trimodal):
    with pytest.raises(ValueError, match="none of the registered modalities"):
        MosaicVI.setup_mudata(trimodal, modalities={"rna": "rna", "protein": "protein"})


def test_batch_with_missing_values(trimodal):
    trimodal.obs["batch"] = trimodal.obs["batch"].astype(object)
    trimodal.obs.iloc[0, trimodal.obs.columns.get_loc("batch")] = None
    with pytest.raises(ValueError, match=r"mdata.obs\['batch'\].*missing value"):
        MosaicVI.setup_mudata(trimodal, modalities=ALL, batch_key="batch")


def test_non_boolean_presence_column(trimodal):
    trimodal.obs["flag"] = 1
    with pytest.raises(TypeError, match=r"mdata.obs\['flag'\].*must be boolean"):
        MosaicVI.setup_mudata(trimodal, modalities=ALL, presence_keys={"rna": "flag"})


def test_anndata_is_rejected(trimodal):
    with pytest.raises(TypeError, match="needs a MuData"):
        MosaicVI.setup_mudata(trimodal.mod["rna"], modalities={"rna": "rna"})
    with pytest.raises(TypeError, match="setup_mudata"):
        MosaicVI.setup_anndata(trimodal.mod["rna"])
