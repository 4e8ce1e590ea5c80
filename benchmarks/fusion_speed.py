"""Time per epoch of the ablation's variants on a simulated trimodal mosaic.

The real data sets have two modalities; with three, MoPoE mixes the products of 7 subsets and
the default PoE adds 3 subset terms. This measures what that costs: a simulated RNA + ATAC +
protein mosaic (``mosaicvi.data.simulate_mosaic``, cells spread over all 7 subsets of
modalities), every variant of ``ablation.py`` trained in one process, rounds in the order
A B C ... A B C ...; training seconds of the last epoch of each run (validation excluded).

    python benchmarks/fusion_speed.py [--rounds 2] [--epochs 2] [--quick]

Writes ``benchmarks/results/fusion_speed.json`` and regenerates ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse

import _common as C
from ablation import VARIANTS
from speed import EpochTimer

from mosaicvi.data import simulate_mosaic

SIZES = {"n_cells": 3500, "n_genes": 2000, "n_regions": 10000, "n_proteins": 100}
QUICK_SIZES = {"n_cells": 140, "n_genes": 50, "n_regions": 200, "n_proteins": 10}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny data, 1 round")
    args = parser.parse_args()
    C.quiet()
    sizes = QUICK_SIZES if args.quick else SIZES
    rounds = 1 if args.quick else args.rounds
    mdata = simulate_mosaic(**sizes, n_batches=3, seed=0)
    modalities = {"rna": "rna", "atac": "atac", "protein": "protein"}
    runs = []
    for round_ in range(rounds):
        for name, kwargs in VARIANTS.items():
            timer = EpochTimer()
            C.train_mosaicvi(
                mdata.copy(), modalities, 0, args.epochs, model_kwargs=kwargs, callbacks=[timer]
            )
            runs.append({"round": round_, "model": name, "seconds_per_epoch": timer.seconds[-1]})
            print(runs[-1], flush=True)
    print(
        C.write_results(
            "fusion_speed", {"data": sizes, "epochs": args.epochs, "runs": runs}, args.quick
        )
    )


if __name__ == "__main__":
    main()
