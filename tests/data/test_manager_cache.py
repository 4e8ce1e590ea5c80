"""Issue 29: presence, rows and column orders computed once per state of the MuData.

The gate (``check_data``) reuses them while nothing changed and recomputes them, with their
checks, when the cells, features, maps or presence columns change.
"""

import gc
import weakref

import mudata as md
import numpy as np
import pytest

from mosaicvi import MosaicVI
from mosaicvi.data import simulate_mosaic
from mosaicvi.data._fields import ModalityCountsField, ModalityPresenceField

ALL = {"rna": "rna", "atac": "atac", "protein": "protein"}


@pytest.fixture
def counted(monkeypatch):
    """Counts of the computations the cache saves: rows and column orders."""
    calls = {"rows": 0, "orders": 0}
    row_indices, column_order = ModalityPresenceField.row_indices, ModalityCountsField.column_order

    def rows(self, mdata):
        calls["rows"] += 1
        return row_indices(self, mdata)

    def orders(self, mdata, state):
        calls["orders"] += 1
        return column_order(self, mdata, state)

    monkeypatch.setattr(ModalityPresenceField, "row_indices", rows)
    monkeypatch.setattr(ModalityCountsField, "column_order", orders)
    return calls


def model_of(mdata, **setup):
    MosaicVI.setup_mudata(mdata, modalities=ALL, batch_key="batch", **setup)
    model = MosaicVI(mdata, n_latent=3, n_hidden=8)
    model.is_trained_ = True  # the getters at initial weights: enough for the gate
    return model


def test_nothing_changed_nothing_recomputed(counted):
    mdata = simulate_mosaic(n_cells=80, n_genes=12, n_regions=16, n_proteins=5, seed=0)
    model = model_of(mdata)
    manager = model.adata_manager
    counted.update(rows=0, orders=0)
    for _ in range(3):
        manager.check_data()
    model.get_latent_representation()
    model.get_latent_representation(given=["rna"], indices=manager.cells_with(["rna"]))
    assert counted == {"rows": 0, "orders": 0}
    rows = manager.modality_rows()
    with pytest.raises(ValueError, match="read-only"):
        rows["rna"][0] = 5  # shared by every caller: nobody can change the cache


def test_each_change_recomputes_and_is_checked(counted):
    mdata = simulate_mosaic(n_cells=80, n_genes=12, n_regions=16, n_proteins=5, seed=0)
    model = model_of(mdata)
    manager = model.adata_manager
    latent = model.get_latent_representation()
    n_rna = int(manager.presence()[:, 0].sum())

    # same feature names, a new index object: recomputed, same result
    counted.update(rows=0, orders=0)
    rna = mdata.mod["rna"]
    rna.var_names = list(rna.var_names)
    np.testing.assert_array_equal(model.get_latent_representation(), latent)
    assert counted["orders"] == 3 and counted["rows"] == 1
    counted.update(rows=0, orders=0)
    manager.check_data()
    assert counted == {"rows": 0, "orders": 0}

    # the features renamed: the gate names the missing ones
    rna.var_names = [f"other{j}" for j in range(rna.n_vars)]
    with pytest.raises(ValueError, match="does not have the features the model was set up"):
        model.get_latent_representation()
    rna.var_names = [f"gene{j}" for j in range(rna.n_vars)]
    assert manager.column_orders()["rna"] is None

    # a modality replaced by a subset without `update`: stale, then recomputed after it
    mdata.mod["rna"] = rna[: rna.n_obs // 2].copy()
    with pytest.raises(ValueError, match=r"out of date.*mdata.update\(\)"):
        model.get_latent_representation()
    mdata.update()
    assert int(manager.presence()[:, 0].sum()) == rna.n_obs // 2 < n_rna


def test_presence_column_changed_in_place_is_seen():
    mdata = simulate_mosaic(n_cells=80, n_genes=12, n_regions=16, n_proteins=5, seed=0)
    mdata.obs["has_protein"] = mdata.obsm["protein"].astype(bool)
    model = model_of(mdata, presence_keys={"protein": "has_protein"})
    manager = model.adata_manager
    column = list(manager.modalities).index("protein")
    before = manager.presence()[:, column].copy()
    first = np.flatnonzero(before)[0]
    mdata.obs.iloc[first, mdata.obs.columns.get_loc("has_protein")] = False  # in place
    manager.check_data()
    after = manager.presence()[:, column]
    assert not after[first] and after.sum() == before.sum() - 1
    mdata.obs["has_protein"] = mdata.obs["has_protein"].astype(int)
    with pytest.raises(TypeError, match="must be boolean"):
        manager.check_data()


def test_counts_still_checked_on_every_call():
    mdata = simulate_mosaic(n_cells=80, n_genes=12, n_regions=16, n_proteins=5, seed=0)
    model = model_of(mdata)
    model.get_latent_representation()
    mdata.mod["rna"].X.data = np.log1p(mdata.mod["rna"].X.data)  # normalised in place
    with pytest.raises(ValueError, match="non-integer values"):
        model.get_latent_representation()


def test_the_cache_keeps_no_replaced_modality_alive():
    mdata = simulate_mosaic(n_cells=80, n_genes=12, n_regions=16, n_proteins=5, seed=0)
    model = model_of(mdata)
    old = weakref.ref(mdata.mod["rna"])
    mdata.mod["rna"] = mdata.mod["rna"].copy()
    mdata.update()
    gc.collect()
    assert old() is None  # the old AnnData is gone although the cache saw it
    model.get_latent_representation()


def test_a_new_mudata_gets_its_own_facts():
    mdata = simulate_mosaic(n_cells=80, n_genes=12, n_regions=16, n_proteins=5, seed=0)
    model = model_of(mdata)
    half = md.MuData({k: a[: a.n_obs // 2].copy() for k, a in mdata.mod.items()})
    half.obs["batch"] = mdata.obs.loc[half.obs_names, "batch"].astype(str).values
    z = model.get_latent_representation(half)
    assert z.shape[0] == half.n_obs
    assert model.get_anndata_manager(half).presence().shape[0] == half.n_obs
    assert model.adata_manager.presence().shape[0] == mdata.n_obs
