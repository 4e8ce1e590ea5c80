"""Run every benchmark in turn (each writes its results and regenerates the docs page).

python benchmarks/run_all.py [--quick]
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = [
    "integration.py",
    "imputation.py",
    "protein_imputation.py",
    "speed.py",
    "ablation.py",
    "fusion_speed.py",
    "scale.py",
    "differential.py",
    "de_memory.py",
    "calibration.py",
    "query_mapping.py",
    "defaults.py",
    ["quality.py", "study", "--study-stage", "1"],
    ["quality.py", "study", "--study-stage", "2"],
    ["quality.py", "report"],
    "panels.py",
    "labels.py",
    "gate_cost.py",
]


def main() -> None:
    extra = sys.argv[1:]
    start = time.perf_counter()
    for script in SCRIPTS:
        script, *args = [script] if isinstance(script, str) else script
        t = time.perf_counter()
        subprocess.run([sys.executable, str(HERE / script), *args, *extra], check=True)
        print(f"{' '.join([script, *args])}: {time.perf_counter() - t:.0f} s", flush=True)
    print(f"all benchmarks: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
