"""Throughput at scale: MosaicVI against MULTIVI (RNA + ATAC) or TOTALVI (RNA + protein).

Every run is a fresh Python process with the same batch size and thread count for every model;
runs alternate between the models. Data (``--data``):

- ``snare``: the full SNARE-seq data (10,309 cells, 1,677 genes, 25,734 peaks, about 99 open
  per cell), tiled ``--tile`` times (each copy of a cell keeps its counts and batch;
  ``--tile 10`` gives 103,090 cells, ``--tile 100`` 1,030,900);
- ``peaks100k``: SNARE-seq's RNA with a simulated ATAC matrix of 100,000 peaks (see
  :func:`simulate_peaks`: about 1,200 open per cell, cell-type structure from SNARE-seq's
  labels), tiled likewise;
- ``pbmc``: the PBMC mosaic's cells with RNA (1,200: donors p1, p3, p4; p1 without protein;
  500 genes, 224 proteins), the cells TOTALVI can model, tiled likewise;
- ``cite20k``: those cells with 20,000 simulated genes (:func:`simulate_genes`) and their
  real protein.

``--cells-per-batch N`` first keeps ``N`` cells of each library or donor (issue 24's protocol:
``--cells-per-batch 250`` gives 3,000 SNARE-seq cells).

Models: ``MosaicVI`` (its defaults; ``--closed-samples K`` trains it with
``atac_closed_samples=K`` instead), ``MosaicVI-exact`` (``atac_closed_cells=None,
subset_terms="all"``, the exact objective, the defaults before issue 24) and scvi-tools'
``MULTIVI`` or ``TOTALVI`` (on the padded MuData they need; by default the one that fits the
data). Each run either trains for ``--epochs`` epochs or only iterates the training data
loader for one epoch (moving each minibatch to the device). Reported: seconds per training
epoch (epochs after the first), cells per second, the loader's cells per second alone, peak
resident memory and peak GPU memory. With ``--budget-seconds S`` each model instead trains on
SNARE-seq (``--tile 1``) for ``S`` seconds of wall clock (Lightning's ``max_time``) and its
latent is scored with scIB (the integration benchmark's metrics): the quality bought with
equal time. ``--data-on-device`` trains the MosaicVI models with ``data_on_device=True`` (the
loader-only rate is unchanged).

At 1M cells an epoch on 2 CPU cores takes far too long: ``--train-batches N`` limits each
epoch (and the loader pass) to ``N`` minibatches, which times a step on the full-size data.
``--backed PATH`` writes the data to ``PATH`` once (in its own process) and each MosaicVI run
trains from ``mudata.read_h5mu(PATH, backed=True)``, then computes the latent of every cell
from the file; its peak RSS is then the out-of-core figure (MULTIVI and TOTALVI are left out:
they need the padded data in memory). The file is left at ``PATH``.

    python benchmarks/scale.py [--data snare] [--tile 10] [--batch-size 1024] [--epochs 3]
        [--repeats 1] [--models MosaicVI MosaicVI-exact MULTIVI] [--closed-samples K]
        [--budget-seconds S] [--data-on-device] [--cells-per-batch N] [--train-batches N]
        [--backed PATH] [--output scale_gpu] [--quick]

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

from mosaicvi.data._backed import csr_indptr

MODELS = ("MosaicVI", "MosaicVI-exact", "MULTIVI", "TOTALVI")
DATA = ("snare", "peaks100k", "pbmc", "cite20k")
#: data sets of RNA + protein (compared with TOTALVI); the others are RNA + ATAC (MULTIVI)
CITE = ("pbmc", "cite20k")
#: MosaicVI's training options before issue 24 (exact ATAC likelihood, every subset term)
EXACT = {"atac_closed_cells": None, "subset_terms": "all"}


def simulate_peaks(
    mdata: md.MuData, n_peaks: int = 100_000, open_per_cell: float = 1200.0, seed: int = 0
) -> md.MuData:
    """SNARE-seq's RNA with a simulated ATAC matrix of ``n_peaks`` peaks.

    Each cell type (SNARE-seq's labels) opens peak ``j`` with probability proportional to
    ``base_j * effect_tj``: ``base`` log-normal (sd 1) shared by all types, ``effect`` 4 for a
    random 5 % of peaks per type and 1 otherwise. A cell opens ``Poisson(open_per_cell * s)``
    peaks (``s`` log-normal, sd 0.5, mean 1: sequencing depth), drawn from its type's
    probabilities with replacement and deduplicated: realistic 10x multiome sparsity (about
    1 % of peaks open) with type structure, at 8 bytes per open peak.
    """
    rng = np.random.default_rng(seed)
    labels = mdata.obs["cell_type"].astype("category")
    base = rng.lognormal(0.0, 1.0, n_peaks)
    effect = np.where(rng.random((len(labels.cat.categories), n_peaks)) < 0.05, 4.0, 1.0)
    cumulative = np.cumsum(base * effect, axis=1)
    cumulative /= cumulative[:, -1:]
    depth = rng.lognormal(-0.125, 0.5, mdata.n_obs)
    counts = rng.poisson(open_per_cell * depth)
    codes = labels.cat.codes.to_numpy()
    indices = []
    for i in range(mdata.n_obs):
        draws = np.searchsorted(cumulative[codes[i]], rng.random(counts[i]))
        indices.append(np.unique(np.minimum(draws, n_peaks - 1)))
    indptr = np.concatenate([[0], np.cumsum([len(j) for j in indices])])
    x = sp.csr_matrix(
        (np.ones(indptr[-1], dtype=np.float32), np.concatenate(indices), indptr),
        shape=(mdata.n_obs, n_peaks),
    )
    atac = ad.AnnData(
        x,
        obs=pd.DataFrame(index=mdata.obs_names),
        var=pd.DataFrame(index=[f"peak{j}" for j in range(n_peaks)]),
    )
    out = md.MuData({"rna": mdata["rna"][mdata.obs_names].copy(), "atac": atac})
    out.obs = mdata.obs.loc[out.obs_names]
    return out


def pbmc_with_rna(mdata: md.MuData) -> md.MuData:
    """The PBMC mosaic's cells with RNA (donors p1, p3, p4; p1 without protein): the cells
    TOTALVI can model (it needs RNA in every cell)."""
    return C.subset_cells(mdata, mdata.obs_names[mdata.obs_names.isin(mdata["rna"].obs_names)])


def simulate_genes(mdata: md.MuData, n_genes: int = 20_000, seed: int = 0) -> md.MuData:
    """The PBMC cells with RNA, their RNA replaced by ``n_genes`` simulated genes.

    Negative binomial counts (inverse dispersion 2) with means ``library * base_g *
    effect_tg / sum``: ``base`` log-normal (sd 1.5), ``effect`` 4 for a random 5 % of genes
    per cell type (PBMC's labels) and 1 otherwise, ``library`` log-normal around 4,000 UMIs
    (sd 0.5); a whole-transcriptome panel at realistic sparsity (about 7 % non-zero). Protein
    and presence are PBMC's own.
    """
    rng = np.random.default_rng(seed)
    rna = mdata["rna"]
    labels = mdata.obs.loc[rna.obs_names, "celltype"].astype("category")
    base = rng.lognormal(0.0, 1.5, n_genes)
    effect = np.where(rng.random((len(labels.cat.categories), n_genes)) < 0.05, 4.0, 1.0)
    profile = base * effect
    profile /= profile.sum(1, keepdims=True)
    library = rng.lognormal(np.log(4000.0), 0.5, rna.n_obs)
    mean = library[:, None] * profile[labels.cat.codes.to_numpy()]
    counts = rng.negative_binomial(2.0, 2.0 / (2.0 + mean)).astype(np.float32)
    x = sp.csr_matrix(counts)
    genes = ad.AnnData(
        x, obs=rna.obs[[]].copy(), var=pd.DataFrame(index=[f"gene{g}" for g in range(n_genes)])
    )
    out = md.MuData({"rna": genes, "protein": mdata["protein"]})
    out.obs = mdata.obs.loc[out.obs_names]
    return out


def tile(mdata: md.MuData, n: int) -> md.MuData:
    """``n`` copies of every cell (names suffixed ``-k``), every modality, batches kept."""
    if n == 1:
        return mdata
    mods = {}
    for name, adata in mdata.mod.items():
        x = sp.vstack([sp.csr_matrix(adata.X)] * n, format="csr")
        x = x.toarray() if name == "protein" else x  # panels are small, stored dense
        names = [f"{o}-{k}" for k in range(n) for o in adata.obs_names]
        mods[name] = ad.AnnData(x, obs=pd.DataFrame(index=names), var=adata.var[[]])
    out = md.MuData(mods)
    obs = pd.concat([mdata.obs.set_axis([f"{o}-{k}" for o in mdata.obs_names]) for k in range(n)])
    out.obs = obs.loc[out.obs_names]
    return out


def build(name: str, mdata: md.MuData, epochs: int, batch_size: int, **train_kwargs):
    """Train ``name`` on ``mdata`` for ``epochs`` epochs (or what ``train_kwargs`` allow)."""
    mods = ["rna", "protein"] if "protein" in mdata.mod else ["rna", "atac"]
    if name == "MULTIVI":
        padded = C.pad(mdata, mods, ["batch"])
        return C.train_multivi(padded, 0, epochs, batch_size=batch_size, **train_kwargs)
    if name == "TOTALVI":
        padded = C.pad(mdata, mods, ["batch"])
        return C.train_totalvi(padded, 0, epochs, batch_size=batch_size, **train_kwargs)
    modalities = {m: m for m in mods}
    options = dict(EXACT) if name == "MosaicVI-exact" else {}
    if CLOSED_SAMPLES is not None and name == "MosaicVI" and "atac" in mods:
        options["atac_closed_samples"] = CLOSED_SAMPLES
    if DATA_ON_DEVICE:
        train_kwargs["data_on_device"] = True
    return C.train_mosaicvi(
        mdata, modalities, 0, epochs, model_kwargs=options, batch_size=batch_size, **train_kwargs
    )


#: ``atac_closed_samples`` of ``MosaicVI`` (``--closed-samples``; ``None``: its default)
CLOSED_SAMPLES = None
#: MosaicVI models train with ``data_on_device=True`` (``--data-on-device``)
DATA_ON_DEVICE = False


def loader_rate(model, batch_size: int, max_batches: int | None = None) -> float:
    """Cells per second of the model's shuffled training loader (``max_batches`` of it, or one
    pass), each minibatch moved to the device."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loader = model._make_data_loader(
        adata=model.adata, indices=model.train_indices, batch_size=batch_size, shuffle=True
    )
    start = time.perf_counter()
    n = 0
    for i, tensors in enumerate(loader):
        if max_batches is not None and i == max_batches:
            break
        moved = [t.to(device, non_blocking=True) for t in tensors.values() if t is not None]
        n += moved[0].shape[0]  # dense or sparse CSR
    if device == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def stored_values(x) -> int:
    """Stored (non-zero) entries of a sparse matrix, in memory or backed."""
    return int(x.nnz) if sp.issparse(x) else int(csr_indptr(x)[-1])


def make_data(args: argparse.Namespace) -> md.MuData:
    """The run's data in memory (``--data``, ``--tile``, ``--cells-per-batch``)."""
    source = C.read(C.PBMC if args.data in CITE else C.SNARE)
    if args.cells_per_batch:  # --quick: a few cells of each library
        source = C.subsample(source, args.cells_per_batch, "batch")
    make = {
        "snare": lambda m: m,
        "peaks100k": simulate_peaks,
        "pbmc": pbmc_with_rna,
        "cite20k": lambda m: simulate_genes(pbmc_with_rna(m)),
    }[args.data]
    return tile(make(source), args.tile)


def quality(name: str, budget_seconds: float, batch_size: int) -> dict:
    """scIB scores of ``name`` trained on SNARE-seq for ``budget_seconds`` of wall clock."""
    mdata = C.read(C.SNARE)
    timer = EpochTimer()
    start = time.perf_counter()
    model = build(
        name, mdata, 10_000, batch_size, callbacks=[timer], max_time={"seconds": budget_seconds}
    )
    seconds = time.perf_counter() - start
    # MULTIVI's latent follows its padded MuData's cells: align everything on them
    position = mdata.obs_names.get_indexer(model.adata.obs_names)
    obs = mdata.obs.iloc[position][["batch", "cell_type"]]
    pca = C.concatenated_pca(mdata)[position]
    z = np.asarray(model.get_latent_representation())
    scores = C.scib_scores({name: z}, obs, "batch", "cell_type", pca)[name]
    return {"train_seconds": seconds, "epochs_done": len(timer.seconds), **scores}


def worker(name: str, args: argparse.Namespace) -> dict:
    """One run of ``name`` in this (fresh) process; ``--backed`` reads the data from the file."""
    C.quiet()
    mdata = md.read_h5mu(args.backed, backed=True) if args.backed else make_data(args)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    batch_size, limit = args.batch_size, args.train_batches
    row = {
        "model": name,
        "data": args.data,
        "backed": bool(args.backed),
        "n_cells": int(mdata.n_obs),
        "n_genes": int(mdata["rna"].n_vars),
        "batch_size": batch_size,
        "train_batches": limit,
    }
    if args.loader_only:
        model = build(name, mdata, 1, batch_size, limit_train_batches=1)  # sets train_indices
        row["loader_cells_per_second"] = loader_rate(model, batch_size, limit)
    else:
        timer = EpochTimer()
        limits = {"limit_train_batches": limit} if limit else {}
        model = build(name, mdata, args.epochs, batch_size, callbacks=[timer], **limits)
        per_epoch = float(np.mean(timer.seconds[1:] if len(timer.seconds) > 1 else timer.seconds))
        n_train = len(model.train_indices)
        cells = min(n_train, limit * batch_size) if limit else n_train
        row.update(
            epochs=args.epochs,
            n_train_cells=n_train,
            cells_per_epoch=cells,
            seconds_per_epoch=per_epoch,
            cells_per_second=cells / per_epoch,
            epoch_seconds=timer.seconds,
        )
        if args.backed:  # a getter over every cell, read from the file
            start = time.perf_counter()
            model.get_latent_representation(batch_size=batch_size)
            row["latent_seconds"] = time.perf_counter() - start
    if "atac" in mdata.mod:
        row["n_peaks"] = int(mdata["atac"].n_vars)
        row["open_per_cell"] = stored_values(mdata["atac"].X) / mdata["atac"].n_obs
    else:
        row["n_proteins"] = int(mdata["protein"].n_vars)
    row["peak_rss_mib"] = C.peak_rss_mib()
    if torch.cuda.is_available():
        row["device"] = torch.cuda.get_device_name()
        row["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def main() -> None:
    global CLOSED_SAMPLES, DATA_ON_DEVICE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="snare", choices=DATA)
    parser.add_argument("--closed-samples", type=int, default=None)
    parser.add_argument("--budget-seconds", type=float, default=None)
    parser.add_argument("--data-on-device", action="store_true")
    parser.add_argument("--tile", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=1, help="rounds over the models")
    parser.add_argument(
        "--models", nargs="+", default=None, choices=MODELS, help="default: by --data"
    )
    parser.add_argument("--output", default="scale")
    parser.add_argument("--cells-per-batch", type=int, default=None, help="subsample SNARE-seq")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 25 cells per library, 2 epochs"
    )
    parser.add_argument(
        "--train-batches", type=int, default=None, help="minibatches per epoch (1M cells)"
    )
    parser.add_argument(
        "--backed", default=None, help="h5mu written from the data, then trained from disk"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--write", help=argparse.SUPPRESS)
    parser.add_argument("--loader-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    CLOSED_SAMPLES, DATA_ON_DEVICE = args.closed_samples, args.data_on_device
    if args.models is None:
        rival = "TOTALVI" if args.data in CITE else "MULTIVI"
        args.models = ["MosaicVI", "MosaicVI-exact", rival]
    if args.quick:
        args.tile, args.epochs, args.repeats, args.cells_per_batch = 1, 2, 1, 25
    if args.write:
        C.quiet()
        make_data(args).write(args.write)
        print(json.dumps({"written": args.write}))
        return
    if args.worker:
        if args.budget_seconds is not None:
            row = {"model": args.worker, "batch_size": args.batch_size}
            row.update(quality(args.worker, args.budget_seconds, args.batch_size))
        else:
            row = worker(args.worker, args)
        print(json.dumps(row))
        return
    common = ["--data", args.data, "--tile", str(args.tile), "--epochs", str(args.epochs)]
    common += ["--batch-size", str(args.batch_size)]
    if CLOSED_SAMPLES is not None:
        common += ["--closed-samples", str(CLOSED_SAMPLES)]
    if args.budget_seconds is not None:
        common += ["--budget-seconds", str(args.budget_seconds)]
    if args.data_on_device:
        common += ["--data-on-device"]
    if args.cells_per_batch:
        common += ["--cells-per-batch", str(args.cells_per_batch)]
    if args.train_batches:
        common += ["--train-batches", str(args.train_batches)]
    if args.backed:  # written once, in its own process, so no worker holds it in memory
        C.run_isolated(["benchmarks/scale.py", "--write", args.backed, *common])
        common += ["--backed", args.backed]
        args.models = [m for m in args.models if m not in ("MULTIVI", "TOTALVI")]  # padded
    runs = []
    for r in range(args.repeats):
        for loader_only in (False,) if args.budget_seconds is not None else (False, True):
            for name in args.models:
                extra = ["--loader-only"] if loader_only else []
                row = C.run_isolated(["benchmarks/scale.py", "--worker", name, *common, *extra])
                runs.append({"round": r, **row})
                print(runs[-1], flush=True)
    settings = {
        "data": args.data,
        "tile": args.tile,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "closed_samples": CLOSED_SAMPLES,
        "budget_seconds": args.budget_seconds,
        "data_on_device": args.data_on_device,
        "cells_per_batch": args.cells_per_batch,
        "train_batches": args.train_batches,
        "backed": bool(args.backed),
    }
    print(C.write_results(args.output, {**settings, "runs": runs}, args.quick))


if __name__ == "__main__":
    main()
