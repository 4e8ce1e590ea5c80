"""Do MosaicVI's predictive intervals cover held-out truth? (issue 17)

Nominal 50 / 80 / 90 % intervals of the posterior predictive counts
(:meth:`MosaicVI.posterior_predictive_quantiles`, ``n_samples`` draws per cell) of a modality
the model never saw for some cells, against the measured counts:

- PBMC: donor p4's protein hidden (p4 becomes RNA-only), predicted from RNA;
- SNARE-seq: RNA hidden for libraries 09J, 09K and 09L (``--cells-per-batch`` cells of each of
  the 12 libraries), predicted from ATAC.

Empirical coverage is the fraction of (cell, feature) pairs whose count lies in the interval
(bounds included; the bounds are draws, so counts), over all pairs and over the pairs with a
non-zero count (most RNA counts are 0, which a narrow interval covers easily); raw, and after
the calibration step (``MosaicVI.calibrate_intervals``, split conformal, fit on the model's
validation cells measured in both modalities). Writes ``results/calibration.json`` and the
calibration plot ``docs/_static/calibration.png``.

    python benchmarks/calibration.py [--seeds 0 1 2] [--n-samples 100] [--cells-per-batch 300]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import scvi
from _common import PBMC, SNARE, hide, quiet, read, subsample, write_results

from mosaicvi import MosaicVI

LEVELS = (0.5, 0.8, 0.9)
PLOT = Path(__file__).resolve().parents[1] / "docs" / "_static" / "calibration.png"


def coverage(model, mdata, truth, modality: str, given: list[str], n_samples: int) -> dict:
    """Empirical coverage of the central intervals at ``LEVELS`` for the cells of ``truth``."""
    cells = mdata.obs_names.get_indexer(truth.obs_names)
    quantiles = sorted({q for level in LEVELS for q in ((1 - level) / 2, (1 + level) / 2)})
    q = model.posterior_predictive_quantiles(
        modality, indices=cells, given=given, quantiles=quantiles, n_samples=n_samples
    )
    x = truth.X.toarray() if hasattr(truth.X, "toarray") else np.asarray(truth.X)
    x = x[:, truth.var_names.get_indexer(q[quantiles[0]].columns)]
    out = {}
    for level in LEVELS:
        low = q[(1 - level) / 2].to_numpy()
        high = q[(1 + level) / 2].to_numpy()
        inside = (x >= low) & (x <= high)
        out[f"coverage_{int(level * 100)}"] = float(inside.mean())
        out[f"coverage_{int(level * 100)}_nonzero"] = float(inside[x > 0].mean())
        out[f"width_{int(level * 100)}"] = float((high - low).mean())
    # the calibration step: offsets fit on the model's validation cells measured in both
    # modalities (predicted from ``given`` only), then applied to the held-out cells
    fit = model.calibrate_intervals(modality, given=given, levels=LEVELS, n_samples=n_samples)
    out["calibration_cells"] = int(fit["n_cells"].iloc[0])
    for level in LEVELS:
        key = int(level * 100)
        low, high = model.predictive_intervals(
            modality, level, indices=cells, given=given, n_samples=n_samples, calibrated=True
        )
        low, high = low.to_numpy(), high.to_numpy()
        inside = (x >= low) & (x <= high)
        out[f"offset_{key}"] = float(fit.loc[level, "offset"])
        out[f"coverage_{key}_calibrated"] = float(inside.mean())
        out[f"coverage_{key}_nonzero_calibrated"] = float(inside[x > 0].mean())
        out[f"width_{key}_calibrated"] = float((high - low).mean())
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


def snare(seed: int, n_samples: int, max_epochs: int | None, per_batch: int) -> dict:
    scvi.settings.seed = seed
    full = subsample(read(SNARE), per_batch, "batch", seed=seed)
    hidden = ["09J", "09K", "09L"]
    mdata = hide(full, {"rna": hidden}, "batch")
    MosaicVI.setup_mudata(mdata, modalities={"rna": "rna", "atac": "atac"}, batch_key="batch")
    model = MosaicVI(mdata, atac_closed_samples=1024)
    model.train(max_epochs=max_epochs, enable_progress_bar=False)
    truth = full["rna"][full.obs_names[full.obs["batch"].isin(hidden)]]
    row = coverage(model, mdata, truth, "rna", ["atac"], n_samples)
    return {"data": "SNARE-seq: RNA of 3 libraries from ATAC", "seed": seed, **row}


def plot(runs: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4))
    for data in dict.fromkeys(r["data"] for r in runs):
        rows = [r for r in runs if r["data"] == data]
        for suffix, style in (("", "o-"), ("_calibrated", "s--")):
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
    parser.add_argument("--cells-per-batch", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="smoke run")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.n_samples, args.max_epochs, args.snare_epochs = [0], 20, 3, 2
        args.cells_per_batch = 25
    quiet()
    runs = []
    for seed in args.seeds:
        runs.append(pbmc(seed, args.n_samples, args.max_epochs))
        print(runs[-1])
        runs.append(snare(seed, args.n_samples, args.snare_epochs, args.cells_per_batch))
        print(runs[-1])
    if not args.quick:
        plot(runs)
    settings = {k: getattr(args, k) for k in ("seeds", "n_samples", "max_epochs", "snare_epochs")}
    print(write_results("calibration", {**settings, "runs": runs}, args.quick))


if __name__ == "__main__":
    main()
