"""Integration benchmark: MosaicVI against scvi-tools' MULTIVI and TOTALVI on real data.

SNARE-seq mouse cortex (RNA + ATAC, 12 libraries): MosaicVI, ``MULTIVI`` and PCA of the
concatenated normalised modalities, scored with scib-metrics' ``Benchmarker`` against
``cell_type`` across ``batch``.

PBMC CITE-seq mosaic (RNA-only donor p1, protein-only p2, paired p3 and p4): MosaicVI on
every cell, ``MULTIVI`` on the zero-padded MuData it requires, ``TOTALVI`` on the cells it can
take (the 1,200 cells with RNA; p1's protein panel is missing). scib-metrics on the 1,200 RNA
cells that every model embeds (against ``celltype`` across ``batch``; PCA of RNA as the
unintegrated reference), and the accuracy of a 15-NN classifier fit on the paired donors
and applied to p1 and p2.

    python benchmarks/integration.py [--seeds 0 1 2] [--quick]

Writes ``benchmarks/results/integration.json`` and regenerates ``docs/benchmarks.md``.
"""

from __future__ import annotations

import _common as C


def snareseq(seeds: list[int], epochs: int, n_per_batch: int) -> dict:
    full = C.subsample(C.read(C.SNARE), n_per_batch, "batch")
    obs = full.obs[["batch", "cell_type"]]
    pca = C.concatenated_pca(full)
    runs = []
    for seed in seeds:
        embeddings, seconds = {}, {}
        model, seconds["MosaicVI"] = C.timed(
            C.train_mosaicvi, full.copy(), {"rna": "rna", "atac": "atac"}, seed, epochs
        )
        embeddings["MosaicVI"] = model.get_latent_representation()
        padded = C.pad(full, ["rna", "atac"], ["batch"])
        model, seconds["MULTIVI"] = C.timed(C.train_multivi, padded, seed, epochs)
        embeddings["MULTIVI"] = model.get_latent_representation()
        if seed == seeds[0]:
            embeddings["PCA (concatenated)"] = pca
            seconds["PCA (concatenated)"] = float("nan")
        scores = C.scib_scores(embeddings, obs, "batch", "cell_type", pca)
        for name in embeddings:
            runs.append(
                {"seed": seed, "model": name, "train_seconds": seconds[name], **scores[name]}
            )
            print(runs[-1], flush=True)
    return {"epochs": epochs, "n_cells": int(full.n_obs), "runs": runs}


def pbmc(seeds: list[int], quick: bool, epochs: int) -> dict:
    full = C.read(C.PBMC)
    if quick:
        full = C.subsample(full, 60, "batch")
    has_rna = full.obs_names.isin(full["rna"].obs_names)
    rna_cells = full.obs_names[has_rna]
    obs = full.obs.loc[rna_cells, ["batch", "celltype"]]

    rna_pca = C.pca_of(full["rna"][rna_cells])
    prot = full["protein"]
    references = {
        "PCA of RNA: p1 accuracy": C.donor_accuracy(rna_pca, obs, "p1_0"),
        "PCA of protein: p2 accuracy": C.donor_accuracy(
            C.pca_of(prot, clr=True), full.obs.loc[prot.obs_names], "p2_0"
        ),
    }
    runs = []
    for seed in seeds:
        embeddings, seconds, accuracy = {}, {}, {}
        model, seconds["MosaicVI"] = C.timed(
            C.train_mosaicvi, full.copy(), {"rna": "rna", "protein": "protein"}, seed, epochs
        )
        z = model.get_latent_representation()
        embeddings["MosaicVI"] = z[has_rna]
        accuracy["MosaicVI"] = {
            "p1_accuracy": C.donor_accuracy(z, full.obs, "p1_0"),
            "p2_accuracy": C.donor_accuracy(z, full.obs, "p2_0"),
        }
        padded = C.pad(full, ["rna", "protein"], ["batch"])
        model, seconds["MULTIVI"] = C.timed(C.train_multivi, padded, seed, epochs)
        z = model.get_latent_representation()
        embeddings["MULTIVI"] = z[has_rna]
        accuracy["MULTIVI"] = {
            "p1_accuracy": C.donor_accuracy(z, full.obs, "p1_0"),
            "p2_accuracy": C.donor_accuracy(z, full.obs, "p2_0"),
        }
        padded = C.pad(C.subset_cells(full, rna_cells), ["rna", "protein"], ["batch"])
        model, seconds["TOTALVI"] = C.timed(C.train_totalvi, padded, seed, epochs)
        z = model.get_latent_representation()
        accuracy["TOTALVI"] = {
            "p1_accuracy": C.donor_accuracy(z, obs, "p1_0"),
            "p2_accuracy": float("nan"),  # TOTALVI cannot embed protein-only cells
        }
        embeddings["TOTALVI"] = z
        if seed == seeds[0]:
            embeddings["PCA (RNA)"] = rna_pca
            seconds["PCA (RNA)"] = float("nan")
            accuracy["PCA (RNA)"] = {
                "p1_accuracy": references["PCA of RNA: p1 accuracy"],
                "p2_accuracy": float("nan"),
            }
        scores = C.scib_scores(embeddings, obs, "batch", "celltype", rna_pca)
        for name in embeddings:
            runs.append(
                {
                    "seed": seed,
                    "model": name,
                    "train_seconds": seconds[name],
                    **accuracy[name],
                    **scores[name],
                }
            )
            print(runs[-1], flush=True)
    return {
        "epochs": epochs,
        "n_cells": int(full.n_obs),
        "n_cells_scib": len(rna_cells),
        "references": references,
        "runs": runs,
    }


def main() -> None:
    args, seeds, budget = C.parse_args(__doc__)
    results = {
        "snareseq": snareseq(seeds, budget["snareseq_epochs"], budget["snareseq_cells_per_batch"]),
        "pbmc": pbmc(seeds, args.quick, budget["pbmc_epochs"]),
    }
    print(C.write_results("integration", results, args.quick))


if __name__ == "__main__":
    main()
