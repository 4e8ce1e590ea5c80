"""Where MosaicVI's protein imputation loses to the 15-NN baseline: latent or decoder.

PBMC CITE-seq with donor p4's protein hidden, as in ``imputation.py``, same seeds and epoch
budget. For each protein likelihood (totalVI's ``"mixture"``, the default, and ``"nb"``) and
seed, p4's protein is predicted from RNA in two ways and scored per protein and per cell
(Pearson of ``log1p`` values against the held-out counts):

- **decoder**: ``get_protein_expression(given=["rna"])``, the denoised foreground and the
  expected count with background (the same thing under ``"nb"``);
- **15-NN on the latent**: the issue's baseline procedure (15-NN regression fit on donor
  p3's ``log1p`` protein) applied in MosaicVI's RNA-only latent instead of RNA PCA. If it
  beats the decoder, the information is in the latent and the decoder loses it.

Two diagnostics of where the decoder loses:

- **cell level**: the Pearson correlation, across p4 cells, of each predictor's per-cell mean
  ``log1p`` protein with the truth's; and, for the decoder, its per-protein Pearson once its
  per-cell means are replaced by those of the 15-NN regression on the latent (the decoder's
  profile across proteins, the 15-NN's level of each cell);
- **cells seen in training**: the mixture model trained again with ``train_size=0.5``, its
  decoder scored separately on the p4 cells of the training split (whose RNA it was fit to)
  and of the validation split (never seen).

Under the mixture it also counts the proteins whose foreground scale ``relu(.) + 1`` is at
its floor of 1 for every p4 cell (a ReLU that never fires: foreground equals background).

    python benchmarks/protein_imputation.py [--seeds 0 1 2] [--quick]

Writes ``benchmarks/results/protein_imputation.json`` and regenerates ``docs/benchmarks.md``.
"""

from __future__ import annotations

import _common as C
import numpy as np
import torch
from imputation import pbmc_protein_hidden, protein_from_rna
from sklearn.neighbors import KNeighborsRegressor

from mosaicvi._constants import MODULE_KEYS

LIKELIHOODS = ["mixture", "nb"]


@torch.inference_mode()
def floored_foreground(model, indices: np.ndarray, batches: list[str]) -> int:
    """Proteins whose foreground scale is exactly 1 for every cell of ``indices`` under each
    batch of ``batches`` (latent given RNA)."""
    module = model.module
    head = module.heads["protein"]
    categories = model.adata_manager.batch_categories()
    floored = None
    loader = model._make_data_loader(adata=model.adata, indices=indices, batch_size=1024)
    for tensors in loader:
        posterior = module.posterior(tensors, given=["rna"])
        z, covariates = posterior[MODULE_KEYS.QZ].loc, posterior[MODULE_KEYS.COVARIATES]
        for batch in batches:
            code = torch.full((z.shape[0], 1), categories.index(batch), dtype=torch.long)
            scale = head.foreground_scale(z, covariates.with_batch(code))
            at_floor = (scale == 0).all(0)
            floored = at_floor if floored is None else floored & at_floor
    return int(floored.sum())


def cell_level(pred: np.ndarray, truth: np.ndarray) -> float:
    """Pearson correlation across cells of the per-cell mean of ``pred`` and of ``truth``."""
    return float(np.corrcoef(pred.mean(1), truth.mean(1))[0, 1])


def seen_and_unseen(hidden, p4: np.ndarray, truth: np.ndarray, seed: int, epochs: int) -> list:
    """The default model trained on half the cells: its decoder's scores on the p4 cells of
    the training split and of the validation split."""
    model = C.train_mosaicvi(
        hidden.copy(), {"rna": "rna", "protein": "protein"}, seed, epochs, train_size=0.5
    )
    pred = protein_from_rna(model, p4, include_background=True)
    seen = np.isin(model.adata.obs_names.get_indexer(p4), model.train_indices)
    return [
        {
            "seed": seed,
            "model": f"MosaicVI (train_size=0.5): decoder, with background, {label}",
            "n_cells": int(rows.sum()),
            "cell_level_pearson": cell_level(pred[rows], truth[rows]),
            **C.imputation_scores(pred[rows], truth[rows]),
        }
        for label, rows in (("p4 cells in training", seen), ("p4 cells not seen", ~seen))
    ]


def main() -> None:
    args, seeds, budget = C.parse_args(__doc__)
    epochs = budget["pbmc_epochs"]
    full, hidden, p4, truth = pbmc_protein_hidden(args.quick)
    prot = full["protein"]
    names = hidden.obs_names
    p4_idx = names.get_indexer(p4)  # in the order of p4 (and of truth)
    batch = hidden.obs["batch"].to_numpy()
    p3_idx = np.flatnonzero(batch == "p3_0")
    p3_protein = np.log1p(prot[names[p3_idx]].X.toarray())

    baseline_pred = C.knn_protein_regression(full)[0]
    baseline = C.imputation_scores(baseline_pred, truth)
    runs = [
        {
            "seed": None,
            "model": "15-NN regression on RNA PCA (p3)",
            "cell_level_pearson": cell_level(baseline_pred, truth),
            **baseline,
        }
    ]
    split_runs = []
    for seed in seeds:
        for likelihood in LIKELIHOODS:
            model, sec = C.timed(
                C.train_mosaicvi,
                hidden.copy(),
                {"rna": "rna", "protein": "protein"},
                seed,
                epochs,
                model_kwargs={"protein_likelihood": likelihood},
            )
            name = f'MosaicVI, protein_likelihood="{likelihood}"'

            latent = model.get_latent_representation(indices=p4_idx, given=["rna"])
            reference = model.get_latent_representation(indices=p3_idx, given=["rna"])
            knn = KNeighborsRegressor(n_neighbors=15).fit(reference, p3_protein).predict(latent)
            extra = {}
            if likelihood == "mixture":
                measured = model.measured_batches_["protein"]
                extra = {
                    "floored_foreground_proteins": floored_foreground(model, p4_idx, measured)
                }
            # (label, prediction, from the decoder, extra fields)
            rows = [(f"{name}: decoder", protein_from_rna(model, p4), True, extra)]
            if likelihood == "mixture":  # under "nb" denoised and expected counts coincide
                with_background = protein_from_rna(model, p4, include_background=True)
                rows.append((f"{name}: decoder, with background", with_background, True, {}))
            rows.append((f"{name}: 15-NN on its latent (p3)", knn, False, {}))
            knn_level = knn.mean(1, keepdims=True)
            for label, pred, from_decoder, fields in rows:
                scores = C.imputation_scores(pred, truth)
                scores["cell_level_pearson"] = cell_level(pred, truth)
                if from_decoder:
                    swapped = pred - pred.mean(1, keepdims=True) + knn_level
                    scores["pearson_per_feature_knn_cell_level"] = C.imputation_scores(
                        swapped, truth
                    )["pearson_per_feature"]
                runs.append(
                    {"seed": seed, "model": label, "train_seconds": sec, **scores, **fields}
                )
                print(runs[-1], flush=True)
        split_runs += seen_and_unseen(hidden, p4, truth, seed, epochs)
        print(split_runs[-2:], flush=True)
    payload = {
        "epochs": epochs,
        "n_cells": int(full.n_obs),
        "n_held_out": len(p4),
        "n_proteins": int(prot.n_vars),
        "runs": runs,
        "split_runs": split_runs,
    }
    print(C.write_results("protein_imputation", payload, args.quick))


if __name__ == "__main__":
    main()
