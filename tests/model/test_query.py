"""Reference mapping (issue 17): load_query_data / prepare_query_mudata on mosaic queries."""

import mudata as md
import numpy as np
import pytest
import scvi
import torch

from mosaicvi import MosaicVI
from mosaicvi.data import simulate_mosaic
from mosaicvi.metrics import knn_label_transfer_accuracy
from mosaicvi.model._query_weights import _covariate_columns

ALL = {"rna": "rna", "atac": "atac", "protein": "protein"}


def _relabel(mdata: md.MuData, prefix: str) -> md.MuData:
    """The same cells renamed and moved to new batches (a new lab's sample)."""
    mods = {}
    for name, adata in mdata.mod.items():
        adata = adata.copy()
        adata.obs_names = prefix + adata.obs_names
        mods[name] = adata
    out = md.MuData(mods)
    obs = mdata.obs.copy()
    obs.index = prefix + obs.index
    obs["batch"] = prefix + obs["batch"].astype(str)
    out.obs = obs.loc[out.obs_names]
    return out


def _rna_only(mdata: md.MuData) -> md.MuData:
    out = md.MuData({"rna": mdata["rna"].copy()})
    out.obs = mdata.obs.loc[out.obs_names].copy()
    return out


@pytest.fixture(scope="module")
def reference():
    scvi.settings.seed = 0
    mdata = simulate_mosaic(n_cells=280, n_genes=30, n_regions=40, n_proteins=8, seed=0)
    MosaicVI.setup_mudata(mdata, modalities=ALL, batch_key="batch")
    model = MosaicVI(mdata, n_latent=5, n_hidden=32)
    model.train(max_epochs=5, batch_size=64, enable_progress_bar=False)
    return model, mdata


@pytest.fixture
def rna_query():
    return _rna_only(
        _relabel(simulate_mosaic(n_cells=140, n_genes=30, n_regions=40, n_proteins=8, seed=5), "q")
    )


def assert_frozen_entries_are_the_reference(after: dict, reference_state: dict) -> None:
    """Every entry the reference had is bit-identical (new batches' entries may differ)."""
    for key, value in after.items():
        old = reference_state[key]
        if value.shape == old.shape:
            assert torch.equal(value, old), key  # frozen: exactly the reference's
        elif value.dim() == 2 and value.shape[0] == old.shape[0] and key.endswith("weight"):
            # a covariate-injected layer: the reference's columns in place, the new ones learnt
            cols = _covariate_columns(value.shape[1], [2], [4])
            assert torch.equal(value[:, cols], old), key
        else:
            part = tuple(slice(0, n) for n in old.shape)
            if "plugin" not in key:  # plug-ins of batches that never had a modality are pinned
                assert torch.equal(value[part], old), key


def test_rna_only_query_trains_only_the_new_batch_and_keeps_the_reference(reference, rna_query):
    model, mdata = reference
    query_obs = rna_query.obs.copy()
    prepared = MosaicVI.prepare_query_mudata(rna_query, model)
    assert set(prepared.mod) == {"rna", "atac", "protein"}
    assert prepared["atac"].n_obs == prepared["protein"].n_obs == 0
    assert prepared["rna"] is rna_query["rna"]  # same features: not copied
    assert list(rna_query.mod) == ["rna"] and rna_query.obs.equals(query_obs)

    query = MosaicVI.load_query_data(prepared, model)
    assert query.adata_manager.batch_categories() == ["batch0", "batch1", "qbatch0", "qbatch1"]
    before = {k: v.clone() for k, v in query.module.state_dict().items()}
    reference_state = model.module.state_dict()
    query.train(max_epochs=3, batch_size=32, enable_progress_bar=False)
    after = query.module.state_dict()
    trained = {k for k in before if not torch.equal(before[k], after[k])}
    assert trained, "nothing was trained"
    assert_frozen_entries_are_the_reference(after, reference_state)
    new_columns = after["heads.rna.body.layers.0.fc_layers.Layer 0.0.weight"][:, -2:]
    assert new_columns.abs().sum() > 0  # the query batches' columns were learnt from zero

    z_ref = model.get_latent_representation()
    np.testing.assert_array_equal(query.get_latent_representation(adata=mdata), z_ref)
    np.testing.assert_array_equal(
        query.get_normalized_expression(adata=mdata, transform_batch="batch0").to_numpy(),
        model.get_normalized_expression(transform_batch="batch0").to_numpy(),
    )
    assert query.measured_batches_["rna"] == ["batch0", "batch1", "qbatch0", "qbatch1"]
    assert query.measured_batches_["protein"] == ["batch0", "batch1"]
    protein = query.get_protein_expression()
    n = rna_query.n_obs
    assert protein.shape == (n, 8) and np.isfinite(protein.to_numpy()).all()
    assert query.get_latent_representation().shape == (n, 5)


def test_unfrozen_query_fine_tunes_the_reference(reference, rna_query):
    model, _ = reference
    query = MosaicVI.load_query_data(
        MosaicVI.prepare_query_mudata(rna_query, model), model, unfrozen=True
    )
    key = "heads.rna.expert.body.layers.0.fc_layers.Layer 0.0.weight_x"  # the genes' part
    query.train(max_epochs=2, batch_size=32, enable_progress_bar=False)
    assert not torch.equal(query.module.state_dict()[key], model.module.state_dict()[key])


def test_query_from_a_saved_reference_equals_the_in_memory_one(reference, rna_query, tmp_path):
    model, _ = reference
    model.save(tmp_path / "ref")
    prepared = MosaicVI.prepare_query_mudata(rna_query, str(tmp_path / "ref"))
    from_disk = MosaicVI.load_query_data(prepared, tmp_path / "ref")
    in_memory = MosaicVI.load_query_data(MosaicVI.prepare_query_mudata(rna_query, model), model)
    for key, value in in_memory.module.state_dict().items():
        assert torch.equal(value, from_disk.module.state_dict()[key]), key


def test_new_batch_columns_go_in_the_batch_block_with_categorical_covariates():
    # input [10 features, batch (2 -> 3), covariate (3 -> 3)]: old columns keep their meaning
    cols = _covariate_columns(10 + 3 + 3, [2, 3], [3, 3])
    np.testing.assert_array_equal(cols, [*range(10), 10, 11, 13, 14, 15])
    # a single reference batch had no column (scvi-tools' FCLayers): both are new
    np.testing.assert_array_equal(_covariate_columns(12, [1], [2]), range(10))

    scvi.settings.seed = 0
    mdata = simulate_mosaic(n_cells=140, n_genes=20, n_regions=30, n_proteins=6, seed=0)
    mdata.obs["site"] = np.where(np.arange(mdata.n_obs) % 3 == 0, "a", "b")
    MosaicVI.setup_mudata(
        mdata, modalities=ALL, batch_key="batch", categorical_covariate_keys=["site"]
    )
    model = MosaicVI(mdata, n_latent=4, n_hidden=16, encode_covariates=True)
    model.train(max_epochs=2, batch_size=32, enable_progress_bar=False)
    query = _relabel(
        simulate_mosaic(n_cells=70, n_genes=20, n_regions=30, n_proteins=6, seed=3), "q"
    )
    query.obs["site"] = "b"
    mapped = MosaicVI.load_query_data(query, model)  # every modality: no preparation needed
    mapped.train(max_epochs=1, batch_size=32, enable_progress_bar=False)
    # with the new batch's columns misplaced, the reference cells' latent would change
    np.testing.assert_array_equal(
        mapped.get_latent_representation(adata=mdata), model.get_latent_representation()
    )


def test_prepare_query_mudata_aligns_features_without_touching_the_query(reference, rna_query):
    model, _ = reference
    rna = rna_query["rna"]
    partial = md.MuData({"rna": rna[:, 10:].copy()})  # 10 of 30 genes missing
    partial.obs = rna_query.obs.loc[partial.obs_names].copy()
    before = partial["rna"].X.copy()
    with pytest.warns(UserWarning, match="only 67% of the reference's features"):
        prepared = MosaicVI.prepare_query_mudata(partial, model)
    np.testing.assert_array_equal(prepared["rna"].var_names, model.get_var_names()["rna"])
    x = prepared["rna"].X.toarray()
    assert (x[:, :10] == 0).all()
    np.testing.assert_array_equal(
        x[:, 10:], before.toarray() if hasattr(before, "toarray") else before
    )
    assert partial["rna"].n_vars == 20  # the user's MuData is unchanged
    names = MosaicVI.prepare_query_mudata(partial, model, return_reference_var_names=True)
    assert list(names) == ["rna", "atac", "protein"]


def test_query_errors_name_the_fix(reference, rna_query):
    model, _ = reference
    with pytest.raises(ValueError, match="prepare_query_mudata"):
        MosaicVI.load_query_data(rna_query, model)  # lacks atac and protein
    prepared = MosaicVI.prepare_query_mudata(rna_query, model)
    mods = dict(prepared.mod)
    mods["rna"] = rna_query["rna"][:, 3:].copy()  # 3 genes missing
    fewer_genes = md.MuData(mods)
    fewer_genes.obs = rna_query.obs.loc[fewer_genes.obs_names].copy()
    with pytest.raises(ValueError, match="3 missing.*prepare_query_mudata"):
        MosaicVI.load_query_data(fewer_genes, model)
    with pytest.raises(ValueError, match="nothing to train"):
        MosaicVI.load_query_data(model.adata, model)  # the reference's own batches
    with pytest.raises(TypeError, match="reference_model"):
        MosaicVI.load_query_data(rna_query, object())
    untrained = MosaicVI(model.adata, n_latent=5, n_hidden=32)
    with pytest.raises(ValueError, match="not trained"):
        MosaicVI.prepare_query_mudata(rna_query, untrained)
    prepared = MosaicVI.prepare_query_mudata(rna_query, model)
    for option in ("unfrozen", "freeze_dropout"):
        with pytest.raises(TypeError, match=f"`{option}` must be True or False"):
            MosaicVI.load_query_data(prepared, model, **{option: "no"})
    renamed = rna_query["rna"].copy()
    renamed.var_names = "other_" + renamed.var_names
    no_match = md.MuData({"rna": renamed})
    no_match.obs = rna_query.obs.loc[no_match.obs_names].copy()
    with pytest.raises(ValueError, match="none of the reference's 30 features"):
        MosaicVI.prepare_query_mudata(no_match, model)
    other = md.MuData({"adt": rna_query["rna"].copy()})
    with pytest.raises(ValueError, match="none of the reference's modalities"):
        MosaicVI.prepare_query_mudata(other, model)


@pytest.mark.parametrize(
    "plan_kwargs",
    [{"weight_decay": 1e-2}, {"optimizer": "AdamW", "weight_decay": 1e-2, "lr": 1e-2}],
)
def test_frozen_reference_is_bit_identical_whatever_the_optimizer(
    reference, rna_query, plan_kwargs
):
    """Weight decay acts on every entry of a tensor with new entries, inside the optimizer
    step; the frozen entries must still be exactly the reference's after training."""
    model, mdata = reference
    query = MosaicVI.load_query_data(MosaicVI.prepare_query_mudata(rna_query, model), model)
    query.train(max_epochs=3, batch_size=32, plan_kwargs=plan_kwargs, enable_progress_bar=False)
    assert_frozen_entries_are_the_reference(query.module.state_dict(), model.module.state_dict())
    np.testing.assert_array_equal(
        query.get_latent_representation(adata=mdata), model.get_latent_representation()
    )


def test_gradient_mask_follows_the_gradient_device(reference, rna_query):
    """The mask is moved to the gradient's device (a model loaded on CPU, trained elsewhere)."""
    model, _ = reference
    query = MosaicVI.load_query_data(MosaicVI.prepare_query_mudata(rna_query, model), model)
    guard = query._query_guards[0]
    grad = torch.ones_like(guard.param, device="meta")
    assert guard(grad).device.type == "meta"
    cpu = guard(torch.ones_like(guard.param))
    assert torch.equal(cpu == 0, guard.frozen.cpu())


def test_unusable_references_and_queries_are_refused(reference, rna_query, tmp_path):
    model, _ = reference
    untrained = MosaicVI(model.adata, n_latent=5, n_hidden=32)
    untrained.save(tmp_path / "untrained")
    for call in (MosaicVI.prepare_query_mudata, MosaicVI.load_query_data):
        with pytest.raises(ValueError, match="never trained"):
            call(rna_query, str(tmp_path / "untrained"))
    with pytest.raises(ValueError, match="no cells"):
        MosaicVI.prepare_query_mudata(rna_query[:0].copy(), model)
    rna = rna_query["rna"][:10].copy()
    rna.obs_names = ["cell"] * 10
    repeated = md.MuData({"rna": rna})
    with pytest.raises(ValueError, match="not unique.*unique name"):
        MosaicVI.prepare_query_mudata(repeated, model)
    with pytest.raises(ValueError, match="not unique.*unique name"):
        MosaicVI.load_query_data(repeated, model)


def test_pbmc_rna_only_donor_mapped_onto_a_reference_without_it(pbmc):
    """Real data: donor p1 (RNA only) mapped onto a reference of p2, p3, p4."""
    scvi.settings.seed = 0
    rna, prot = pbmc["rna"], pbmc["protein"]
    ref = md.MuData({"rna": rna[rna.obs["batch"] != "p1_0"].copy(), "protein": prot.copy()})
    ref.obs = pbmc.obs.loc[ref.obs_names, ["batch", "celltype"]].copy()
    query = md.MuData({"rna": rna[rna.obs["batch"] == "p1_0"].copy()})
    query.obs = pbmc.obs.loc[query.obs_names, ["batch", "celltype"]].copy()
    MosaicVI.setup_mudata(ref, modalities={"rna": "rna", "protein": "protein"}, batch_key="batch")
    model = MosaicVI(ref)
    model.train(max_epochs=40, enable_progress_bar=False)
    mapped = MosaicVI.load_query_data(MosaicVI.prepare_query_mudata(query, model), model)
    mapped.train(max_epochs=40, enable_progress_bar=False)
    z = np.concatenate(
        [mapped.get_latent_representation(adata=ref), mapped.get_latent_representation()]
    )
    batch = np.concatenate([ref.obs["batch"], query.obs["batch"]])
    labels = np.concatenate([ref.obs["celltype"], query.obs["celltype"]])
    accuracy = knn_label_transfer_accuracy(
        z, labels, np.isin(batch, ["p3_0", "p4_0"]), batch == "p1_0"
    )
    assert accuracy > 0.7
    protein = mapped.get_protein_expression(given=["rna"])
    cd14 = protein["cd14"].to_numpy()
    mono = query.obs["celltype"].to_numpy() == "Mono"
    assert cd14[mono].mean() > 2 * cd14[~mono].mean()  # imputed CD14 marks the monocytes
