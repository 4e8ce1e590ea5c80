"""The benchmarks' PBMC rows re-run at given commits, against the stored rows (issue 29).

For each commit: a git worktree of it (``--work-dir``), its stored rows of MosaicVI and
MosaicANVI on PBMC for ``--seeds`` removed, then ``panels.py --dataset pbmc``, ``labels.py
--dataset pbmc`` and ``quality.py report --dataset pbmc --models MosaicVI`` run there with
those seeds (one thread, its own ``src``), which re-train exactly those rows. Reported per
commit, benchmark and model:

- seed 0: how many metrics changed (timings left out) and the largest change;
- when every seed was re-run: per metric the stored and re-run mean ± s.d. over the seeds,
  and ``z``, the difference of the means over its standard error
  (``sqrt(sd_stored^2 / n + sd_rerun^2 / n)``): a change that moves a result beyond a
  seed's noise has a large ``z``.

    python benchmarks/rerun_check.py --commits ba34119:0 9c48020:0 45d716c:0,1,2
    python benchmarks/rerun_check.py --collect-only --commits ...   # worktrees already run

(``commit:seeds``, or ``--seeds`` for every commit.)

Writes ``benchmarks/results/rerun_check.json`` and regenerates ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import _common as C
import numpy as np

#: results file -> models re-run, on PBMC
RERUN = {
    "panels": ["MosaicVI (masked)", "MosaicVI (zero-filled)", "MosaicVI (full panel)"],
    "labels": ["15-NN (MosaicVI latent)", "MosaicANVI", "MosaicANVI (calibration donor)"],
    "quality_pbmc": ["MosaicVI"],
}


def _commands(seeds: list[int]) -> list[list[str]]:
    s = ["--seeds", *map(str, seeds), "--threads", "1"]
    return [
        ["benchmarks/panels.py", "--dataset", "pbmc", *s],
        ["benchmarks/labels.py", "--dataset", "pbmc", *s],
        ["benchmarks/quality.py", "report", "--dataset", "pbmc", "--models", "MosaicVI", *s],
    ]


def _ours(row: dict, name: str, seeds) -> bool:
    return row.get("dataset") == "pbmc" and row["model"] in RERUN[name] and row["seed"] in seeds


def run_commit(commit: str, work: Path, seeds: list[int]) -> Path:
    """Re-run the rows of ``seeds`` at ``commit`` in a worktree; returns its results directory."""
    tree = work / commit
    shared = work / "shared"  # the benchmarks read ../shared/data
    if not shared.exists():
        work.mkdir(parents=True, exist_ok=True)
        shared.symlink_to(C.ROOT.parent / "shared")
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "-f", str(tree), commit], cwd=C.ROOT, check=True)
    results = tree / "benchmarks" / "results"
    for name in RERUN:
        path = results / f"{name}.json"
        payload = json.loads(path.read_text())
        payload["runs"] = [r for r in payload["runs"] if not _ours(r, name, seeds)]
        path.write_text(json.dumps(payload, indent=1))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree / "src")}
    for command in _commands(seeds):
        subprocess.run([sys.executable, *command], cwd=tree, env=env, check=True)
    return results


def _metrics(row: dict) -> dict[str, float]:
    return {k: v for k, v in row.items() if isinstance(v, float) and "seconds" not in k}


def collect(commit: str, results: Path, seeds: list[int]) -> list[dict]:
    """Each model's re-run rows against this tree's stored ones."""
    out = []
    for name, models in RERUN.items():
        stored = json.loads((C.RESULTS_DIR / f"{name}.json").read_text())["runs"]
        new = json.loads((results / f"{name}.json").read_text())["runs"]
        for model in models:
            before = {
                r["seed"]: _metrics(r)
                for r in stored
                if _ours(r, name, seeds) and r["model"] == model
            }
            after = {
                r["seed"]: _metrics(r)
                for r in new
                if _ours(r, name, seeds) and r["model"] == model
            }
            if 0 not in after:
                continue
            keys = sorted(set(before[0]) & set(after[0]))
            changed = [k for k in keys if abs(before[0][k] - after[0][k]) > 1e-9]
            row = {
                "commit": commit,
                "benchmark": name,
                "model": model,
                "seeds": sorted(after),
                "n_metrics": len(keys),
                "seed0_n_changed": len(changed),
                "seed0_max_abs_change": max(
                    (abs(before[0][k] - after[0][k]) for k in changed), default=0.0
                ),
            }
            common = sorted(set(before) & set(after))
            if len(common) > 1:
                means = {}
                for k in keys:
                    a = np.array([before[s][k] for s in common if k in before[s]])
                    b = np.array([after[s][k] for s in common if k in after[s]])
                    if len(a) != len(common) or len(b) != len(common):
                        continue
                    se = np.sqrt(a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b))
                    diff = b.mean() - a.mean()
                    z = 0.0 if diff == 0 else (float(abs(diff) / se) if se > 0 else float("inf"))
                    means[k] = {
                        "stored": [float(a.mean()), float(a.std(ddof=1))],
                        "rerun": [float(b.mean()), float(b.std(ddof=1))],
                        "z": z,
                    }
                row["means"] = means
                row["max_z"] = max((m["z"] for m in means.values()), default=0.0)
                row["n_z_over_2"] = int(sum(m["z"] > 2 for m in means.values()))
            out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", nargs="+", required=True, help="commit[:seed,seed]")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--work-dir", default="/tmp/rerun_check", help="worktrees go here")
    parser.add_argument("--collect-only", action="store_true", help="the worktrees have run")
    args = parser.parse_args()
    work = Path(args.work_dir)
    rows = []
    for spec in args.commits:
        commit, _, given = spec.partition(":")  # "commit" or "commit:0,1,2"
        seeds = [int(x) for x in given.split(",")] if given else args.seeds
        if args.collect_only:
            results = work / commit / "benchmarks" / "results"
        else:
            results = run_commit(commit, work, seeds)
        rows += collect(commit, results, seeds)
    payload = {"commits": args.commits, "seeds": args.seeds, "runs": rows}
    print(C.write_results("rerun_check", payload, False))


if __name__ == "__main__":
    main()
