"""Library replacements of issue 29: the same inputs through this tree and an earlier one.

Four hand-written pieces were replaced by library code:

- ``mosaicvi.nn.weighted_kl``: the closed-form Gaussian KL by
  ``torch.distributions.kl_divergence``. Inputs: 3 shapes (components x cells x latent),
  against the standard normal and against an expert, fixed seed. Reported: largest relative
  difference, microseconds per call (median of 5 rounds of 300 calls).
- ``mosaicvi.metrics.feature_correlation``: Pearson / Spearman by ``scipy.stats``. Inputs:
  ``log1p`` counts 400 x 224 with two constant columns, per feature and per cell.
- ``mosaicvi.data.ChunkedBatchSampler``: the rank split by its ``DistributedSampler`` parent.
  Inputs: a grid of cells, batch and chunk sizes, ``drop_last``, 1-4 replicas, shuffled or
  not, 3 epochs each. Reported: how many of the settings give the same minibatches on every
  replica, and how many the earlier code failed on.
- The protein background prior: fit on at most 2,000 cells of a batch (was every cell), by
  sklearn ``GaussianMixture``'s EM run for every protein at once (was an EM with another
  start and stopping rule). Inputs: the PBMC mosaic (``MosaicVI(mdata)`` at its defaults).
  Reported: largest and median difference of the prior's means and scales, seconds to build
  the model (median of 3). And, in this tree only, the batched EM against
  ``GaussianMixture`` itself, one call per protein (:func:`prior_fits`): largest difference
  and seconds, on PBMC and on 40 simulated small batches.

Each tree runs in a fresh process (``--worker``) with its ``src`` first on the path and
writes its outputs; this process compares them. Downstream metrics at seed 0 (the
benchmarks' rows) are compared by re-running those benchmarks at each commit (see
``docs/benchmarks.md``).

    git archive <commit> src | tar -x -C /tmp/before
    OMP_NUM_THREADS=1 python benchmarks/replacements.py --baseline-src /tmp/before/src

Writes ``benchmarks/results/replacements.json`` and regenerates ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as C
import numpy as np

KL_SHAPES = [(1, 128, 20), (4, 128, 20), (8, 1024, 30)]
SAMPLER_GRID = {
    "n_cells": [0, 1, 7, 100, 1037],
    "batch_size": [1, 16, 128],
    "chunk_size": [1, 5, 64],
    "drop_last": [False, True],
    "replicas": [1, 2, 3, 4],
    "shuffle": [True, False],
}


def _per_call(fn, calls: int = 300, rounds: int = 5) -> float:
    """Median microseconds per call over ``rounds`` rounds of ``calls`` calls."""
    for _ in range(20):
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls * 1e6)
    return float(np.median(times))


def worker(quick: bool) -> dict:
    """Every output and timing of this process's mosaicvi, for :func:`compare`."""
    import torch

    from mosaicvi import MosaicVI
    from mosaicvi.data import ChunkedBatchSampler
    from mosaicvi.metrics import feature_correlation
    from mosaicvi.nn import weighted_kl

    C.quiet()
    torch.set_num_threads(1)
    out = {"kl": {}, "correlation": {}, "sampler": {}, "prior": {}}
    generator = torch.Generator().manual_seed(0)
    for comps, n, d in KL_SHAPES:
        loc = torch.randn(comps, n, d, generator=generator)
        var = torch.rand(comps, n, d, generator=generator) * 2 + 1e-3
        weights = torch.rand(comps, n, generator=generator)
        target = (torch.randn(n, d, generator=generator), torch.rand(n, d, generator=generator))
        for name, args in (("prior", ()), ("expert", (target[0], target[1] + 0.1))):
            key = f"{comps}x{n}x{d} {name}"
            value = weighted_kl(loc, var, weights, *args)
            out["kl"][key] = {
                "value": value.numpy(),
                "us": _per_call(lambda a=(loc, var, weights, *args): weighted_kl(*a)),
            }
    rng = np.random.default_rng(0)
    truth = np.log1p(rng.negative_binomial(2, 0.05, (400, 224)).astype(float))
    predicted = truth * 0.7 + rng.normal(0, 0.5, truth.shape)
    predicted[:, 5], truth[:, 7] = 1.0, 0.0  # constant: NaN
    for method, axis in itertools.product(("pearson", "spearman"), (0, 1)):
        out["correlation"][f"{method} axis={axis}"] = {
            "value": feature_correlation(predicted, truth, method, axis),
            "us": _per_call(
                lambda m=method, a=axis: feature_correlation(predicted, truth, m, a), 20
            ),
        }
    cells = np.random.default_rng(1).permutation(5000)
    grid = [dict(zip(SAMPLER_GRID, v)) for v in itertools.product(*SAMPLER_GRID.values())]
    for setting in grid[: 40 if quick else None]:
        for rank in range(setting["replicas"]):
            key = json.dumps({**setting, "rank": rank})
            kwargs = {
                "drop_last": setting["drop_last"],
                "seed": 3,
                "num_replicas": setting["replicas"],
                "rank": rank,
                "shuffle": setting["shuffle"],
            }
            try:
                sampler = ChunkedBatchSampler(
                    cells[: setting["n_cells"]],
                    setting["batch_size"],
                    setting["chunk_size"],
                    **kwargs,
                )
                epochs = []
                for epoch in range(3):
                    sampler.set_epoch(epoch)
                    epochs.append((len(sampler), list(sampler)))
                out["sampler"][key] = epochs
            except ValueError as error:
                out["sampler"][key] = f"ValueError: {error}"
    mdata = C.read(C.PBMC)
    if quick:
        mdata = C.subsample(mdata, 50, "batch")
    MosaicVI.setup_mudata(
        mdata, modalities={"rna": "rna", "protein": "protein"}, batch_key="batch"
    )
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        model = MosaicVI(mdata)
        seconds.append(time.perf_counter() - start)
    head = model.module.heads["protein"]
    out["prior"] = {
        "mean": head.prior_mean.detach().numpy().copy(),
        "scale": head.prior_log_scale.exp().detach().numpy().copy(),
        "model_seconds": float(np.median(seconds)),
    }
    out["mosaicvi"] = str(Path(sys.modules["mosaicvi"].__file__).parents[1])
    return out


def _sklearn_fits(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lower component of ``GaussianMixture`` fit to each column, one call per column."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    from mosaicvi.nn._protein import reference_mixture

    means, scales = [], []
    for j in range(x.shape[1]):
        column = x[~np.isnan(x[:, j]), j].reshape(-1, 1)
        mixture = reference_mixture(column)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            mixture.fit(column)
        low = int(np.argmin(mixture.means_[:, 0]))
        means.append(mixture.means_[low, 0])
        scales.append(np.sqrt(mixture.covariances_[low, 0, 0]))
    return np.array(means), np.array(scales)


def prior_fits(quick: bool) -> dict:
    """This tree's batched EM against ``GaussianMixture`` per protein: values and seconds.

    PBMC's three protein batches (224 proteins, 400 cells each), and a simulated atlas of
    many small batches (40 batches of 100 cells, 100 proteins: a background Poisson(3) and,
    in a share of the cells, a foreground negative binomial).
    """
    from mosaicvi.nn._protein import _background_components

    mdata = C.read(C.PBMC)
    protein = mdata.mod["protein"]
    x = np.log1p(protein.X.toarray())
    batches = protein.obs["batch"].astype(str).to_numpy()
    cases = {f"PBMC {b}": x[batches == b] for b in np.unique(batches)}
    rng = np.random.default_rng(0)
    n_batches = 4 if quick else 40
    for b in range(n_batches):
        fg = rng.random((100, 100)) < rng.uniform(0.05, 0.6, 100)
        counts = np.where(fg, rng.negative_binomial(5, 0.05, fg.shape), rng.poisson(3, fg.shape))
        cases[f"simulated {b}"] = np.log1p(counts.astype(float))
    out = {}
    for group in ("PBMC", "simulated"):
        ours = theirs = 0.0
        worst_mean = worst_scale = 0.0
        n_fits = 0
        for key, values in cases.items():
            if not key.startswith(group):
                continue
            start = time.perf_counter()
            m1, s1 = _background_components(values)
            ours += time.perf_counter() - start
            start = time.perf_counter()
            m2, s2 = _sklearn_fits(values)
            theirs += time.perf_counter() - start
            worst_mean = max(worst_mean, float(np.abs(m1 - m2).max()))
            worst_scale = max(worst_scale, float(np.abs(s1 - s2).max()))
            n_fits += values.shape[1]
        out[group] = {
            "n_fits": n_fits,
            "seconds_batched_em": ours,
            "seconds_gaussian_mixture": theirs,
            "mean_max_abs_difference": worst_mean,
            "scale_max_abs_difference": worst_scale,
        }
    return out


def run(src: str | None, quick: bool, path: Path) -> dict:
    """:func:`worker` in a fresh process with ``src`` (or this tree's) first on the path."""
    src = str(Path(src).resolve()) if src else str(C.ROOT / "src")
    args = [sys.executable, str(Path(__file__).resolve()), "--worker", str(path)]
    args += ["--quick"] * quick
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src}
    proc = subprocess.run(args, cwd=C.ROOT, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    with open(path, "rb") as f:
        return pickle.load(f)


def compare(new: dict, old: dict) -> dict:
    """The differences and timings of this tree (``new``) against the earlier one."""
    rows = {"kl": {}, "correlation": {}}
    for part in rows:
        for key, value in new[part].items():
            a, b = np.asarray(old[part][key]["value"]), np.asarray(value["value"])
            same_nan = bool((np.isnan(a) == np.isnan(b)).all())
            scale = np.maximum(np.abs(a), 1e-12)
            rows[part][key] = {
                "max_relative_difference": float(np.nanmax(np.abs(a - b) / scale)),
                "same_nan": same_nan,
                "us_before": old[part][key]["us"],
                "us_after": value["us"],
            }
    identical = failed_before = differ = refused_empty = 0
    for key, value in new["sampler"].items():
        before = old["sampler"][key]
        if isinstance(before, str) and not isinstance(value, str):
            failed_before += 1  # the earlier code failed on it
        elif (isinstance(before, str) and isinstance(value, str)) or value == before:
            identical += 1  # the same minibatches, or refused by both
        elif isinstance(value, str) and all(len(batches) == 0 for _, batches in before):
            refused_empty += 1  # the earlier code gave epochs without a step
        else:
            differ += 1
    rows["sampler"] = {
        "settings": len(new["sampler"]),
        "identical": identical,
        "different": differ,
        "failed_before": failed_before,
        "refused_now_no_step_before": refused_empty,
    }
    mean_diff = np.abs(new["prior"]["mean"] - old["prior"]["mean"])
    scale_diff = np.abs(new["prior"]["scale"] - old["prior"]["scale"])
    rows["prior"] = {
        "n_values": int(mean_diff.size),
        "mean_max_abs_difference": float(mean_diff.max()),
        "mean_median_abs_difference": float(np.median(mean_diff)),
        "scale_max_abs_difference": float(scale_diff.max()),
        "scale_median_abs_difference": float(np.median(scale_diff)),
        "model_seconds_before": old["prior"]["model_seconds"],
        "model_seconds_after": new["prior"]["model_seconds"],
    }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-src", required=False, help="the earlier mosaicvi src tree")
    parser.add_argument("--quick", action="store_true", help="smoke run: a part of the grid")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.quick)
        with open(args.worker, "wb") as f:
            pickle.dump(result, f)
        return
    if not args.baseline_src:
        parser.error("--baseline-src is needed (the tree before the replacements)")
    with tempfile.TemporaryDirectory() as tmp:
        new = run(None, args.quick, Path(tmp) / "new.pkl")
        old = run(args.baseline_src, args.quick, Path(tmp) / "old.pkl")
    rows = compare(new, old)
    C.quiet()
    rows["prior_fits"] = prior_fits(args.quick)
    print(json.dumps(rows, indent=1))
    print(C.write_results("replacements", {"baseline": old["mosaicvi"], **rows}, args.quick))


if __name__ == "__main__":
    main()
