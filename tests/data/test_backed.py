"""Training and getters from a backed (on-disk) h5mu, and the chunk-shuffled sampler."""

import hashlib
import tracemalloc

import mudata
import numpy as np
import pytest
import scvi
import torch
from scipy import sparse

from mosaicvi import MosaicVI
from mosaicvi.data import ChunkedBatchSampler, MosaicTorchDataset, read_rows, simulate_mosaic

MODS = {"rna": "rna", "atac": "atac", "protein": "protein"}


def _write(mdata, path):
    mdata.mod["protein"].X = np.asarray(mdata.mod["protein"].X.toarray())  # dense on disk too
    mdata.write(path)
    return path


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _train(mdata, seed=0):
    scvi.settings.seed = seed
    MosaicVI.setup_mudata(mdata, modalities=MODS, batch_key="batch")
    model = MosaicVI(mdata, n_latent=4, n_hidden=16)
    model.train(
        max_epochs=2,
        batch_size=32,
        enable_progress_bar=False,
        chunk_size=8,
    )
    return model


def test_backed_training_matches_in_memory_and_leaves_the_file_alone(tmp_path):
    path = _write(
        simulate_mosaic(n_cells=150, n_genes=20, n_regions=30, n_proteins=6, seed=4),
        tmp_path / "data.h5mu",
    )
    before = _digest(path)
    in_memory = _train(mudata.read_h5mu(path))
    backed_data = mudata.read_h5mu(path, backed=True)
    assert not sparse.issparse(backed_data["atac"].X)  # really on disk
    backed = _train(backed_data)
    for key in ("elbo_train", "reconstruction_loss_train", "kl_local_train"):
        np.testing.assert_allclose(
            backed.history[key].to_numpy(dtype=float),
            in_memory.history[key].to_numpy(dtype=float),
            rtol=1e-5,
        )
    np.testing.assert_allclose(
        backed.get_latent_representation(),
        in_memory.get_latent_representation(),
        rtol=1e-4,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        backed.get_protein_expression(return_numpy=True),
        in_memory.get_protein_expression(return_numpy=True),
        rtol=1e-4,
    )
    sample = backed.posterior_predictive_sample(modality="atac", n_samples=1)
    assert sample.shape == (150, 30)
    backed_data.file.close()
    assert _digest(path) == before


def test_backed_input_is_checked_like_in_memory(tmp_path):
    mdata = simulate_mosaic(n_cells=60, n_genes=10, n_regions=12, n_proteins=4, seed=0)
    x = mdata.mod["rna"].X.tocsr()
    x.data[0] = -1.0
    mdata.mod["rna"].X = x
    path = _write(mdata, tmp_path / "bad.h5mu")
    for data in (mudata.read_h5mu(path), mudata.read_h5mu(path, backed=True)):
        with pytest.raises(ValueError, match=r"mdata.mod\['rna'\].X contains negative values"):
            MosaicVI.setup_mudata(data, modalities=MODS, batch_key="batch")


def test_read_rows_any_order_from_disk(tmp_path):
    mdata = simulate_mosaic(n_cells=80, n_genes=10, n_regions=25, n_proteins=5, seed=2)
    path = _write(mdata, tmp_path / "rows.h5mu")
    backed = mudata.read_h5mu(path, backed=True)
    rows = np.array([7, 3, 3, 0, 8, 9, 10, 2])
    for mod in ("atac", "protein"):
        expected = mdata.mod[mod].X[rows]
        got = read_rows(backed.mod[mod].X, rows)
        expected = expected.toarray() if sparse.issparse(expected) else expected
        got = got.toarray() if sparse.issparse(got) else got
        np.testing.assert_array_equal(got, expected)


def test_chunked_sampler_covers_every_cell_once_in_few_runs():
    indices = np.random.default_rng(0).permutation(1000)[:700]  # a shuffled training split
    sampler = ChunkedBatchSampler(indices, batch_size=64, chunk_size=16)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 11
    positions = np.concatenate(batches)
    assert sorted(positions) == list(range(700))
    for batch in batches:
        cells = np.sort(indices[batch])
        # a 64-cell minibatch is at most 5 runs of cells consecutive in the split (4 chunks of
        # 16, one of them split across minibatches once the short last chunk shifts them)
        split_rank = np.searchsorted(np.sort(indices), cells)
        assert (np.diff(split_rank) != 1).sum() <= 4
    assert len(list(ChunkedBatchSampler(indices, 64, 16, drop_last=True))) == 10
    with pytest.raises(ValueError, match="chunk_size"):
        ChunkedBatchSampler(indices, 64, 0)


def test_chunked_sampler_splits_minibatches_between_replicas():
    indices = np.arange(700)
    ranks = [ChunkedBatchSampler(indices, 64, 16, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    # a DistributedSampler: Lightning must not wrap it in its own split (issue 24)
    assert isinstance(ranks[0], torch.utils.data.DistributedSampler)
    orders = []
    for epoch in (0, 1):
        for sampler in ranks:
            sampler.set_epoch(epoch)
        batches = [list(s) for s in ranks]
        # 700 cells in 2 x 6 minibatches of 58-59 cells: both ranks run 6 steps and every
        # cell is seen exactly once
        assert [len(b) for b in batches] == [len(s) for s in ranks] == [6, 6]
        assert all(58 <= len(m) <= 64 for b in batches for m in b)
        seen = np.concatenate([np.concatenate(b) for b in batches])
        assert len(seen) == len(np.unique(seen)) == 700
        orders.append(seen)
    assert not np.array_equal(orders[0], orders[1])  # a new order every epoch
    dropped = [ChunkedBatchSampler(indices, 64, 16, True, 3, 2, r) for r in (0, 1)]
    assert [len(list(s)) for s in dropped] == [5, 5]  # 640 cells in full minibatches
    assert all(len(m) == 64 for s in dropped for m in s)
    evaluation = [
        ChunkedBatchSampler(indices, 64, 1, False, None, 2, r, shuffle=False) for r in (0, 1)
    ]
    seen = np.concatenate([np.concatenate(list(s)) for s in evaluation])
    assert sorted(seen) == list(range(700))
    with pytest.raises(ValueError, match="seed"):
        ChunkedBatchSampler(indices, 64, 16, num_replicas=2, rank=0)
    with pytest.raises(ValueError, match="processes"):
        ChunkedBatchSampler(np.arange(1), 64, 1, seed=0, num_replicas=2, rank=0)
    # the rank split is DistributedSampler's over the epoch's minibatches (issue 29): the
    # replica gets the minibatches DistributedSampler hands it, in order
    sampler = ChunkedBatchSampler(indices, 64, 16, seed=3, num_replicas=3, rank=1)
    mine = list(torch.utils.data.DistributedSampler(range(12), 3, 1, shuffle=False))
    everyone = sampler._minibatches()
    assert mine == [1, 4, 7, 10]
    assert [list(m) for m in sampler] == [everyone[i].tolist() for i in mine]
    # fewer cells than one full minibatch per replica, dropped: a clear error, not an epoch
    # without a step (it used to fail inside numpy when iterated)
    with pytest.raises(ValueError, match="no full minibatch"):
        ChunkedBatchSampler(indices[:50], 64, 16, True, 3, 2, 0)
    assert list(ChunkedBatchSampler(indices[:0], 64, 16, seed=3, num_replicas=2, rank=1)) == []


def _loader_peak(path, n_epochs=1):
    data = mudata.read_h5mu(path, backed=True)
    MosaicVI.setup_mudata(data, modalities=MODS, batch_key="batch")
    model = MosaicVI(data, n_latent=2, n_hidden=8)
    loader = model._make_data_loader(adata=data, batch_size=64)
    tracemalloc.start()
    for _ in range(n_epochs):
        for tensors in loader:
            assert tensors["X_atac"].shape[0] <= 64
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    data.file.close()
    return peak


def test_backed_loader_memory_does_not_grow_with_cells(tmp_path):
    peaks = {}
    for n_cells in (1000, 8000):
        mdata = simulate_mosaic(n_cells=n_cells, n_genes=5, n_regions=4000, n_proteins=3, seed=0)
        atac = mdata.mod["atac"]
        atac.X = sparse.random(
            atac.n_obs, 4000, density=0.05, format="csr", dtype=np.float32, random_state=0
        )
        atac.X.data[:] = 1.0
        peaks[n_cells] = _loader_peak(_write(mdata, tmp_path / f"{n_cells}.h5mu"))
        data_bytes = atac.X.data.nbytes + atac.X.indices.nbytes
    # 8x the cells: the ATAC matrix grows 8x (7.3 MB at 8,000 cells) but the loader's host
    # memory only by per-cell index arrays (indptr, rows, presence, batch, split: ~100 B/cell)
    assert peaks[8000] < 0.25 * data_bytes
    assert peaks[8000] < peaks[1000] + 7000 * 160


def _history(model):
    keys = ("elbo_train", "reconstruction_loss_train", "elbo_validation")
    return {k: model.history[k].to_numpy(dtype=float) for k in keys}


def test_data_on_device_gives_the_same_minibatches_and_training(monkeypatch):
    moved = []
    to_device = MosaicTorchDataset.to
    monkeypatch.setattr(
        MosaicTorchDataset,
        "to",
        lambda self, device: moved.append(device) or to_device(self, device),
    )
    mdata = simulate_mosaic(n_cells=150, n_genes=20, n_regions=30, n_proteins=6, seed=2)
    mdata.mod["protein"].X = np.asarray(mdata.mod["protein"].X.toarray())  # a dense modality
    MosaicVI.setup_mudata(mdata, modalities=MODS, batch_key="batch")
    histories = []
    for on_device in (False, True):
        scvi.settings.seed = 3
        model = MosaicVI(mdata, n_latent=4, n_hidden=16)
        model.train(
            max_epochs=2,
            batch_size=32,
            train_size=0.8,
            check_val_every_n_epoch=1,
            enable_progress_bar=False,
            accelerator="cpu",
            data_on_device=on_device,
        )
        histories.append(_history(model))
    assert moved == [torch.device("cpu")]  # once, shared by the training and validation loaders
    for key, values in histories[0].items():
        np.testing.assert_allclose(histories[1][key], values, rtol=1e-5, err_msg=key)

    manager = model.adata_manager
    host = manager.create_torch_dataset()
    device = manager.create_torch_dataset().to("cpu")
    cells = [149, 0, 7, 7, 88, 31]  # any order, repeats, cells lacking modalities
    assert not manager.presence(cells).all()
    expected, got = host[cells], device[cells]
    for key, value in expected.items():
        value = value.to_dense() if hasattr(value, "to_dense") else value
        out = got[key].to_dense() if got[key].layout != torch.strided else got[key]
        np.testing.assert_array_equal(out.numpy(), np.asarray(value), err_msg=key)


def test_data_on_device_refuses_backed_data(tmp_path):
    mdata = simulate_mosaic(n_cells=60, n_genes=10, n_regions=12, n_proteins=4, seed=0)
    backed = mudata.read_h5mu(_write(mdata, tmp_path / "data.h5mu"), backed=True)
    MosaicVI.setup_mudata(backed, modalities=MODS, batch_key="batch")
    model = MosaicVI(backed, n_latent=2, n_hidden=8)
    with pytest.raises(ValueError, match="data_on_device.*backed"):
        model.train(max_epochs=1, data_on_device=True, enable_progress_bar=False)
    backed.file.close()
