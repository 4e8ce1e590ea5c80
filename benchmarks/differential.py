"""Known markers in MosaicVI's differential analysis of the real PBMC mosaic (issue 17).

One model per seed on the whole mosaic (scvi-tools' default epochs). For each cell type with a
textbook marker, one-vs-rest ``mode="change"`` tests, and the rank of the marker among all
features by ``proba_de`` among those up in the cell type (``lfc_mean > 0``):

- protein, cells measured in protein (donors p2, p3, p4; ``given=None``);
- protein of donor **p1, which has no protein**, imputed from RNA (``given=["rna"]``);
- genes of donor **p2, which has no RNA**, from its protein (``given=["protein"]``).

Writes ``benchmarks/results/differential.json``; the report renders the marker table.

    python benchmarks/differential.py [--seeds 0 1 2] [--max-epochs N] [--samples 2000]
"""

from __future__ import annotations

import argparse
import time

import mudata as md
import scvi
from _common import PBMC, quiet, write_results

from mosaicvi import MosaicVI

#: cell type -> (protein marker, gene marker)
MARKERS = {
    "CD4 T": ("cd4.1", None),
    "CD8 T": ("cd8", "CD8A"),
    "B": ("cd19", "MS4A1"),
    "Mono": ("cd14", "S100A8"),
    "NK": ("cd56.1", "GNLY"),
}
#: (column, donor whose cells are tested or None for all with the modality, method, given)
SETTINGS = {
    "protein, measured cells": ("protein", None, "differential_protein", None),
    "protein of p1 (no protein), from RNA": ("protein", "p1_0", "differential_protein", ["rna"]),
    "genes of p2 (no RNA), from protein": ("gene", "p2_0", "differential_expression", ["protein"]),
}


def marker_rank(result, marker: str) -> int:
    """1-based rank of ``marker`` by ``proba_de`` among the features up in group 1."""
    up = result[result["lfc_mean"] > 0].sort_values("proba_de", ascending=False, kind="stable")
    return int(up.index.get_loc(marker)) + 1 if marker in up.index else -1


def run(seed: int, max_epochs: int | None, samples: int) -> list[dict]:
    scvi.settings.seed = seed
    mdata = md.read_h5mu(PBMC)
    MosaicVI.setup_mudata(
        mdata, modalities={"rna": "rna", "protein": "protein"}, batch_key="batch"
    )
    model = MosaicVI(mdata)
    model.train(max_epochs=max_epochs, enable_progress_bar=False)
    types = mdata.obs["celltype"].astype(str).to_numpy()
    donors = mdata.obs["batch"].astype(str).to_numpy()
    has_protein = mdata.obsm["protein"].reshape(-1).astype(bool)
    rows = []
    for setting, (kind, donor, method, given) in SETTINGS.items():
        cells = (donors == donor) if donor else has_protein
        for cell_type, (protein, gene) in MARKERS.items():
            marker = protein if kind == "protein" else gene
            if marker is None:
                continue
            start = time.perf_counter()
            result = getattr(model, method)(
                idx1=cells & (types == cell_type),
                idx2=cells & (types != cell_type),
                given=given,
                n_samples_overall=samples,
                seed=seed,
            )
            rows.append(
                {
                    "model": "MosaicVI",
                    "seed": seed,
                    "setting": setting,
                    "cell_type": cell_type,
                    "marker": marker,
                    "rank": marker_rank(result, marker),
                    "n_features": len(result),
                    "proba_de": float(result.loc[marker, "proba_de"]),
                    "lfc_mean": float(result.loc[marker, "lfc_mean"]),
                    "n_cells": int((cells & (types == cell_type)).sum()),
                    "seconds": time.perf_counter() - start,
                }
            )
            print(rows[-1])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--samples", type=int, default=2000, help="n_samples_overall")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 5 epochs")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.max_epochs, args.samples = [0], 5, 200
    quiet()
    runs = [row for seed in args.seeds for row in run(seed, args.max_epochs, args.samples)]
    settings = {"seeds": args.seeds, "max_epochs": args.max_epochs, "samples": args.samples}
    print(write_results("differential", {**settings, "runs": runs}, args.quick))


if __name__ == "__main__":
    main()
