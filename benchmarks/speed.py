"""Speed and memory: MosaicVI against MULTIVI on SNARE-seq, and time to converge on PBMC.

Throughput: every run is a fresh Python process (so that its peak resident memory is its
own) that reads the full SNARE-seq data (10,309 cells, 1,677 genes, 25,734 peaks) and trains
for the same number of epochs with the same batch size and thread count. Runs alternate
A B C A B C (MosaicVI default, MULTIVI, MosaicVI with ``subset_reconstruction="own"``).
Reported: training seconds per epoch (epochs after the first, validation excluded), cells
per second, peak resident memory and the resident memory before training.

Convergence: on PBMC, each model trains under its own default early stopping and epoch cap;
epochs run, wall time and the 15-NN label-transfer accuracy of the RNA-only donor p1.

    python benchmarks/speed.py [--repeats 2] [--epochs 2] [--quick]

Writes ``benchmarks/results/speed.json`` and regenerates ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import time

import _common as C
import numpy as np
from lightning.pytorch.callbacks import Callback

VARIANTS = {
    "MosaicVI": {},
    "MULTIVI": None,
    "MosaicVI (own subset terms)": {"subset_reconstruction": "own"},
}


class EpochTimer(Callback):
    """Wall time of each training epoch, without the validation pass."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._val = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start, self._val = time.perf_counter(), 0.0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self._val += time.perf_counter() - self._val_start

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(time.perf_counter() - self._start - self._val)


def throughput_worker(variant: str, epochs: int, n_per_batch: int | None) -> dict:
    C.quiet()
    mdata = C.read(C.SNARE)
    if n_per_batch:
        mdata = C.subsample(mdata, n_per_batch, "batch")
    timer = EpochTimer()
    rss_before = C.peak_rss_mib()
    start = time.perf_counter()
    if VARIANTS[variant] is None:
        padded = C.pad(mdata, ["rna", "atac"], ["batch"])
        model = C.train_multivi(padded, 0, epochs, callbacks=[timer])
    else:
        modalities = {"rna": "rna", "atac": "atac"}
        model = C.train_mosaicvi(
            mdata, modalities, 0, epochs, model_kwargs=VARIANTS[variant], callbacks=[timer]
        )
    n_train = len(model.train_indices)
    total = time.perf_counter() - start
    per_epoch = float(np.mean(timer.seconds[1:] if len(timer.seconds) > 1 else timer.seconds))
    return {
        "model": variant,
        "n_cells": int(mdata.n_obs),
        "n_train_cells": int(n_train),
        "epochs": epochs,
        "seconds_per_epoch": per_epoch,
        "cells_per_second": n_train / per_epoch,
        "train_seconds": total,
        "rss_before_training_mib": rss_before,
        "peak_rss_mib": C.peak_rss_mib(),
    }


def convergence_worker(variant: str, quick: bool) -> dict:
    """Train on PBMC under the model's default early stopping; p1 accuracy reached."""
    C.quiet()
    full = C.read(C.PBMC)
    if quick:
        full = C.subsample(full, 60, "batch")
    # each model's own batch size and epoch cap, under early stopping (its default for
    # MULTIVI and TOTALVI; MosaicVI, like scvi-tools' models, needs it switched on)
    defaults = {"max_epochs": 5 if quick else None, "early_stopping": True, "batch_size": None}
    start = time.perf_counter()
    if variant == "MosaicVI":
        cells = full
        modalities = {"rna": "rna", "protein": "protein"}
        model = C.train_mosaicvi(cells, modalities, 0, **defaults)
    elif variant == "MULTIVI":
        cells = C.pad(full, ["rna", "protein"], ["batch"])
        model = C.train_multivi(cells, 0, **defaults)
    else:
        rna_cells = full.obs_names[full.obs_names.isin(full["rna"].obs_names)]
        cells = C.pad(C.subset_cells(full, rna_cells), ["rna", "protein"], ["batch"])
        model = C.train_totalvi(cells, 0, **defaults)
    seconds = time.perf_counter() - start
    z = model.get_latent_representation()
    return {
        "model": variant,
        "epochs": len(model.history["elbo_train"]),
        "train_seconds": seconds,
        "p1_accuracy": C.donor_accuracy(z, full.obs.loc[cells.obs_names], "p1_0"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="rounds of A B C")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: few cells, 1 round")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--convergence-worker", help=argparse.SUPPRESS)
    parser.add_argument("--cells-per-batch", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(throughput_worker(args.worker, args.epochs, args.cells_per_batch)))
        return
    if args.convergence_worker:
        print(json.dumps(convergence_worker(args.convergence_worker, args.quick)))
        return
    repeats = 1 if args.quick else args.repeats
    extra = ["--cells-per-batch", "25"] if args.quick else []
    runs = []
    for r in range(repeats):
        for variant in VARIANTS:
            run = C.run_isolated(
                ["benchmarks/speed.py", "--worker", variant, "--epochs", str(args.epochs), *extra]
            )
            runs.append({"round": r, **run})
            print(runs[-1], flush=True)
    convergence = []
    for variant in ("MosaicVI", "MULTIVI", "TOTALVI"):
        run = C.run_isolated(
            ["benchmarks/speed.py", "--convergence-worker", variant]
            + (["--quick"] if args.quick else [])
        )
        convergence.append(run)
        print(run, flush=True)
    print(C.write_results("speed", {"throughput": runs, "convergence": convergence}, args.quick))


if __name__ == "__main__":
    main()
