"""Throughput at scale: MosaicVI against MULTIVI on SNARE-seq tiled to many cells, CPU or GPU.

Every run is a fresh Python process that reads the full SNARE-seq data (10,309 cells,
1,677 genes, 25,734 peaks), tiles it ``--tile`` times (each copy of a cell keeps its counts and
batch; ``--tile 10`` gives 103,090 cells, ``--tile 100`` 1,030,900) and either trains the model
for ``--epochs`` epochs or only iterates its training data loader for one epoch (moving each
minibatch to the device), with the same batch size and thread count for every model. Runs
alternate between the models. Reported: seconds per training epoch (epochs after the first),
cells per second, the data loader's cells per second alone, peak resident memory and peak GPU
memory.

    python benchmarks/scale.py [--tile 10] [--batch-size 1024] [--epochs 3] [--repeats 1]
        [--models MosaicVI MULTIVI] [--output scale_gpu] [--quick]

Writes ``benchmarks/results/<output>.json``.
"""

from __future__ import annotations

import argparse
import json
import time

import _common as C
import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from speed import EpochTimer

MODELS = ("MosaicVI", "MULTIVI")


def tile(mdata: md.MuData, n: int) -> md.MuData:
    """``n`` copies of every cell (names suffixed ``-k``), every modality, batches kept."""
    if n == 1:
        return mdata
    mods = {}
    for name, adata in mdata.mod.items():
        x = sp.vstack([sp.csr_matrix(adata.X)] * n, format="csr")
        names = [f"{o}-{k}" for k in range(n) for o in adata.obs_names]
        mods[name] = ad.AnnData(x, obs=pd.DataFrame(index=names), var=adata.var[[]])
    out = md.MuData(mods)
    obs = pd.concat([mdata.obs.set_axis([f"{o}-{k}" for o in mdata.obs_names]) for k in range(n)])
    out.obs = obs.loc[out.obs_names]
    return out


def build(name: str, mdata: md.MuData, epochs: int, batch_size: int, callbacks: list):
    """Train ``name`` (``epochs`` may be 0: set up only) on ``mdata``."""
    if name == "MULTIVI":
        padded = C.pad(mdata, ["rna", "atac"], ["batch"])
        return C.train_multivi(padded, 0, epochs, batch_size=batch_size, callbacks=callbacks)
    modalities = {"rna": "rna", "atac": "atac"}
    return C.train_mosaicvi(
        mdata, modalities, 0, epochs, batch_size=batch_size, callbacks=callbacks
    )


def loader_rate(model, batch_size: int) -> float:
    """Cells per second of one pass of the model's shuffled training loader, moved to device."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loader = model._make_data_loader(
        adata=model.adata, indices=model.train_indices, batch_size=batch_size, shuffle=True
    )
    start = time.perf_counter()
    n = 0
    for tensors in loader:
        moved = [t.to(device, non_blocking=True) for t in tensors.values() if t is not None]
        n += moved[0].shape[0]
    if device == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def worker(name: str, tile_n: int, epochs: int, batch_size: int, loader_only: bool) -> dict:
    C.quiet()
    mdata = tile(C.read(C.SNARE), tile_n)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    row = {"model": name, "n_cells": int(mdata.n_obs), "batch_size": batch_size}
    if loader_only:
        model = build(name, mdata, 1, batch_size, [])  # one epoch sets up train_indices
        row["loader_cells_per_second"] = loader_rate(model, batch_size)
    else:
        timer = EpochTimer()
        model = build(name, mdata, epochs, batch_size, [timer])
        per_epoch = float(np.mean(timer.seconds[1:] if len(timer.seconds) > 1 else timer.seconds))
        row.update(
            epochs=epochs,
            n_train_cells=len(model.train_indices),
            seconds_per_epoch=per_epoch,
            cells_per_second=len(model.train_indices) / per_epoch,
            epoch_seconds=timer.seconds,
        )
    row["peak_rss_mib"] = C.peak_rss_mib()
    if torch.cuda.is_available():
        row["device"] = torch.cuda.get_device_name()
        row["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1, help="rounds over the models")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--output", default="scale")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 copy, 2 epochs")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--loader-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.tile, args.epochs, args.repeats = 1, 2, 1
    if args.worker:
        row = worker(args.worker, args.tile, args.epochs, args.batch_size, args.loader_only)
        print(json.dumps(row))
        return
    common = ["--tile", str(args.tile), "--epochs", str(args.epochs)]
    common += ["--batch-size", str(args.batch_size)]
    runs = []
    for r in range(args.repeats):
        for loader_only in (False, True):
            for name in args.models:
                extra = ["--loader-only"] if loader_only else []
                row = C.run_isolated(["benchmarks/scale.py", "--worker", name, *common, *extra])
                runs.append({"round": r, **row})
                print(runs[-1], flush=True)
    settings = {"tile": args.tile, "epochs": args.epochs, "batch_size": args.batch_size}
    print(C.write_results(args.output, {**settings, "runs": runs}, args.quick))


if __name__ == "__main__":
    main()
