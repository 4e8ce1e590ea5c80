"""Reference mapping on the real PBMC mosaic: MosaicVI and TOTALVI ``load_query_data`` (issue 17).

Two splits, each with a reference trained without one donor that is then mapped as an
**RNA-only** query (scArches: only the query batch's new parameters are trained):

- **p1**, the donor measured in RNA only: reference on p2 (protein only), p3 and p4 (paired);
  15-NN label transfer from the paired reference donors (p3, p4) to the mapped p1 cells.
- **p4**, a paired donor whose protein is held out: reference on p1, p2 and p3; label transfer
  from p3 to p4, and p4's protein imputed from its RNA against the measured counts (mean
  per-protein Pearson of ``log1p``, denoised foreground).

Against: MosaicVI trained **de novo** on every donor (p4's protein hidden in the second split),
and scvi-tools' TOTALVI with its own ``load_query_data`` on the same split (zero-padded
protein for the query; TOTALVI cannot use the protein-only donor p2, so its reference lacks
it). Same epochs, batch size and seed for every model; "map seconds" is
``load_query_data`` + ``train`` + the query's latent.

    python benchmarks/query_mapping.py [--seeds 0 1 2] [--quick]
"""

from __future__ import annotations

import time

import mudata as md
import numpy as np
import pandas as pd
import scvi
from _common import (
    BATCH_SIZE,
    PBMC,
    hide,
    imputation_scores,
    pad,
    parse_args,
    read,
    subset_cells,
    train_mosaicvi,
    train_totalvi,
    write_results,
)

from mosaicvi import MosaicVI
from mosaicvi.metrics import knn_label_transfer_accuracy

MODALITIES = {"rna": "rna", "protein": "protein"}
#: query donor -> donors whose cells the label-transfer classifier is fit on
SPLITS = {"p1_0": ["p3_0", "p4_0"], "p4_0": ["p3_0"]}


def accuracy(z: np.ndarray, obs, fit_on: list[str], donor: str) -> float:
    batch = obs["batch"].to_numpy()
    return knn_label_transfer_accuracy(
        z, obs["celltype"].to_numpy(), np.isin(batch, fit_on), batch == donor
    )


def mapped_accuracy(z_ref, ref_obs, z_query, query_obs, donor: str) -> float:
    """Label transfer to the mapped query cells from the reference's cells of the split."""
    z = np.concatenate([z_ref, z_query])
    obs = pd.concat([ref_obs[["batch", "celltype"]], query_obs[["batch", "celltype"]]])
    return accuracy(z, obs, SPLITS[donor], donor)


def rna_only(mdata: md.MuData, cells) -> md.MuData:
    """The RNA of ``cells`` as a one-modality MuData (the query as a lab would have it)."""
    rna = mdata["rna"][mdata["rna"].obs_names.isin(cells)].copy()
    out = md.MuData({"rna": rna})
    out.obs = mdata.obs.loc[out.obs_names, ["batch", "celltype"]].copy()
    return out


def mosaicvi_mapping(full, donor: str, seed: int, epochs: int, truth) -> dict:
    names = full.obs_names[full.obs["batch"] != donor]
    reference = subset_cells(full, names)
    ref_model = train_mosaicvi(reference, MODALITIES, seed, epochs)
    query = rna_only(full, full.obs_names[full.obs["batch"] == donor])
    scvi.settings.seed = seed
    start = time.perf_counter()
    prepared = MosaicVI.prepare_query_mudata(query, ref_model)
    model = MosaicVI.load_query_data(prepared, ref_model)
    model.train(max_epochs=epochs, batch_size=BATCH_SIZE, enable_progress_bar=False)
    z_query = model.get_latent_representation()
    seconds = time.perf_counter() - start
    z_ref = model.get_latent_representation(adata=reference)
    result = {
        "model": "MosaicVI query",
        "map_seconds": seconds,
        "accuracy": mapped_accuracy(z_ref, reference.obs, z_query, prepared.obs, donor),
    }
    if truth is not None:
        pred = model.get_protein_expression(
            indices=prepared.obs_names.get_indexer(truth.obs_names),
            given=["rna"],
            return_numpy=True,
        )
        result |= imputation_scores(np.log1p(pred), np.log1p(truth.X.toarray()))
    return result


def mosaicvi_de_novo(full, donor: str, seed: int, epochs: int, truth) -> dict:
    data = hide(full, {"protein": [donor]}, "batch") if truth is not None else full.copy()
    start = time.perf_counter()
    model = train_mosaicvi(data, MODALITIES, seed, epochs)
    z = model.get_latent_representation()
    result = {
        "model": "MosaicVI de novo",
        "train_seconds": time.perf_counter() - start,
        "accuracy": accuracy(z, data.obs, SPLITS[donor], donor),
    }
    if truth is not None:
        pred = model.get_protein_expression(
            indices=data.obs_names.get_indexer(truth.obs_names), given=["rna"], return_numpy=True
        )
        result |= imputation_scores(np.log1p(pred), np.log1p(truth.X.toarray()))
    return result


def totalvi_mapping(full, donor: str, seed: int, epochs: int, truth) -> dict:
    with_rna = full.obs_names[full.obsm["rna"].reshape(-1).astype(bool)]
    data = subset_cells(full, with_rna)  # TOTALVI needs RNA for every cell: no p2
    if truth is not None:
        data = hide(data, {"protein": [donor]}, "batch")
    padded = pad(data, ["rna", "protein"], ["batch", "celltype"])
    is_query = (padded.obs["batch"] == donor).to_numpy()
    reference = padded[~is_query].copy()
    query = padded[is_query].copy()
    ref_model = train_totalvi(reference, seed, epochs)
    scvi.settings.seed = seed
    start = time.perf_counter()
    model = scvi.model.TOTALVI.load_query_data(query, ref_model)
    model.train(
        max_epochs=epochs,
        batch_size=BATCH_SIZE,
        enable_progress_bar=False,
        plan_kwargs={"weight_decay": 0.0},
    )
    z_query = model.get_latent_representation()
    seconds = time.perf_counter() - start
    z_ref = model.get_latent_representation(adata=reference)
    result = {
        "model": "TOTALVI query",
        "map_seconds": seconds,
        "accuracy": mapped_accuracy(z_ref, reference.obs, z_query, query.obs, donor),
    }
    if truth is not None:
        measured = sorted(set(reference.obs["batch"]) & set(full["protein"].obs["batch"]))
        _, pro = model.get_normalized_expression(
            indices=query.obs_names.get_indexer(truth.obs_names),
            transform_batch=measured,
            include_protein_background=False,
            return_mean=True,
        )
        result |= imputation_scores(np.log1p(pro.to_numpy()), np.log1p(truth.X.toarray()))
    return result


def main() -> None:
    args, seeds, budget = parse_args(__doc__)
    epochs = budget["pbmc_epochs"]
    full = read(PBMC)
    if args.quick:
        keep = np.concatenate(
            [idx[:60] for idx in full.obs.groupby("batch", observed=True).indices.values()]
        )
        full = subset_cells(full, full.obs_names[np.sort(keep)])
    runs = []
    for seed in seeds:
        for donor in SPLITS:
            prot = full["protein"]
            truth = prot[prot.obs["batch"] == donor] if donor in set(prot.obs["batch"]) else None
            for fn in (mosaicvi_mapping, mosaicvi_de_novo, totalvi_mapping):
                row = {"seed": seed, "query": donor, **fn(full, donor, seed, epochs, truth)}
                print(row, flush=True)
                runs.append(row)
    write_results(
        "query_mapping",
        {"epochs": epochs, "batch_size": BATCH_SIZE, "n_cells": int(full.n_obs), "runs": runs},
        args.quick,
    )


if __name__ == "__main__":
    main()
