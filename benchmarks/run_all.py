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
]


def main() -> None:
    extra = sys.argv[1:]
    start = time.perf_counter()
    for script in SCRIPTS:
        t = time.perf_counter()
        subprocess.run([sys.executable, str(HERE / script), *extra], check=True)
        print(f"{script}: {time.perf_counter() - t:.0f} s", flush=True)
    print(f"all benchmarks: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
