"""Ablation of MosaicVI's options: every fusion x objective, stacked and denoising encoders.

Each variant is trained on the two real mosaic data sets, with every other setting at its
default and the same seed, batch size and epoch budget as the other benchmarks:

- PBMC CITE-seq with donor p4's protein hidden (p4 becomes RNA-only, like p1): scIB on the
  cells with RNA, 15-NN label transfer from the paired donors to p1 (RNA only) and p2
  (protein only), and p4's protein imputed from RNA (mean per-protein Pearson of ``log1p``
  denoised foreground against the held-out counts);
- SNARE-seq with ATAC hidden for libraries 09A-09C and RNA for 09D-09F: scIB on every cell,
  accessibility imputed from RNA (per-cell AUROC) and expression from ATAC (per-cell
  Pearson of log-normalised values).

The time per epoch is the training wall time divided by the number of epochs (validation
included), in this one process, variants run one after another.

    python benchmarks/ablation.py [--seeds 0] [--quick]

Writes ``benchmarks/results/ablation.json`` and regenerates ``docs/benchmarks.md``.
"""

from __future__ import annotations

import inspect

import _common as C
from imputation import (
    HIDE_ATAC,
    HIDE_RNA,
    pbmc_protein_hidden,
    protein_from_rna,
    snareseq_mosaic,
)

from mosaicvi import MosaicVI
from mosaicvi.module import MosaicVAE

#: Name of each variant and its MosaicVI arguments (the rest at their defaults); the first is
#: the reference of the relative time per epoch.
VARIANTS = {
    "PoE / ELBO": {"fusion": "poe", "objective": "elbo"},
    "PoE / MVTCAE": {"objective": "mvtcae"},
    "MoE / ELBO": {"fusion": "moe"},
    "MoE / MVTCAE": {"fusion": "moe", "objective": "mvtcae"},
    "MoPoE / ELBO": {"fusion": "mopoe"},
    "MoPoE / MVTCAE": {"fusion": "mopoe", "objective": "mvtcae"},
    "PoE / ELBO, subset terms reconstruct own modality": {"subset_reconstruction": "own"},
    "PoE / ELBO, stacked n_hidden=[256, 128]": {"n_hidden": [256, 128]},
    "PoE / ELBO, denoising corruption_rate=0.2": {"corruption_rate": 0.2},
}
DEFAULT_SEEDS = [0]


def run_variants(
    hidden, modalities: dict, seeds: list[int], epochs: int, evaluate, scib_args: tuple
) -> list[dict]:
    """Train every variant on ``hidden`` per seed; ``evaluate(model)`` gives its latent for
    scIB (``scib_args``: obs, batch key, label key, unintegrated embedding) and metrics."""
    runs = []
    for seed in seeds:
        embeddings, rows = {}, {}
        for name, kwargs in VARIANTS.items():
            model, sec = C.timed(
                C.train_mosaicvi, hidden.copy(), modalities, seed, epochs, model_kwargs=kwargs
            )
            embeddings[name], metrics = evaluate(model)
            rows[name] = {
                "seed": seed,
                "model": name,
                "train_seconds": sec,
                "seconds_per_epoch": sec / epochs,
                **metrics,
            }
            print(rows[name], flush=True)
        scores = C.scib_scores(embeddings, *scib_args)
        runs += [{**rows[name], **scores[name]} for name in VARIANTS]
    return runs


def pbmc(seeds: list[int], quick: bool, epochs: int) -> dict:
    _, hidden, p4, truth = pbmc_protein_hidden(quick)
    names = hidden.obs_names
    has_rna = names.isin(hidden["rna"].obs_names)
    obs = hidden.obs.loc[has_rna, ["batch", "celltype"]]
    rna_pca = C.pca_of(hidden["rna"][names[has_rna]])

    def evaluate(model) -> tuple:
        z = model.get_latent_representation()
        protein = C.imputation_scores(protein_from_rna(model, p4), truth)
        return z[has_rna], {
            "p1_accuracy": C.donor_accuracy(z, hidden.obs, "p1_0"),
            "p2_accuracy": C.donor_accuracy(z, hidden.obs, "p2_0"),
            "protein_pearson_per_feature": protein["pearson_per_feature"],
            "protein_pearson_per_cell": protein["pearson_per_cell"],
        }

    modalities = {"rna": "rna", "protein": "protein"}
    scib_args = (obs, "batch", "celltype", rna_pca)
    return {
        "epochs": epochs,
        "n_cells": hidden.n_obs,
        "n_cells_scib": int(has_rna.sum()),
        "n_held_out": len(p4),
        "runs": run_variants(hidden, modalities, seeds, epochs, evaluate, scib_args),
    }


def snareseq(seeds: list[int], epochs: int, n_per_batch: int) -> dict:
    mosaic = snareseq_mosaic(n_per_batch)
    full, hidden = mosaic["full"], mosaic["hidden"]
    names = hidden.obs_names
    # unintegrated reference: PCA of the full (paired) data, in the rows of `hidden`
    pca = C.concatenated_pca(full)[full.obs_names.get_indexer(names)]

    def evaluate(model) -> tuple:
        acc = model.get_accessibility_estimates(
            indices=names.get_indexer(mosaic["no_atac"]), given=["rna"], return_numpy=True
        )
        expr = model.get_normalized_expression(
            indices=names.get_indexer(mosaic["no_rna"]), given=["atac"], return_numpy=True
        )
        return model.get_latent_representation(), mosaic["scores"](acc, expr)

    modalities = {"rna": "rna", "atac": "atac"}
    scib_args = (hidden.obs[["batch", "cell_type"]], "batch", "cell_type", pca)
    return {
        "epochs": epochs,
        "n_cells": hidden.n_obs,
        "atac_hidden": HIDE_ATAC,
        "rna_hidden": HIDE_RNA,
        "runs": run_variants(hidden, modalities, seeds, epochs, evaluate, scib_args),
    }


def main() -> None:
    args, seeds, budget = C.parse_args(__doc__, default_seeds=DEFAULT_SEEDS)
    defaults = {  # MosaicVI's arguments, then those it passes on to MosaicVAE
        k: p.default
        for cls in (MosaicVAE, MosaicVI)
        for k, p in inspect.signature(cls).parameters.items()
    }
    results = {
        "variants": VARIANTS,
        "defaults": [
            n for n, kw in VARIANTS.items() if all(defaults[k] == v for k, v in kw.items())
        ],
        "pbmc": pbmc(seeds, args.quick, budget["pbmc_epochs"]),
        "snareseq": snareseq(seeds, budget["snareseq_epochs"], budget["snareseq_cells_per_batch"]),
    }
    print(C.write_results("ablation", results, args.quick))


if __name__ == "__main__":
    main()
