"""Model files are data: safetensors + JSON, checksums, legacy pickles refused."""

import json
import os

import numpy as np
import pytest
import scvi
import torch
from scvi.model.base import BaseModelClass

from mosaicvi import MosaicVI
from mosaicvi.data import simulate_mosaic
from mosaicvi.model import ModelFileError, convert_legacy_model

MODS = {"rna": "rna", "atac": "atac", "protein": "protein"}


class Payload:
    """Unpickling this creates the directory ``marker``: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture(scope="module")
def trained():
    mdata = simulate_mosaic(n_cells=80, n_genes=12, n_regions=16, n_proteins=5, seed=1)
    scvi.settings.seed = 0
    MosaicVI.setup_mudata(mdata, modalities=MODS, batch_key="batch")
    model = MosaicVI(mdata, n_latent=3, n_hidden=8)
    model.train(max_epochs=1, batch_size=32, enable_progress_bar=False)
    return model, mdata


def _saved(model, path, **kwargs):
    model.save(path, **kwargs)
    return path


def test_files_are_safetensors_and_json_and_round_trip(trained, tmp_path):
    model, mdata = trained
    path = _saved(model, tmp_path / "m", save_anndata=True)
    assert sorted(os.listdir(path)) == ["mdata.h5mu", "model.json", "model.safetensors"]
    meta = json.loads((path / "model.json").read_text())
    assert meta["format"] == "mosaicvi-model-2"
    assert meta["var_names"]["protein"] == list(mdata["protein"].var_names)
    for loaded in (MosaicVI.load(path, adata=mdata), MosaicVI.load(path)):
        np.testing.assert_array_equal(
            loaded.get_latent_representation(), model.get_latent_representation()
        )
        assert loaded.init_params_ == model.init_params_
        assert loaded.measured_batches_.keys() == model.measured_batches_.keys()
        for mod, batches in model.measured_batches_.items():
            np.testing.assert_array_equal(loaded.measured_batches_[mod], batches)
        assert list(loaded.history["elbo_train"].index) == list(model.history["elbo_train"].index)
    registry = MosaicVI.load_registry(path)
    assert registry["model_name"] == "MosaicVI"
    MosaicVI.view_setup_args(path)


@pytest.mark.parametrize("name", ["model.json", "model.safetensors", "mdata.h5mu"])
def test_planted_payload_is_neither_run_nor_loaded(trained, tmp_path, name):
    model, mdata = trained
    path = _saved(model, tmp_path / "m", save_anndata=True)
    marker = tmp_path / "payload_ran"
    target = path / name
    if name == "model.json":  # a pickled payload added to the attributes
        meta = json.loads(target.read_text())
        blob = torch.serialization.pickle.dumps(Payload(marker)).hex()
        meta["attributes"]["payload_"] = blob
        target.write_text(json.dumps(meta))
    else:  # the file replaced by a pickle of the payload
        torch.save({"attr_dict": {"payload_": Payload(marker)}}, target)
    for call in (
        lambda: MosaicVI.load(path, adata=mdata),
        lambda: MosaicVI.load(path),
        lambda: MosaicVI.load_registry(path),
        lambda: MosaicVI.view_setup_args(path),
    ):
        with pytest.raises(ModelFileError, match="edited"):
            call()
    assert not marker.exists()


def test_a_flipped_weight_byte_is_detected(trained, tmp_path):
    model, mdata = trained
    path = _saved(model, tmp_path / "m")
    weights = bytearray((path / "model.safetensors").read_bytes())
    weights[-3] ^= 0x01
    (path / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(ModelFileError, match=r"model\.safetensors was edited"):
        MosaicVI.load(path, adata=mdata)


def test_forged_checksums_still_run_no_code(trained, tmp_path):
    """Checksums are not a signature: a forger can recompute them, and still no code runs."""
    from mosaicvi.model._io import _canonical, _sha256

    model, mdata = trained
    path = _saved(model, tmp_path / "m")
    marker = tmp_path / "payload_ran"
    torch.save({"payload": Payload(marker)}, path / "model.safetensors")
    meta = json.loads((path / "model.json").read_text())
    meta["files"]["model.safetensors"] = _sha256((path / "model.safetensors").read_bytes())
    meta["sha256"] = _sha256(_canonical(meta))
    (path / "model.json").write_text(json.dumps(meta))
    with pytest.raises(Exception) as err:  # safetensors cannot parse a pickle
        MosaicVI.load(path, adata=mdata)
    assert "header" in str(err.value).lower() or "safetensor" in str(err.value).lower()
    assert not marker.exists()


def _legacy(model, path, payload_marker=None):
    BaseModelClass.save(model, str(path))  # scvi-tools' pickle format
    if payload_marker is not None:
        saved = torch.load(path / "model.pt", weights_only=False)
        saved["attr_dict"]["payload_"] = Payload(payload_marker)
        torch.save(saved, path / "model.pt")
    return path


def test_legacy_pickle_is_refused_with_the_way_to_convert_it(trained, tmp_path):
    model, mdata = trained
    marker = tmp_path / "payload_ran"
    path = _legacy(model, tmp_path / "legacy", payload_marker=marker)
    for call in (
        lambda: MosaicVI.load(path, adata=mdata),
        lambda: MosaicVI.load_registry(path),
        lambda: MosaicVI.view_setup_args(path),
    ):
        with pytest.raises(ModelFileError, match="convert_legacy_model.*trust_pickled_code"):
            call()
    with pytest.raises(ModelFileError, match="trust_pickled_code=True"):
        convert_legacy_model(path, tmp_path / "converted")
    with pytest.raises(TypeError, match="convert_legacy_model.*trust_pickled_code=True"):
        MosaicVI.convert_legacy_save(path, tmp_path / "converted")  # scvi-tools' unpickles
    assert not marker.exists()


def test_trusted_legacy_model_converts_and_loads(trained, tmp_path):
    model, mdata = trained
    path = _legacy(model, tmp_path / "legacy")
    convert_legacy_model(path, tmp_path / "converted", trust_pickled_code=True)
    loaded = MosaicVI.load(tmp_path / "converted", adata=mdata)
    np.testing.assert_array_equal(
        loaded.get_latent_representation(), model.get_latent_representation()
    )


def test_missing_and_foreign_directories_get_clear_errors(trained, tmp_path):
    model, mdata = trained
    with pytest.raises(ModelFileError, match="No saved MosaicVI model"):
        MosaicVI.load(tmp_path, adata=mdata)
    path = _saved(model, tmp_path / "m")
    with pytest.raises(ValueError, match="saved without its data"):
        MosaicVI.load(path)
    (path / "model.json").write_text("not json")
    with pytest.raises(ModelFileError, match="not a MosaicVI model file"):
        MosaicVI.load(path, adata=mdata)


def test_setup_views_print(trained, capsys):
    model, _ = trained
    model.view_anndata_setup()
    out = capsys.readouterr().out
    assert "Setup via `MosaicVI." in out and "modalities" in out
