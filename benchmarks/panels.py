"""Panels that differ between batches: features masked as unmeasured, against zero-filled.

**PBMC CITE-seq** (the four-donor mosaic: p1 RNA-only, p2 protein-only, p3 and p4 paired).
Half of the 224 proteins (every other one in the panel's order) are removed from donor p4,
as a concatenation of two panels gives them: zero columns for p4's cells. Those proteins are
then predicted for p4 and scored against the held-out counts (mean per-protein Pearson of
``log1p``):

- **MosaicVI, masked**: ``setup_mudata`` at its defaults; its heuristic finds p4's zero
  columns and masks them (left out of the likelihood and of the protein expert). p4's
  hidden proteins are decoded from the latent given RNA and p4's measured proteins, under
  the batches that measured them (the getter's default);
- **MosaicVI, zero-filled**: ``infer_feature_masks=False``, the zeros modelled as measured;
  scored with the getter's default (p4's own batch) and decoded under p3 (a batch that
  measured them), which is the better a user could do;
- **TOTALVI** with its protein batch mask (scvi-tools masks a protein with no count in a
  batch), on the cells with RNA (p1, p3, p4; p1's absent panel is masked the same way),
  decoded under p3 as scvi-tools' docs do for a missing panel;
- **15-NN**: a 15-nearest-neighbour regression of ``log1p`` protein on RNA PCA, fit on p3.

Integration of the masked model against the **full-panel** model (the data before removal):
15-NN label transfer from the paired donors to p1 (RNA-only) and p2 (protein-only), scIB on
the cells with RNA.

**SNARE-seq** (RNA + ATAC, 12 libraries, ``--snare-cells`` per library): half of the peaks
(drawn at random, seed 0) removed from 3 libraries (09A, 09E, 09I), given to the model as
``feature_masks`` (peak sets are known; the count heuristic, which needs 10 expected counts,
finds few of them at this depth). The removed peaks' accessibility is predicted for those
libraries' cells and scored by the per-region AUROC (mean over regions with both open and
closed cells) against the held-out binarised counts; masked against zero-filled MosaicVI.

Every model trains for the same fixed budget per data set (``EPOCHS``), 3 seeds.

    python benchmarks/panels.py [--dataset pbmc|snareseq] [--seeds 0 1 2] [--threads 1] [--quick]

Writes ``benchmarks/results/panels.json`` (rows merged by data set, seed and model, so that
invocations for other seeds can run side by side) and regenerates ``docs/benchmarks.md``
(with ``--report``).
"""

from __future__ import annotations

import argparse
import json
import sys

import _common as C
import numpy as np
import pandas as pd
from quality import THREADS, knn_protein, per_protein_r, save_merged, timed_training
from sklearn.metrics import roc_auc_score

PBMC_MODS = {"rna": "rna", "protein": "protein"}
SNARE_MODS = {"rna": "rna", "atac": "atac"}
EPOCHS = {"pbmc": 200, "snareseq": 60}
SNARE_MASKED = ["09A", "09E", "09I"]
NAME = "panels"


def hidden_proteins(names: pd.Index) -> list[str]:
    """Every other protein of the panel, in its order."""
    return list(names[::2])


def without_features(mdata, mod: str, cells, features) -> C.md.MuData:
    """A copy of ``mdata`` whose ``mod`` holds 0 at ``features`` for ``cells`` (the matrix is
    copied; the benchmark's data, not a user's)."""
    out = mdata.copy()
    adata = out.mod[mod]
    rows = adata.obs_names.get_indexer(cells)
    cols = adata.var_names.get_indexer(features)
    if C.sp.issparse(adata.X):
        coo = C.sp.coo_matrix(adata.X, dtype=np.float32)
        keep = ~(np.isin(coo.row, rows) & np.isin(coo.col, cols))
        adata.X = C.sp.csr_matrix(
            (coo.data[keep], (coo.row[keep], coo.col[keep])), shape=adata.shape
        )
    else:
        x = np.array(adata.X, dtype=np.float32)
        x[np.ix_(rows, cols)] = 0
        adata.X = x
    return out


def train(mdata, mods, seed, epochs, **setup):
    C.scvi.settings.seed = seed
    C.MosaicVI.setup_mudata(mdata, modalities=mods, batch_key="batch", **setup)
    model = C.MosaicVI(mdata)
    model.train(max_epochs=epochs, batch_size=C.BATCH_SIZE, enable_progress_bar=False)
    return model


def pbmc(seeds: list[int], quick: bool, rows: list, save) -> None:
    full = C.read(C.PBMC)
    if quick:
        full = C.subsample(full, 60, "batch")
    epochs = 3 if quick else EPOCHS["pbmc"]
    prot = full["protein"]
    names = full.obs_names
    rna_cells = names[names.isin(full["rna"].obs_names)]
    p3 = prot.obs_names[prot.obs["batch"] == "p3_0"]
    p4 = prot.obs_names[prot.obs["batch"] == "p4_0"]
    hidden = hidden_proteins(prot.var_names)
    cols = prot.var_names.get_indexer(hidden)
    truth = np.log1p(prot[p4].X.toarray()[:, cols])
    masked_data = without_features(full, "protein", p4, hidden)
    obs = full.obs.loc[rna_cells, ["batch", "celltype"]]
    rna_pca = C.pca_of(full["rna"][rna_cells])

    def done(seed, model) -> bool:
        return any(
            r["dataset"] == "pbmc" and r["seed"] == seed and r["model"] == model for r in rows
        )

    def add(row: dict) -> None:
        rows.append({"dataset": "pbmc", **row})
        print(json.dumps(rows[-1]), flush=True)
        save()

    if not done(None, "15-NN on RNA PCA"):
        knn = knn_protein(rna_pca, rna_cells, p3, np.log1p(prot[p3].X.toarray()[:, cols]), p4)
        add(
            {
                "seed": None,
                "model": "15-NN on RNA PCA",
                "hidden_protein_r": per_protein_r(knn, truth),
            }
        )

    def integration(model) -> dict:
        z = model.get_latent_representation()
        out = {f"{d[:2]}_accuracy": C.donor_accuracy(z, full.obs, d) for d in ("p1_0", "p2_0")}
        scores = C.scib_scores({"m": z[names.isin(rna_cells)]}, obs, "batch", "celltype", rna_pca)
        return out | {f"scib {k}": v for k, v in scores["m"].items()}

    def imputed(model, **kwargs) -> np.ndarray:
        out = model.get_protein_expression(
            indices=model.adata.obs_names.get_indexer(p4),
            include_background=True,
            return_numpy=True,
            **kwargs,
        )
        return np.log1p(out[:, cols])

    for seed in seeds:
        if not done(seed, "MosaicVI (masked)"):
            model, sec = timed_training(train, masked_data.copy(), PBMC_MODS, seed, epochs)
            mask = model.adata_manager.feature_masks().get("protein")
            p4_code = model.adata_manager.batch_categories().index("p4_0")
            n_masked = 0 if mask is None else int((~mask[p4_code]).sum())
            add(
                {
                    "seed": seed,
                    "model": "MosaicVI (masked)",
                    "train_seconds": sec,
                    "n_masked": n_masked,
                    "hidden_protein_r": per_protein_r(imputed(model), truth),
                    **integration(model),
                }
            )
        if not done(seed, "MosaicVI (zero-filled)"):
            model, sec = timed_training(
                train, masked_data.copy(), PBMC_MODS, seed, epochs, infer_feature_masks=False
            )
            add(
                {
                    "seed": seed,
                    "model": "MosaicVI (zero-filled)",
                    "train_seconds": sec,
                    "hidden_protein_r": per_protein_r(imputed(model), truth),
                    "hidden_protein_r_under_p3": per_protein_r(
                        imputed(model, transform_batch="p3_0"), truth
                    ),
                    **integration(model),
                }
            )
        if not done(seed, "MosaicVI (full panel)"):
            model, sec = timed_training(train, full.copy(), PBMC_MODS, seed, epochs)
            add(
                {
                    "seed": seed,
                    "model": "MosaicVI (full panel)",
                    "train_seconds": sec,
                    **integration(model),
                }
            )
        if not done(seed, "TOTALVI"):
            padded = C.pad(C.subset_cells(masked_data, rna_cells), ["rna", "protein"], ["batch"])
            model, sec = timed_training(C.train_totalvi, padded, seed, max_epochs=epochs)
            _, pro = model.get_normalized_expression(
                indices=padded.obs_names.get_indexer(p4),
                transform_batch=["p3_0"],
                include_protein_background=True,
                return_mean=True,
            )
            add(
                {
                    "seed": seed,
                    "model": "TOTALVI",
                    "train_seconds": sec,
                    "hidden_protein_r": per_protein_r(np.log1p(pro.to_numpy()[:, cols]), truth),
                }
            )


def region_auroc(prob: np.ndarray, truth) -> float:
    """Mean over regions (with open and closed cells) of the AUROC of ``prob`` for ``truth > 0``."""
    y = np.asarray(C.sp.csr_matrix(truth).toarray() > 0)
    keep = (y.sum(0) > 0) & (y.sum(0) < y.shape[0])
    return float(np.mean([roc_auc_score(y[:, j], prob[:, j]) for j in np.flatnonzero(keep)]))


def snareseq(seeds: list[int], quick: bool, rows: list, save, n_per_library: int) -> None:
    full = C.subsample(C.read(C.SNARE), 25 if quick else n_per_library, "batch")
    epochs = 3 if quick else EPOCHS["snareseq"]
    atac = full["atac"]
    rng = np.random.default_rng(0)
    regions = atac.var_names[np.sort(rng.choice(atac.n_vars, atac.n_vars // 2, replace=False))]
    cols = atac.var_names.get_indexer(regions)
    cells = full.obs_names[full.obs["batch"].isin(SNARE_MASKED)]
    truth = atac[cells].X[:, cols]
    data = without_features(full, "atac", cells, regions)
    frame = pd.DataFrame(True, index=SNARE_MASKED, columns=atac.var_names)
    frame.loc[:, regions] = False

    def done(seed, model) -> bool:
        return any(
            r["dataset"] == "snareseq" and r["seed"] == seed and r["model"] == model for r in rows
        )

    for seed in seeds:
        for label, setup in (
            ("MosaicVI (masked)", {"feature_masks": {"atac": frame}}),
            ("MosaicVI (zero-filled)", {"infer_feature_masks": False}),
        ):
            if done(seed, label):
                continue
            model, sec = timed_training(train, data.copy(), SNARE_MODS, seed, epochs, **setup)
            prob = model.get_accessibility_estimates(
                indices=model.adata.obs_names.get_indexer(cells), return_numpy=True
            )[:, cols]
            z = model.get_latent_representation()
            rows.append(
                {
                    "dataset": "snareseq",
                    "seed": seed,
                    "model": label,
                    "train_seconds": sec,
                    "hidden_region_auroc": region_auroc(prob, truth),
                    "lolo_accuracy": lolo(z, full.obs),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
            save()


def lolo(z, obs) -> float:
    from quality import lolo_accuracy

    return lolo_accuracy(z, obs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=["pbmc", "snareseq"], help="one data set")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=C.N_THREADS)
    parser.add_argument("--snare-cells", type=int, default=100, help="cells per library")
    parser.add_argument("--quick", action="store_true", help="smoke run: few cells, 3 epochs")
    args = parser.parse_args()
    C.quiet()
    THREADS["n"] = args.threads
    seeds = args.seeds[:1] if args.quick else args.seeds
    path = (C.RESULTS_DIR / "quick" if args.quick else C.RESULTS_DIR) / f"{NAME}.json"
    previous = json.loads(path.read_text()) if path.exists() and not args.quick else {}
    rows = previous.get("runs", [])
    command = " ".join(["python", "benchmarks/panels.py", *sys.argv[1:]])

    def save() -> None:
        keys = ("dataset", "seed", "model")
        save_merged(path, NAME, rows, [command], keys, {"epochs": EPOCHS}, args.quick)

    for dataset in [args.dataset] if args.dataset else ["pbmc", "snareseq"]:
        if dataset == "pbmc":
            pbmc(seeds, args.quick, rows, save)
        else:
            snareseq(seeds, args.quick, rows, save, args.snare_cells)


if __name__ == "__main__":
    sys.exit(main())
