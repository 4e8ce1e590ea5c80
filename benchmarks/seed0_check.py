"""The benchmarks' seed-0 rows re-run at given commits, against the stored rows (issue 29).

For each commit: a git worktree of it (``--work-dir``), its stored seed-0 rows of MosaicVI and
MosaicANVI on PBMC removed, then ``panels.py --dataset pbmc --seeds 0``, ``labels.py
--dataset pbmc --seeds 0`` and ``quality.py report --dataset pbmc --seeds 0 --models
MosaicVI`` run there (one thread, its own ``src``), which re-train exactly those rows. Every
metric of the new rows is compared with this tree's stored row (timings left out).

    python benchmarks/seed0_check.py --commits ba34119 9c48020 e38d16b [--work-dir /tmp/s0]
    python benchmarks/seed0_check.py --collect-only --commits ...   # worktrees already run

Writes ``benchmarks/results/seed0_check.json`` and regenerates ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import _common as C

#: (results file, models re-run) on PBMC at seed 0
RERUN = {
    "panels": ["MosaicVI (masked)", "MosaicVI (zero-filled)", "MosaicVI (full panel)"],
    "labels": ["15-NN (MosaicVI latent)", "MosaicANVI", "MosaicANVI (calibration donor)"],
    "quality_pbmc": ["MosaicVI"],
}
COMMANDS = [
    ["benchmarks/panels.py", "--dataset", "pbmc", "--seeds", "0", "--threads", "1"],
    ["benchmarks/labels.py", "--dataset", "pbmc", "--seeds", "0", "--threads", "1"],
    ["benchmarks/quality.py", "report", "--dataset", "pbmc", "--seeds", "0"]
    + ["--models", "MosaicVI", "--threads", "1"],
]


def _rerun(row: dict, name: str) -> bool:
    return row.get("seed") == 0 and row.get("dataset") == "pbmc" and row["model"] in RERUN[name]


def run_commit(commit: str, work: Path) -> Path:
    """Re-run the seed-0 rows at ``commit`` in a worktree; returns its results directory."""
    tree = work / commit
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "-f", str(tree), commit], cwd=C.ROOT, check=True)
    results = tree / "benchmarks" / "results"
    for name in RERUN:
        path = results / f"{name}.json"
        payload = json.loads(path.read_text())
        payload["runs"] = [r for r in payload["runs"] if not _rerun(r, name)]
        path.write_text(json.dumps(payload, indent=1))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tree / "src")}
    for command in COMMANDS:
        subprocess.run([sys.executable, *command], cwd=tree, env=env, check=True)
    return results


def collect(commit: str, results: Path) -> list[dict]:
    """Each re-run row against this tree's stored one."""
    out = []
    for name in RERUN:
        stored = json.loads((C.RESULTS_DIR / f"{name}.json").read_text())["runs"]
        new = json.loads((results / f"{name}.json").read_text())["runs"]
        for row in (r for r in new if _rerun(r, name)):
            before = next(r for r in stored if _rerun(r, name) and r["model"] == row["model"])
            metrics = {
                k: (before[k], v)
                for k, v in row.items()
                if isinstance(v, float) and "seconds" not in k and k in before
            }
            changed = {k: v for k, v in metrics.items() if abs(v[0] - v[1]) > 1e-9}
            out.append(
                {
                    "commit": commit,
                    "benchmark": name,
                    "model": row["model"],
                    "n_metrics": len(metrics),
                    "n_changed": len(changed),
                    "max_abs_change": max((abs(a - b) for a, b in changed.values()), default=0.0),
                    "changed": {k: {"stored": a, "rerun": b} for k, (a, b) in changed.items()},
                }
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", nargs="+", required=True)
    parser.add_argument("--work-dir", default="/tmp/seed0_check", help="worktrees go here")
    parser.add_argument("--collect-only", action="store_true", help="the worktrees have run")
    args = parser.parse_args()
    work = Path(args.work_dir)
    rows = []
    for commit in args.commits:
        results = (
            work / commit / "benchmarks" / "results"
            if args.collect_only
            else run_commit(commit, work)
        )
        rows += collect(commit, results)
    print(C.write_results("seed0_check", {"commits": args.commits, "runs": rows}, False))


if __name__ == "__main__":
    main()
