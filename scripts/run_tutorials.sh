#!/usr/bin/env bash
# Re-execute the tutorial notebooks in place, so that their committed outputs (tables, plots)
# are current. Needs the doc group: `.venv/bin/python -m pip install --group doc -e .`.
# The SNARE-seq tutorial reads ../shared/data/ (not bundled). About 15 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
for notebook in tutorials/*.ipynb; do
    echo "executing $notebook"
    start=$SECONDS
    .venv/bin/jupyter nbconvert --to notebook --execute --inplace \
        --ExecutePreprocessor.timeout=1800 --ExecutePreprocessor.kernel_name=python3 "$notebook"
    echo "  $((SECONDS - start)) s"
done
