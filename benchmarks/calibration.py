"""Do MosaicVI's predictive intervals cover held-out truth? (issues 17 and 25)

Nominal 50 / 80 / 90 % intervals of the posterior predictive counts (``n_samples`` draws per
cell) of a modality the model never saw for some cells, against the measured counts:

- PBMC: donor p4's protein hidden (p4 becomes RNA-only), predicted from RNA;
- SNARE-seq: RNA hidden for libraries 09J, 09K and 09L (``--cells-per-batch`` cells of each of
  the 12 libraries), predicted from ATAC;
- SNARE-seq: ATAC hidden for the same libraries, predicted from RNA (the Bernoulli ATAC head
  models binarised counts, so the truth is binarised).

Empirical coverage is the fraction of (cell, feature) pairs whose count lies in the interval
(bounds included; the bounds are counts), over all pairs and over the pairs with a non-zero
count; the mean width is in counts. Raw, then after ``MosaicVI.calibrate_intervals`` fit on
the model's validation cells of the *other* batches (measured in both modalities, predicted
with the modality hidden; never the evaluated cells), in three settings: ``pooled`` (one
scale per level), ``by_predicted`` (one per bin of the predicted mean count) and
``fit_nonzero`` (one scale per level fit on the non-zero counts). Every setting is applied to the same draws
of the evaluated cells. Writes ``results/calibration.json`` and the calibration plot
``docs/_static/calibration.png``.

    python benchmarks/calibration.py [--seeds 0 1 2] [--n-samples 100] [--cells-per-batch 200]

One seed per process, then merged (same options): ``--seeds 0 --runs-out runs0.json`` ...,
then ``--merge runs0.json runs1.json runs2.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import scvi
from _common import PBMC, SNARE, hide, quiet, read, subsample, write_results

from mosaicvi import MosaicVI

LEVELS = (0.5, 0.8, 0.9)
SETTINGS = {
    "pooled": {"stratify": None, "target": "all"},
    "by_predicted": {"stratify": "predicted", "target": "all"},
    "fit_nonzero": {"stratify": None, "target": "nonzero"},
}
DIRECTIONS = ("pbmc-protein", "snare-rna", "snare-atac")
PLOT = Path(__file__).resolve().parents[1] / "docs" / "_static" / "calibration.png"


def _measure(out: dict, key: str, x: np.ndarray, low: np.ndarray, high: np.ndarray) -> None:
    inside = (x >= low) & (x <= high)
    out[f"coverage_{key}"] = float(inside.mean())
    out[f"coverage_{key}_nonzero"] = float(inside[x > 0].mean())
    out[f"width_{key}"] = float((high - low).mean())


def coverage(model, mdata, truth, modality: str, given: list[str], n_samples: int) -> dict:
    """Coverage of the raw and calibrated intervals at ``LEVELS`` for the cells of ``truth``."""
    cells = mdata.obs_names.get_indexer(truth.obs_names)
    quantiles = [0.5] + [q for lv in LEVELS for q in ((1 - lv) / 2, (1 + lv) / 2)]
    _, _, q, mean, own = model._interval_stats(
        modality, None, cells, given, quantiles, n_samples, None, None
    )
    names = model._feature_names(modality)
    x = truth.X.toarray() if hasattr(truth.X, "toarray") else np.asarray(truth.X)
    x = x[:, truth.var_names.get_indexer(names)].astype(np.float32)
    if modality == "atac":  # the Bernoulli head models binarised counts
        x = (x > 0).astype(np.float32)
    out = {"cells": len(cells), "features": len(names), "zero_fraction": float((x == 0).mean())}
    for i, level in enumerate(LEVELS):
        _measure(out, f"{int(level * 100)}", x, q[1 + 2 * i], q[2 + 2 * i])
    features = np.arange(len(names))
    for setting, options in SETTINGS.items():
        fit = model.calibrate_intervals(
            modality, given=given, levels=LEVELS, n_samples=n_samples, **options
        )
        out["calibration_cells"] = int(fit["n_cells"].iloc[0])
        stored = model.interval_calibration_[modality]
        for i, level in enumerate(LEVELS):
            key = f"{int(level * 100)}_{setting}"
            low, high = model._calibrated_bounds(
                stored, level, q[1 + 2 * i], q[0], q[2 + 2 * i], mean, own, features
            )
            _measure(out, key, x, low, high)
            out[f"scale_{key}"] = float(fit.loc[("batch", level), "scale"])
    return out


def pbmc(seed: int, n_samples: int, max_epochs: int | None) -> dict:
    scvi.settings.seed = seed
    full = read(PBMC)
    mdata = hide(full, {"protein": ["p4_0"]}, "batch")
    MosaicVI.setup_mudata(
        mdata, modalities={"rna": "rna", "protein": "protein"}, batch_key="batch"
    )
    model = MosaicVI(mdata)
    model.train(max_epochs=max_epochs, enable_progress_bar=False)
    truth = full["protein"][full.obs_names[full.obs["batch"] == "p4_0"]]
    row = coverage(model, mdata, truth, "protein", ["rna"], n_samples)
    return {"data": "PBMC: p4 protein from RNA", "seed": seed, **row}


def snare(seed: int, n_samples: int, max_epochs: int | None, per_batch: int, hidden_mod: str):
    scvi.settings.seed = seed
    full = subsample(read(SNARE), per_batch, "batch", seed=seed)
    hidden = ["09J", "09K", "09L"]
    mdata = hide(full, {hidden_mod: hidden}, "batch")
    MosaicVI.setup_mudata(mdata, modalities={"rna": "rna", "atac": "atac"}, batch_key="batch")
    model = MosaicVI(mdata, atac_closed_samples=1024)
    model.train(max_epochs=max_epochs, enable_progress_bar=False)
    truth = full[hidden_mod][full.obs_names[full.obs["batch"].isin(hidden)]]
    given = ["atac"] if hidden_mod == "rna" else ["rna"]
    row = coverage(model, mdata, truth, hidden_mod, given, n_samples)
    what = (
        "RNA of 3 libraries from ATAC" if hidden_mod == "rna" else "ATAC of 3 libraries from RNA"
    )
    return {"data": f"SNARE-seq: {what}", "seed": seed, **row}


def plot(runs: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4))
    for data in dict.fromkeys(r["data"] for r in runs):
        rows = [r for r in runs if r["data"] == data]
        for suffix, style in (("", "o-"), ("_pooled", "s--")):
            empirical = [
                np.mean([r[f"coverage_{int(lv * 100)}{suffix}"] for r in rows]) for lv in LEVELS
            ]
            label = data + (", calibrated" if suffix else "")
            ax.plot(LEVELS, empirical, style, label=label)
    ax.plot([0.4, 1], [0.4, 1], "k--", lw=1, label="calibrated")
    ax.set(xlabel="nominal coverage", ylabel="empirical coverage", xlim=(0.4, 1), ylim=(0.4, 1))
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-samples", type=int, default=100)
    parser.add_argument("--max-epochs", type=int, default=None, help="PBMC: scvi's default")
    parser.add_argument("--snare-epochs", type=int, default=40)
    parser.add_argument("--cells-per-batch", type=int, default=200)
    parser.add_argument(
        "--directions",
        nargs="+",
        choices=DIRECTIONS,
        default=list(DIRECTIONS),
        help="which of the three predictions to run",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run")
    parser.add_argument(
        "--runs-out", type=Path, help="write this invocation's runs to this file, not results/"
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="write results/ from the --runs-out files of runs made with these same options",
    )
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.n_samples, args.max_epochs, args.snare_epochs = [0], 20, 3, 2
        args.cells_per_batch = 25
    keys = ("seeds", "n_samples", "max_epochs", "snare_epochs", "cells_per_batch")
    if args.merge:  # the runs of separate invocations (e.g. one seed each, in parallel)
        runs = [run for path in args.merge for run in json.loads(path.read_text())]
        args.seeds = sorted({r["seed"] for r in runs})
        plot(runs)
        settings = {k: getattr(args, k) for k in keys}
        settings["runs_made_by"] = (
            "one process per seed: python benchmarks/calibration.py --seeds S (these options) "
            "--runs-out FILE; merged by this command"
        )
        print(write_results("calibration", {**settings, "runs": runs}, args.quick))
        return
    quiet()
    runs = []
    for seed in args.seeds:
        if "pbmc-protein" in args.directions:
            runs.append(pbmc(seed, args.n_samples, args.max_epochs))
            print(runs[-1], flush=True)
        for hidden_mod in ("rna", "atac"):
            if f"snare-{hidden_mod}" not in args.directions:
                continue
            runs.append(
                snare(seed, args.n_samples, args.snare_epochs, args.cells_per_batch, hidden_mod)
            )
            print(runs[-1], flush=True)
    if args.runs_out is not None:
        args.runs_out.write_text(json.dumps(runs))
        return
    if not args.quick:
        plot(runs)
    settings = {k: getattr(args, k) for k in keys}
    print(write_results("calibration", {**settings, "runs": runs}, args.quick))


if __name__ == "__main__":
    main()
