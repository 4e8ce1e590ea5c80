"""What the validation gate costs per call on an atlas-sized mosaic (issue 29, item 3).

Every getter, ``train`` and each group of a differential analysis first run the gate
(:meth:`~mosaicvi.data.MosaicDataManager.check_data`): the sampled count check, the rows of
each cell in each modality (from MuData's ``obsmap``, checked against the modalities' cell
names) and the column orders. The data: the PBMC CITE-seq mosaic (1,600 cells; RNA 500 genes,
protein 224) tiled ``--copies`` times (cell names suffixed ``-k``, batches kept), so 400
copies hold 640,000 cells (RNA 480,000, protein 480,000, 320,000 paired); CSR in memory.

Each measurement is a fresh Python process (``--baseline-src PATH`` runs the same worker with
the mosaicvi package found in ``PATH``, e.g. ``git archive <commit> src | tar -x -C /tmp/b``):
``setup_mudata``; ``MosaicVI(...)`` (which fits the protein background prior on every
protein-measured cell); ``check_data`` 5 times (the first after model creation, the others
with nothing changed); ``get_latent_representation`` of 500 cells 3 times (untrained weights: training would
take long and the gate does not read them); a one-vs-rest
differential expression of two groups of 250 cells (``batch_correction=True``,
``n_samples_overall=500``, ``all_stats=False``) with the number of ``check_data`` calls it
made; and the gate after ``mdata.mod['rna'].var_names`` is
reassigned (the cached orders must be dropped). Reported: median seconds of each.

    python benchmarks/gate_cost.py [--copies 400] [--baseline-src PATH] [--quick]

Writes ``benchmarks/results/gate_cost.json`` and regenerates ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import _common as C
import numpy as np


def tiled(copies: int):
    """The PBMC mosaic tiled ``copies`` times (new cell names, same batches and features)."""
    import anndata as ad
    import mudata as md

    base = C.read(C.PBMC)
    mods = {}
    for name, adata in base.mod.items():
        parts = []
        for k in range(copies):
            part = adata.copy()
            part.obs_names = [f"{n}-{k}" for n in adata.obs_names]
            parts.append(part)
        mods[name] = ad.concat(parts, merge="same")
    mdata = md.MuData(mods)
    rna, protein = (mdata.obs[f"{m}:batch"].astype(object) for m in ("rna", "protein"))
    mdata.obs["batch"] = rna.fillna(protein).astype(str)
    return mdata


def _median(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times)), times


def worker(copies: int) -> dict:
    """One measurement in this (fresh) process; returns the row."""
    from mosaicvi import MosaicVI

    C.quiet()
    mdata = tiled(copies)
    start = time.perf_counter()
    MosaicVI.setup_mudata(
        mdata, modalities={"rna": "rna", "protein": "protein"}, batch_key="batch"
    )
    setup = time.perf_counter() - start
    start = time.perf_counter()
    model = MosaicVI(mdata, n_latent=10, n_hidden=32)
    create = time.perf_counter() - start
    model.is_trained_ = True  # the getters at initial weights: the gate does not read them
    manager = model.adata_manager
    first = _median(manager.check_data, 1)[0]
    gate, gate_times = _median(manager.check_data, 4)
    cells = np.arange(0, mdata.n_obs, mdata.n_obs // 500)[:500]
    mdata.obs["group"] = "rest"
    mdata.obs.iloc[cells[:250], mdata.obs.columns.get_loc("group")] = "a"
    mdata.obs.iloc[cells[250:], mdata.obs.columns.get_loc("group")] = "b"
    latent, _ = _median(lambda: model.get_latent_representation(indices=cells), 3)
    calls = []
    check = type(manager).check_data

    def counted(self):
        calls.append(1)
        return check(self)

    type(manager).check_data = counted
    try:
        start = time.perf_counter()
        model.differential_expression(
            groupby="group",
            group1=["a", "b"],
            n_samples_overall=500,
            all_stats=False,
            batch_correction=True,
        )
        de = time.perf_counter() - start
    finally:
        type(manager).check_data = check
    rna = mdata.mod["rna"]
    rna.var_names = list(rna.var_names)  # same names, a new index: orders recomputed
    changed = _median(manager.check_data, 1)[0]
    return {
        "mosaicvi": str(Path(sys.modules["mosaicvi"].__file__).parents[1]),
        "n_cells": int(mdata.n_obs),
        "n_rna": int(mdata["rna"].n_obs),
        "n_protein": int(mdata["protein"].n_obs),
        "setup_seconds": setup,
        "model_seconds": create,
        "check_data_first_seconds": first,
        "check_data_seconds": gate,
        "check_data_times": gate_times,
        "latent_500_cells_seconds": latent,
        "de_seconds": de,
        "de_check_data_calls": len(calls),
        "check_data_after_var_names_seconds": changed,
    }


def measure(copies: int, src: str | None) -> dict:
    """:func:`worker` in a fresh process, with ``src`` first on the path (or this tree's)."""
    args = [str(Path(__file__).resolve()), "--worker", "--copies", str(copies)]
    row = C.run_isolated(args, src or C.ROOT / "src")
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=400, help="tiles of the PBMC mosaic")
    parser.add_argument("--baseline-src", default=None, help="another mosaicvi source tree")
    parser.add_argument("--baseline-label", default="baseline", help="its name in the table")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 copies")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.copies = 2
    if args.worker:
        print(json.dumps(worker(args.copies)))
        return
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=C.ROOT, capture_output=True, text=True
    ).stdout.strip()
    sources = {f"this tree ({head or 'no git'})": None}
    if args.baseline_src:
        sources[args.baseline_label] = args.baseline_src
    runs = [{"code": label, **measure(args.copies, src)} for label, src in sources.items()]
    print(C.write_results("gate_cost", {"copies": args.copies, "runs": runs}, args.quick))


if __name__ == "__main__":
    main()
