#!/usr/bin/env bash
# Create .venv and install mosaicvi with its test and documentation tools. Safe to run again.
# torch==2.13.0 is installed first: that exact version is the local CPU build; any other
# request for torch would pull the CUDA build (several GB).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade "pip>=25.1"
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet --group test --group doc -e .
