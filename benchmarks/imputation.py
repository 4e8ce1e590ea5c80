"""Imputation benchmark: predict a hidden modality from the observed one, on real data.

PBMC CITE-seq: donor p4's protein is hidden (p4 becomes RNA-only) and predicted from RNA.
Scored against the held-out counts, both ``log1p``: mean per-protein and per-cell Pearson and
Spearman. Models: MosaicVI (every cell), ``TOTALVI`` (the cells with RNA; p1's and p4's
panels missing), ``MULTIVI`` (zero-padded MuData), and a 15-NN regression on RNA PCA fit on
donor p3 (the baseline of the issue). Each model's denoised protein foreground is scored;
MosaicVI's and TOTALVI's mean including the background are reported too.

SNARE-seq: ATAC is hidden for libraries 09A-09C and RNA for 09D-09F (one mosaic model each
for MosaicVI and ``MULTIVI``). Accessibility predicted from RNA: per-cell AUROC and average
precision of the observed peaks. Expression predicted from ATAC: Pearson (per gene and per
cell) of log-normalised expression.

    python benchmarks/imputation.py [--seeds 0 1 2] [--quick]

Writes ``benchmarks/results/imputation.json`` and regenerates ``docs/benchmarks.md``.
"""

from __future__ import annotations

import _common as C
import numpy as np

from mosaicvi.metrics import feature_correlation

HIDE_ATAC = ["09A", "09B", "09C"]
HIDE_RNA = ["09D", "09E", "09F"]


def pbmc_protein_hidden(quick: bool) -> tuple:
    """PBMC with donor p4's protein hidden: ``full``, ``hidden``, p4's protein cells (names)
    and their held-out ``log1p`` protein counts."""
    full = C.read(C.PBMC)
    if quick:
        full = C.subsample(full, 60, "batch")
    prot = full["protein"]
    p4 = prot.obs_names[prot.obs["batch"] == "p4_0"]
    truth = np.log1p(prot[p4].X.toarray())
    return full, C.hide(full, {"protein": ["p4_0"]}, "batch"), p4, truth


def protein_from_rna(model, cells, include_background: bool = False) -> np.ndarray:
    """``log1p`` protein that ``model`` imputes from RNA for the cells named ``cells``, in
    that order: the denoised foreground, or with ``include_background`` the expected count."""
    out = model.get_protein_expression(
        indices=model.adata.obs_names.get_indexer(cells),
        given=["rna"],
        include_background=include_background,
        return_numpy=True,
    )
    return np.log1p(out)


def snareseq_mosaic(n_per_batch: int) -> dict:
    """SNARE-seq subsample with ATAC hidden for ``HIDE_ATAC`` and RNA for ``HIDE_RNA``.

    Returns ``full``, ``hidden`` (unpadded), the cells without ATAC / RNA (``no_atac``,
    ``no_rna``) and a ``scores(accessibility, expression)`` function of predictions for them.
    """
    full = C.subsample(C.read(C.SNARE), n_per_batch, "batch")
    batch = full.obs["batch"].to_numpy()
    no_atac = full.obs_names[np.isin(batch, HIDE_ATAC)]
    no_rna = full.obs_names[np.isin(batch, HIDE_RNA)]
    atac_truth = full["atac"][no_atac].X
    rna_truth = C.log_normalize(full["rna"][no_rna].X)

    def scores(acc: np.ndarray, expr: np.ndarray) -> dict:
        """Per-cell AUROC / AP of accessibility, Pearson of log-normalised expression."""
        expr = C.log_normalize(expr)
        return {
            **C.accessibility_scores(acc, atac_truth),
            **{
                f"rna_pearson_{name}": float(
                    np.nanmean(feature_correlation(expr, rna_truth, axis=axis))
                )
                for axis, name in ((0, "per_feature"), (1, "per_cell"))
            },
        }

    return {
        "full": full,
        "hidden": C.hide(full, {"atac": HIDE_ATAC, "rna": HIDE_RNA}, "batch"),
        "no_atac": no_atac,
        "no_rna": no_rna,
        "scores": scores,
    }


def pbmc(seeds: list[int], quick: bool, epochs: int) -> dict:
    full, hidden, p4, truth = pbmc_protein_hidden(quick)
    prot = full["protein"]
    names = hidden.obs_names

    baseline = C.imputation_scores(C.knn_protein_regression(full)[0], truth)

    runs = [{"seed": None, "model": "15-NN regression on RNA PCA (p3)", **baseline}]
    for seed in seeds:
        model, sec = C.timed(
            C.train_mosaicvi, hidden.copy(), {"rna": "rna", "protein": "protein"}, seed, epochs
        )
        runs.append(
            {
                "seed": seed,
                "model": "MosaicVI",
                "train_seconds": sec,
                **C.imputation_scores(protein_from_rna(model, p4), truth),
                **C.imputation_scores(
                    protein_from_rna(model, p4, include_background=True), truth, "with_background_"
                ),
            }
        )
        print(runs[-1], flush=True)

        padded = C.pad(hidden, ["rna", "protein"], ["batch"])
        model, sec = C.timed(C.train_multivi, padded, seed, epochs)
        pred = C.multivi_decode(model, padded.obs_names.get_indexer(p4))["protein"]
        runs.append(
            {
                "seed": seed,
                "model": "MULTIVI",
                "train_seconds": sec,
                **C.imputation_scores(np.log1p(pred), truth),
            }
        )
        print(runs[-1], flush=True)

        has_rna = names.isin(hidden["rna"].obs_names)
        padded = C.pad(C.subset_cells(hidden, names[has_rna]), ["rna", "protein"], ["batch"])
        model, sec = C.timed(C.train_totalvi, padded, seed, epochs)
        idx = padded.obs_names.get_indexer(p4)
        measured = sorted(set(prot.obs["batch"]) & set(padded.obs["batch"]) - {"p4_0"})
        scores = {}
        for prefix, background in (("", False), ("with_background_", True)):
            _, pro = model.get_normalized_expression(
                indices=idx,
                transform_batch=measured,
                include_protein_background=background,
                return_mean=True,
            )
            scores |= C.imputation_scores(np.log1p(pro.to_numpy()), truth, prefix)
        runs.append({"seed": seed, "model": "TOTALVI", "train_seconds": sec, **scores})
        print(runs[-1], flush=True)
    return {"epochs": epochs, "n_cells": int(full.n_obs), "n_held_out": len(p4), "runs": runs}


def snareseq(seeds: list[int], epochs: int, n_per_batch: int) -> dict:
    mosaic = snareseq_mosaic(n_per_batch)
    full, hidden, scores = mosaic["full"], mosaic["hidden"], mosaic["scores"]
    no_atac, no_rna = mosaic["no_atac"], mosaic["no_rna"]
    names = hidden.obs_names

    runs = []
    for seed in seeds:
        model, sec = C.timed(
            C.train_mosaicvi, hidden.copy(), {"rna": "rna", "atac": "atac"}, seed, epochs
        )
        acc = model.get_accessibility_estimates(
            indices=names.get_indexer(no_atac), given=["rna"], return_numpy=True
        )
        expr = model.get_normalized_expression(
            indices=names.get_indexer(no_rna), given=["atac"], return_numpy=True
        )
        runs.append({"seed": seed, "model": "MosaicVI", "train_seconds": sec, **scores(acc, expr)})
        print(runs[-1], flush=True)

        padded = C.pad(hidden, ["rna", "atac"], ["batch"])
        model, sec = C.timed(C.train_multivi, padded, seed, epochs)
        acc = C.multivi_decode(model, padded.obs_names.get_indexer(no_atac))["atac"]
        expr = C.multivi_decode(model, padded.obs_names.get_indexer(no_rna))["rna"]
        runs.append({"seed": seed, "model": "MULTIVI", "train_seconds": sec, **scores(acc, expr)})
        print(runs[-1], flush=True)
    return {
        "epochs": epochs,
        "n_cells": int(full.n_obs),
        "atac_hidden": HIDE_ATAC,
        "rna_hidden": HIDE_RNA,
        "runs": runs,
    }


def main() -> None:
    args, seeds, budget = C.parse_args(__doc__)
    results = {
        "pbmc": pbmc(seeds, args.quick, budget["pbmc_epochs"]),
        "snareseq": snareseq(seeds, budget["snareseq_epochs"], budget["snareseq_cells_per_batch"]),
    }
    print(C.write_results("imputation", results, args.quick))


if __name__ == "__main__":
    main()
