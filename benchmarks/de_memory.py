"""Peak memory of differential accessibility on the full SNARE-seq data (issue 25).

One MosaicVI model is trained on the whole data set (10,309 cells, 1,677 genes, 25,734 peaks;
``--epochs`` epochs, seed 0) and saved. Each measurement is then a fresh Python process that
reads the data, loads the model and records its resident memory (the **footprint**: data and
model, before any analysis), resets the kernel's peak-RSS counter (``/proc/self/clear_refs``),
runs a one-vs-rest ``differential_accessibility(groupby="cell_type")`` (every cell type
against the rest, ``n_samples_overall`` samples per group) and records the peak resident
memory. Reported: footprint, peak, peak above the footprint, seconds.

``--baseline-src PATH`` measures the same thing with the mosaicvi package found in ``PATH``
(e.g. an earlier commit, ``git archive <commit> src | tar -x -C /tmp/before``) as well, so
that a change can be compared with the code before it on the same model.

    python benchmarks/de_memory.py [--epochs 2] [--samples 5000] [--batch-correction]
        [--baseline-src PATH --baseline-label NAME] [--model-dir DIR] [--quick]

Writes ``benchmarks/results/de_memory.json`` and regenerates ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C


def _status(field: str) -> float:
    """A memory field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def worker(model_dir: str, samples: int, batch_correction: bool, quick: bool) -> dict:
    """One measurement, in this (fresh) process; prints one JSON line."""
    import gc

    from mosaicvi import MosaicVI

    C.quiet()
    mdata = C.read(C.SNARE)
    if quick:
        mdata = C.subsample(mdata, C.QUICK["snareseq_cells_per_batch"], "batch")
    model = MosaicVI.load(model_dir, adata=mdata)
    gc.collect()
    footprint = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts from here
    start = time.perf_counter()
    types = sorted(mdata.obs["cell_type"].astype(str).unique())
    result = model.differential_accessibility(
        groupby="cell_type",
        group1=types[:2] if quick else None,  # the smoke run: two types against the rest
        n_samples_overall=samples,
        batch_correction=batch_correction,
    )
    seconds = time.perf_counter() - start
    peak = _status("VmHWM")
    return {
        "mosaicvi": str(Path(sys.modules["mosaicvi"].__file__).parents[1]),
        "batch_correction": batch_correction,
        "n_samples_overall": samples,
        "n_cells": int(mdata.n_obs),
        "n_peaks": int(mdata["atac"].n_vars),
        "n_comparisons": int(result["comparison"].nunique()),
        "footprint_rss_mib": footprint,
        "peak_rss_mib": peak,
        "peak_above_footprint_mib": peak - footprint,
        "seconds": seconds,
        "max_proba_de": float(result["proba_de"].max()),
    }


def measure(model_dir: str, samples: int, batch_correction: bool, quick: bool, src) -> dict:
    """:func:`worker` in a fresh process, with ``src`` first on the path (or this tree's)."""
    args = [str(Path(__file__).resolve()), "--worker", model_dir, "--samples", str(samples)]
    args += ["--batch-correction"] * batch_correction + ["--quick"] * quick
    row = C.run_isolated(args, src or C.ROOT / "src")
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="training epochs of the model")
    parser.add_argument("--samples", type=int, default=5000, help="n_samples_overall")
    parser.add_argument("--baseline-src", default=None, help="another mosaicvi source tree")
    parser.add_argument("--baseline-label", default="baseline", help="its name in the table")
    parser.add_argument("--batch-correction", action="store_true", help="also measure it")
    parser.add_argument("--quick", action="store_true", help="smoke run: few cells, 1 epoch")
    parser.add_argument(
        "--model-dir", default=None, help="keep the trained model here; reuse it if present"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.samples, args.batch_correction, args.quick)))
        return
    if args.quick:
        args.epochs, args.samples = 1, 300
    C.quiet()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or tmp
        if not (Path(model_dir) / "model.json").exists():
            mdata = C.read(C.SNARE)
            if args.quick:
                mdata = C.subsample(mdata, C.QUICK["snareseq_cells_per_batch"], "batch")
            modalities = {"rna": "rna", "atac": "atac"}
            C.train_mosaicvi(mdata, modalities, 0, args.epochs).save(model_dir, overwrite=True)
            del mdata
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=C.ROOT, capture_output=True, text=True
        ).stdout.strip()
        sources = {f"this tree ({head or 'no git'})": None}
        if args.baseline_src:
            sources[args.baseline_label] = args.baseline_src
        for correction in [False, True] if args.batch_correction else [False]:
            for label, src in sources.items():
                row = measure(model_dir, args.samples, correction, args.quick, src)
                runs.append({"code": label, **row})
    settings = {"epochs": args.epochs, "samples": args.samples}
    print(C.write_results("de_memory", {**settings, "runs": runs}, args.quick))


if __name__ == "__main__":
    main()
