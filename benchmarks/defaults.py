"""Quality of the fast defaults against the exact path they replaced, at equal epochs.

Issue 24 made MosaicVI's defaults the fast path: the Bernoulli ATAC likelihood estimated in
training from every cell's open regions plus the closed regions of a quarter of the cells
(``atac_closed_cells="auto"``, 0.25), with the first layers, the NB likelihood and the
logging made cheaper at no change of the objective. The exact path (``atac_closed_cells=None``,
the default before; ``subset_terms="all"`` is the default either way) is one switch away. Both are trained on the same
data with the same seed, batch size and number of epochs, one after the other, per seed:

- SNARE-seq, 250 cells of each of the 12 libraries (3,000 cells), ATAC hidden for libraries
  09A-09C and RNA for 09D-09F, ``snareseq_epochs`` epochs: 15-NN cell-type label transfer
  with each library left out in turn (fit on the other 11, pooled accuracy), scIB (every
  metric and the total) on every cell, and the accessibility of 09A-09C imputed from RNA,
  scored per region (AUROC of each region's predicted probability across those cells against
  its observed state, regions open in some but not all of them, averaged) and per cell;
- PBMC with donor p4's protein hidden, ``pbmc_epochs`` epochs: 15-NN label transfer from
  the paired donors to the RNA-only donor p1 and the protein-only donor p2, and p4's protein
  imputed from RNA (mean per-protein Pearson of ``log1p``).

    python benchmarks/defaults.py [--seeds 0 1 2] [--quick] [--ablation]

Writes ``benchmarks/results/defaults.json`` and regenerates ``docs/benchmarks.md``. With
``--ablation``, the options not taken: the subset-term draw (``subset_terms="sampled"``) and
the region draw (``atac_closed_samples=1024``) on SNARE-seq (``ABLATION``), the subset-term
draw on PBMC (``ABLATION_PBMC``), into ``defaults_ablation.json``.
"""

from __future__ import annotations

import sys

import _common as C
import numpy as np
import scipy.sparse as sp
from imputation import HIDE_ATAC, pbmc_protein_hidden, protein_from_rna, snareseq_mosaic
from scipy.stats import rankdata

from mosaicvi.metrics import knn_label_transfer_accuracy

#: MosaicVI's arguments of each variant: the defaults and the exact path before issue 24
VARIANTS = {
    "defaults (sampled)": {},
    "exact (before issue 24)": {"atac_closed_cells": None, "subset_terms": "all"},
}
#: ``--ablation``: the options not taken as defaults, on SNARE-seq
#: (the defaults and the exact path are the main run's rows: same seeds, same results)
ABLATION = {
    "one subset term drawn (subset_terms='sampled')": {"subset_terms": "sampled"},
    "regions drawn (atac_closed_samples=1024)": {"atac_closed_samples": 1024},
}
#: ``--ablation`` on PBMC (no ATAC): the subset-term draw
ABLATION_PBMC = {"one subset term drawn (subset_terms='sampled')": {"subset_terms": "sampled"}}
#: SNARE-seq cells per library (issue 24's protocol: 3,000 cells)
SNARE_CELLS_PER_LIBRARY = 250


def per_region_auroc(prob: np.ndarray, truth) -> float:
    """Mean over regions of the AUROC of ``prob[:, r]`` for ``truth[:, r] > 0`` across cells.

    Regions open in none or all of the cells are left out. Computed from ranks (the
    Mann-Whitney statistic, ties averaged), one pass over the regions.
    """
    y = (sp.csr_matrix(truth).toarray() > 0) if sp.issparse(truth) else np.asarray(truth) > 0
    n_pos = y.sum(0)
    n_neg = y.shape[0] - n_pos
    keep = (n_pos > 0) & (n_neg > 0)
    ranks = rankdata(prob[:, keep], axis=0)
    pos_ranks = (ranks * y[:, keep]).sum(0)
    auc = (pos_ranks - n_pos[keep] * (n_pos[keep] + 1) / 2) / (n_pos[keep] * n_neg[keep])
    return float(np.mean(auc))


def leave_one_library_out(z: np.ndarray, labels: np.ndarray, batch: np.ndarray) -> float:
    """15-NN label transfer to each library from the others, pooled over all cells."""
    correct = 0
    for library in np.unique(batch):
        held = batch == library
        accuracy = knn_label_transfer_accuracy(z, labels, ~held, held)
        correct += accuracy * held.sum()
    return float(correct / len(batch))


def train(hidden, modalities: dict, seed: int, epochs: int, kwargs: dict):
    """MosaicVI with ``kwargs`` trained on a copy of ``hidden``, and its training seconds."""
    return C.timed(C.train_mosaicvi, hidden.copy(), modalities, seed, epochs, model_kwargs=kwargs)


def snareseq(seeds: list[int], epochs: int, n_per_batch: int, variants: dict) -> dict:
    mosaic = snareseq_mosaic(n_per_batch)
    full, hidden = mosaic["full"], mosaic["hidden"]
    names = hidden.obs_names
    obs = hidden.obs[["batch", "cell_type"]]
    pca = C.concatenated_pca(full)[full.obs_names.get_indexer(names)]
    truth = full["atac"][mosaic["no_atac"]].X
    runs = []
    for seed in seeds:
        embeddings, rows = {}, {}
        for name, kwargs in variants.items():
            model, seconds = train(hidden, {"rna": "rna", "atac": "atac"}, seed, epochs, kwargs)
            z = model.get_latent_representation()
            acc = model.get_accessibility_estimates(
                indices=names.get_indexer(mosaic["no_atac"]), given=["rna"], return_numpy=True
            )
            embeddings[name] = z
            rows[name] = {
                "seed": seed,
                "model": name,
                "train_seconds": seconds,
                "lolo_accuracy": leave_one_library_out(
                    z, obs["cell_type"].to_numpy(), obs["batch"].to_numpy()
                ),
                "atac_auroc_per_region": per_region_auroc(acc, truth),
                **C.accessibility_scores(acc, truth),
            }
            print(rows[name], flush=True)
        scores = C.scib_scores(embeddings, obs, "batch", "cell_type", pca)
        runs += [{**rows[name], **scores[name]} for name in variants]
    return {
        "epochs": epochs,
        "n_cells": hidden.n_obs,
        "atac_hidden": HIDE_ATAC,
        "runs": runs,
    }


def pbmc(seeds: list[int], quick: bool, epochs: int, variants: dict) -> dict:
    _, hidden, p4, truth = pbmc_protein_hidden(quick)
    runs = []
    for seed in seeds:
        for name, kwargs in variants.items():
            model, seconds = train(
                hidden, {"rna": "rna", "protein": "protein"}, seed, epochs, kwargs
            )
            z = model.get_latent_representation()
            protein = C.imputation_scores(protein_from_rna(model, p4), truth)
            runs.append(
                {
                    "seed": seed,
                    "model": name,
                    "train_seconds": seconds,
                    "p1_accuracy": C.donor_accuracy(z, hidden.obs, "p1_0"),
                    "p2_accuracy": C.donor_accuracy(z, hidden.obs, "p2_0"),
                    "protein_pearson_per_feature": protein["pearson_per_feature"],
                }
            )
            print(runs[-1], flush=True)
    return {"epochs": epochs, "n_cells": hidden.n_obs, "runs": runs}


def main() -> None:
    ablation = "--ablation" in sys.argv
    if ablation:
        sys.argv.remove("--ablation")
    args, seeds, budget = C.parse_args(__doc__)
    n_per_batch = 25 if args.quick else SNARE_CELLS_PER_LIBRARY
    variants = ABLATION if ablation else VARIANTS
    results = {
        "variants": variants,
        "snareseq": snareseq(seeds, budget["snareseq_epochs"], n_per_batch, variants),
    }
    pbmc_variants = ABLATION_PBMC if ablation else VARIANTS
    results["pbmc"] = pbmc(seeds, args.quick, budget["pbmc_epochs"], pbmc_variants)
    results["pbmc_variants"] = pbmc_variants
    name = "defaults_ablation" if ablation else "defaults"
    print(C.write_results(name, results, args.quick))


if __name__ == "__main__":
    main()
