"""Label transfer with uncertainty: MosaicANVI against 15-NN, TOTALANVI and scANVI.

PBMC mosaic (four donors): labels of the paired donors p3 and p4; the RNA-only donor p1 and
the protein-only donor p2 are predicted (their labels never reach a model).

- ``15-NN (MosaicVI latent)``: MosaicVI trained unsupervised, a 15-NN classifier on its
  latent fit on the labeled cells (probabilities: the neighbours' shares).
- ``MosaicANVI``: :meth:`mosaicvi.MosaicANVI.from_mosaicvi_model` on that MosaicVI, trained
  further with the labels; probabilities and prediction sets calibrated on the labeled
  cells of its validation set (the default).
- ``MosaicANVI (calibration donor)``: the same, with ``calibration_batches`` (PBMC: p4's
  labels held out of training and used to calibrate; SNARE-seq: library 09G's), so that
  calibration happens on a donor whose labels the classifier never saw. The predicted donors
  and libraries are outside the choice study's (``--study``).
- ``TOTALANVI`` (``scvi.external.TOTALANVI.from_totalvi_model``) on the cells with RNA (p1,
  p3, p4; p1's protein rows are zeros, totalVI's missing-panel convention): p1 only.
- ``scANVI`` (``scvi.model.SCANVI.from_scvi_model``) on RNA: p1 only.

SNARE-seq (200 cells of each of the 12 libraries): the labels (``cell_type``) of libraries
09H, 09J and 09L are left out; each is predicted (scores averaged over the three). MosaicVI
kNN, MosaicANVI (both calibrations: the second holds 09G's labels out) and scANVI on RNA.

Every model gets the same epochs: ``EPOCHS[dataset]`` = (unsupervised, then with labels),
batch size 128, one thread per run. Scores per predicted donor/library: accuracy, macro F1,
expected calibration error (ECE; MosaicANVI's before and after temperature scaling), and for
MosaicANVI the conformal prediction sets at level 0.9: mean set size and coverage (the share
of cells whose set holds their label).

    python benchmarks/labels.py [--dataset pbmc|snareseq] [--seeds 0 1 2] [--threads 1]
        [--quick]
    python benchmarks/labels.py --study [--dataset pbmc|snareseq] [--seeds 0 1 2] [--threads 1]
    python benchmarks/labels.py --speed cpu|gpu [--speed-epochs 10] [--speed-batch-size 1024]

``--speed cpu|gpu`` times MosaicVI and MosaicANVI training side by side on the full
SNARE-seq set (``results/labels_speed_<device>.json``). ``--study`` runs the choice study of MosaicANVI's options (``STUDY``) on data the report
never predicts, rows under the data sets ``pbmc_choice`` and ``snareseq_choice``.

Writes ``benchmarks/results/labels.json`` (rows merged by data set, seed and model) and
regenerates ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import sys

import _common as C
import anndata as ad
import numpy as np
import pandas as pd
from quality import THREADS, save_merged
from sklearn.metrics import f1_score
from sklearn.neighbors import KNeighborsClassifier

from mosaicvi import MosaicANVI, MosaicVI
from mosaicvi.metrics import expected_calibration_error

NAME = "labels"
LEVEL = 0.9
EPOCHS = {"pbmc": (200, 50), "snareseq": (100, 30)}
DATA = {
    "pbmc": {
        "path": C.PBMC,
        "modalities": {"rna": "rna", "protein": "protein"},
        "label": "celltype",
        "predict": ["p1_0", "p2_0"],
        "calibration": ["p4_0"],
    },
    "snareseq": {
        "path": C.SNARE,
        "modalities": {"rna": "rna", "atac": "atac"},
        "label": "cell_type",
        "predict": ["09H", "09J", "09L"],
        "calibration": ["09G"],
    },
}
UNKNOWN = "Unknown"


def scores(truth, categories, pred, probs=None, sets=None, calibrated=None) -> dict:
    """Accuracy, macro F1, ECE and (with ``sets``) mean set size and coverage.

    A cell whose type no labeled cell has counts as a miss in accuracy and coverage and is
    left out of the ECE (``n_unseen_type`` says how many).
    """
    truth = np.asarray(truth, dtype=str)
    codes = pd.Index(categories).get_indexer(truth)
    seen = codes >= 0
    out = {
        "accuracy": float((np.asarray(pred, dtype=str) == truth).mean()),
        "macro_f1": float(f1_score(truth, np.asarray(pred, dtype=str), average="macro")),
        "n_unseen_type": int((~seen).sum()),
    }
    if probs is not None:
        out["ece"] = expected_calibration_error(probs[seen], codes[seen])
    if calibrated is not None:
        out["ece_calibrated"] = expected_calibration_error(calibrated[seen], codes[seen])
    if sets is not None:
        out["set_size"] = float(sets.sum(1).mean())
        covered = np.zeros(len(codes), bool)
        covered[seen] = sets[np.flatnonzero(seen), codes[seen]]
        out["coverage"] = float(covered.mean())
    return out


def _mean_rows(per_group: dict[str, dict]) -> dict:
    """Scores per predicted group, prefixed, and their mean (``mean_<score>``)."""
    row = {f"{g}_{k}": v for g, s in per_group.items() for k, v in s.items()}
    keys = next(iter(per_group.values())).keys()
    row.update({f"mean_{k}": float(np.mean([s[k] for s in per_group.values()])) for k in keys})
    return row


def run(dataset: str, seed: int, quick: bool, rows: list, save) -> None:
    spec = DATA[dataset]
    full = C.read(spec["path"])
    if dataset == "snareseq":
        full = C.subsample(full, 25 if quick else 200, "batch")
    elif quick:
        full = C.subsample(full, 60, "batch")
    epochs = (3, 2) if quick else EPOCHS[dataset]
    batch = full.obs["batch"].astype(str).to_numpy()
    truth = full.obs[spec["label"]].astype(str).to_numpy()
    predict = spec["predict"]
    labelled = ~np.isin(batch, predict)
    full.obs["label"] = np.where(labelled, truth, UNKNOWN)
    groups = {g: np.flatnonzero(batch == g) for g in predict}

    def done(model) -> bool:
        return any(
            r["dataset"] == dataset and r["seed"] == seed and r["model"] == model for r in rows
        )

    def add(model: str, row: dict, seconds: float) -> None:
        rows.append(
            {"dataset": dataset, "seed": seed, "model": model, "train_seconds": seconds, **row}
        )
        print(json.dumps(rows[-1]), flush=True)
        save()

    categories = sorted(set(truth[labelled]))
    data = full.copy()
    (vi, vi_seconds) = C.timed(C.train_mosaicvi, data, spec["modalities"], seed, epochs[0])
    if not done("15-NN (MosaicVI latent)"):
        z = vi.get_latent_representation()
        knn = KNeighborsClassifier(15).fit(z[labelled], truth[labelled])
        proba = pd.DataFrame(knn.predict_proba(z), columns=knn.classes_)
        proba = proba.reindex(columns=categories, fill_value=0.0).to_numpy()
        per = {
            g: scores(truth[i], categories, np.asarray(categories)[proba[i].argmax(1)], proba[i])
            for g, i in groups.items()
        }
        add("15-NN (MosaicVI latent)", _mean_rows(per), vi_seconds)

    for name, extra in (
        ("MosaicANVI", {}),
        ("MosaicANVI (calibration donor)", {"calibration_batches": spec["calibration"]}),
    ):
        if done(name):
            continue
        C.scvi.settings.seed = seed
        model = MosaicANVI.from_mosaicvi_model(vi, UNKNOWN, "label", adata=data)
        _, seconds = C.timed(
            model.train,
            max_epochs=epochs[1],
            batch_size=C.BATCH_SIZE,
            enable_progress_bar=False,
            **extra,
        )
        assert model.label_categories == categories
        raw = model.predict(soft=True, calibrated=False).to_numpy()
        calibrated = model.predict(soft=True).to_numpy()
        sets = model.predict_sets(level=LEVEL).to_numpy()
        pred = np.asarray(categories)[raw.argmax(1)]
        per = {
            g: scores(truth[i], categories, pred[i], raw[i], sets[i], calibrated[i])
            for g, i in groups.items()
        }
        row = _mean_rows(per)
        row["temperatures"] = {k: v["temperature"] for k, v in model.label_calibration_.items()}
        add(name, row, vi_seconds + seconds)

    rna_cells = np.flatnonzero(np.isin(full.obs_names, full["rna"].obs_names))
    rna_groups = {g: i for g, i in groups.items() if np.isin(i, rna_cells).all()}
    if not rna_groups:
        return
    rna_pos = {g: np.searchsorted(rna_cells, i) for g, i in rna_groups.items()}
    rna = _rna_anndata(full, rna_cells, "protein" in full.mod)
    baselines = [("scANVI", _scanvi)]
    if "protein" in full.mod:
        baselines.append(("TOTALANVI", _totalanvi))
    for name, fit in baselines:
        if done(name):
            continue
        probs, seconds = C.timed(fit, rna.copy(), seed, epochs, categories)
        per = {
            g: scores(
                truth[rna_groups[g]],
                categories,
                np.asarray(categories)[probs[p].argmax(1)],
                probs[p],
            )
            for g, p in rna_pos.items()
        }
        add(name, _mean_rows(per), seconds)


#: The choice study (``--study``): MosaicANVI's options, chosen on data the report never
#: predicts. PBMC: donors p3 and p4, p3 split into an RNA-only and a protein-only half,
#: labels of p4, the halves predicted. SNARE-seq: libraries 09A-09F (200 cells each), labels
#: of 09A-09D, 09E and 09F predicted. name -> (MosaicANVI kwargs, epochs with labels (a
#: factor of ``EPOCHS``'), from MosaicVI)
STUDY = {
    "default": ({}, 1.0, True),
    # the rows below run on PBMC only where ``STUDY_SNARE`` leaves them out (time)
    "classify the joint posterior only": ({"classify_subsets": False}, 1.0, True),
    "classification_ratio 10": ({"classification_ratio": 10.0}, 1.0, True),
    "classification_ratio 200": ({"classification_ratio": 200.0}, 1.0, True),
    "linear classifier": ({"linear_classifier": True}, 1.0, True),
    "epochs with labels x2": ({}, 2.0, True),
    "from scratch (all epochs with labels)": ({}, None, False),
}


#: The study's rows on SNARE-seq (each costs about two minutes per seed at one thread).
STUDY_SNARE = (
    "default",
    "classify the joint posterior only",
    "classification_ratio 10",
    "epochs with labels x2",
    "from scratch (all epochs with labels)",
)


def _choice(dataset: str, quick: bool):
    """The choice split: data, labeled mask, predicted groups, modalities, label column."""
    from quality import CHOICE_LIBRARIES, pbmc_choice, snareseq_split

    if dataset == "pbmc":
        mdata, rna_half, protein_half, _ = pbmc_choice(quick)
        labelled = (mdata.obs["batch"] == "p4_0").to_numpy()
        groups = {
            "rna_half": mdata.obs_names.get_indexer(rna_half),
            "protein_half": mdata.obs_names.get_indexer(protein_half),
        }
        return mdata, labelled, groups, {"rna": "rna", "protein": "protein"}, "celltype"
    mdata = snareseq_split(CHOICE_LIBRARIES, quick)
    batch = mdata.obs["batch"].astype(str).to_numpy()
    predicted = CHOICE_LIBRARIES[-2:]
    groups = {b: np.flatnonzero(batch == b) for b in predicted}
    return mdata, ~np.isin(batch, predicted), groups, {"rna": "rna", "atac": "atac"}, "cell_type"


def study(dataset: str, seeds: list[int], quick: bool, rows: list, save) -> None:
    mdata, labelled, groups, modalities, key = _choice(dataset, quick)
    truth = mdata.obs[key].astype(str).to_numpy()
    mdata.obs["label"] = np.where(labelled, truth, UNKNOWN)
    categories = sorted(set(truth[labelled]))
    pre, post = (3, 2) if quick else EPOCHS[dataset]
    name_of_data = f"{dataset}_choice"

    def add(seed, name, row) -> None:
        rows.append({"dataset": name_of_data, "seed": seed, "model": name, **row})
        print(json.dumps(rows[-1]), flush=True)
        save()

    for seed in seeds:
        vi, vi_seconds = C.timed(C.train_mosaicvi, mdata.copy(), modalities, seed, pre)
        z = vi.get_latent_representation()
        knn = KNeighborsClassifier(15).fit(z[labelled], truth[labelled])
        pred = knn.predict(z)
        per = {g: scores(truth[i], categories, pred[i]) for g, i in groups.items()}
        add(seed, "15-NN (MosaicVI latent)", {"train_seconds": vi_seconds, **_mean_rows(per)})
        for name, (kwargs, factor, pretrained) in STUDY.items():
            if dataset == "snareseq" and name not in STUDY_SNARE:
                continue
            C.scvi.settings.seed = seed
            data = mdata.copy()
            if pretrained:
                epochs = max(1, round(post * factor))
                model = MosaicANVI.from_mosaicvi_model(vi, UNKNOWN, "label", adata=data, **kwargs)
            else:
                epochs = pre + post
                MosaicANVI.setup_mudata(
                    data,
                    modalities=modalities,
                    labels_key="label",
                    unlabeled_category=UNKNOWN,
                    batch_key="batch",
                )
                model = MosaicANVI(data, **kwargs)
            _, seconds = C.timed(
                model.train, max_epochs=epochs, batch_size=C.BATCH_SIZE, enable_progress_bar=False
            )
            pred = model.predict()
            per = {g: scores(truth[i], categories, pred[i]) for g, i in groups.items()}
            total = seconds + (vi_seconds if pretrained else 0.0)
            add(seed, name, {"train_seconds": total, **_mean_rows(per)})


def speed(epochs: int, batch_size: int, accelerator: str, repeats: int = 1) -> dict:
    """Training throughput of MosaicVI and MosaicANVI, side by side on SNARE-seq (10,309 cells).

    Each model is set up on the full data (labels of every library but ``DATA``'s predicted
    ones), trained one epoch to warm up, then ``epochs`` epochs timed, ``repeats`` times,
    alternating the models in one process; cells per second over
    the training cells of the timed epochs (MosaicANVI's time includes its calibration on
    the validation set's labeled cells). The classification term's cost is the ratio.
    """
    import time

    full = C.read(C.SNARE)
    batch = full.obs["batch"].astype(str).to_numpy()
    truth = full.obs["cell_type"].astype(str).to_numpy()
    full.obs["label"] = np.where(np.isin(batch, DATA["snareseq"]["predict"]), UNKNOWN, truth)
    rows = []
    for repeat, name in [(r, n) for r in range(repeats) for n in ("MosaicVI", "MosaicANVI")]:
        data = full.copy()
        C.scvi.settings.seed = 0
        if name == "MosaicVI":
            MosaicVI.setup_mudata(
                data, modalities=DATA["snareseq"]["modalities"], batch_key="batch"
            )
            model = MosaicVI(data)
        else:
            MosaicANVI.setup_mudata(
                data,
                modalities=DATA["snareseq"]["modalities"],
                labels_key="label",
                unlabeled_category=UNKNOWN,
                batch_key="batch",
            )
            model = MosaicANVI(data)
        options = {
            "batch_size": batch_size,
            "accelerator": accelerator,
            "devices": 1,
            "enable_progress_bar": False,
            "train_size": 0.9,  # the same training cells; MosaicANVI then calibrates
        }
        if accelerator != "cpu":
            options["data_on_device"] = True
        model.train(max_epochs=1, **options)  # warm-up (kernels, allocator)
        start = time.perf_counter()
        model.train(max_epochs=epochs, **options)
        seconds = time.perf_counter() - start
        n_train = len(model.train_indices)
        calibration = 0.0
        if name == "MosaicANVI":  # the calibration train() ran, timed again on its own
            start = time.perf_counter()
            model.calibrate()
            calibration = time.perf_counter() - start
        rows.append(
            {
                "model": name,
                "repeat": repeat,
                "calibrate_seconds": calibration,
                "cells_per_second_without_calibration": n_train * epochs / (seconds - calibration),
                "epochs": epochs,
                "batch_size": batch_size,
                "accelerator": accelerator,
                "device": C.torch.cuda.get_device_name(0) if accelerator == "gpu" else "cpu",
                "train_seconds": seconds,
                "cells_per_second": n_train * epochs / seconds,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return {"runs": rows}


def _rna_anndata(full, cells, with_protein: bool) -> ad.AnnData:
    """The cells with RNA as an AnnData (counts in ``X``), with their protein in ``obsm``
    (zeros for cells without protein: totalVI's missing-panel convention)."""
    names = full.obs_names[cells]
    rna = full["rna"][names].copy()
    out = ad.AnnData(C.sp.csr_matrix(rna.X, dtype=np.float32), obs=full.obs.loc[names].copy())
    out.var_names = rna.var_names
    if with_protein:
        prot = full["protein"]
        dense = np.zeros((len(names), prot.n_vars), np.float32)
        have = names.isin(prot.obs_names)
        x = prot[names[have]].X
        dense[have] = x.toarray() if C.sp.issparse(x) else np.asarray(x)
        out.obsm["protein"] = pd.DataFrame(dense, index=names, columns=prot.var_names)
    return out


def _probs(frame: pd.DataFrame, categories) -> np.ndarray:
    return frame.reindex(columns=categories, fill_value=0.0).to_numpy()


def _scanvi(rna: ad.AnnData, seed, epochs, categories) -> np.ndarray:
    C.scvi.settings.seed = seed
    C.scvi.model.SCVI.setup_anndata(rna, batch_key="batch", labels_key="label")
    vae = C.scvi.model.SCVI(rna)
    vae.train(max_epochs=epochs[0], batch_size=C.BATCH_SIZE, enable_progress_bar=False)
    model = C.scvi.model.SCANVI.from_scvi_model(vae, UNKNOWN, labels_key="label")
    model.train(max_epochs=epochs[1], batch_size=C.BATCH_SIZE, enable_progress_bar=False)
    return _probs(model.predict(soft=True), categories)


def _totalanvi(rna: ad.AnnData, seed, epochs, categories) -> np.ndarray:
    from scvi.external import TOTALANVI

    C.scvi.settings.seed = seed
    C.scvi.model.TOTALVI.setup_anndata(
        rna, protein_expression_obsm_key="protein", batch_key="batch"
    )
    vae = C.scvi.model.TOTALVI(rna)
    vae.train(max_epochs=epochs[0], batch_size=C.BATCH_SIZE, enable_progress_bar=False)
    model = TOTALANVI.from_totalvi_model(vae, UNKNOWN, labels_key="label")
    model.train(max_epochs=epochs[1], batch_size=C.BATCH_SIZE, enable_progress_bar=False)
    return _probs(model.predict(soft=True), categories)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=list(DATA), help="one data set")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=C.N_THREADS)
    parser.add_argument("--quick", action="store_true", help="smoke run: few cells, few epochs")
    parser.add_argument(
        "--study", action="store_true", help="the choice study of MosaicANVI's options"
    )
    parser.add_argument(
        "--speed",
        choices=["cpu", "gpu"],
        help="training throughput of MosaicVI and MosaicANVI (results/labels_speed_<device>.json)",
    )
    parser.add_argument("--speed-epochs", type=int, default=10)
    parser.add_argument("--speed-batch-size", type=int, default=1024)
    parser.add_argument("--speed-repeats", type=int, default=3, help="alternating runs")
    args = parser.parse_args()
    C.quiet()
    THREADS["n"] = args.threads
    C.torch.set_num_threads(args.threads)
    seeds = args.seeds[:1] if args.quick else args.seeds
    path = (C.RESULTS_DIR / "quick" if args.quick else C.RESULTS_DIR) / f"{NAME}.json"
    previous = json.loads(path.read_text()) if path.exists() and not args.quick else {}
    rows = previous.get("runs", [])
    command = " ".join(["python", "benchmarks/labels.py", *sys.argv[1:]])

    def save() -> None:
        extra = {
            "epochs": EPOCHS,
            "level": LEVEL,
            "data": {k: {**v, "path": str(v["path"].name)} for k, v in DATA.items()},
        }
        keys = ("dataset", "seed", "model")
        save_merged(path, NAME, rows, [command], keys, extra, args.quick)

    if args.speed:
        payload = speed(args.speed_epochs, args.speed_batch_size, args.speed, args.speed_repeats)
        C.write_results(f"labels_speed_{args.speed}", payload, args.quick)
        return
    if args.study:
        for dataset in [args.dataset] if args.dataset else list(DATA):
            study(dataset, seeds, args.quick, rows, save)
        return
    for dataset in [args.dataset] if args.dataset else list(DATA):
        for seed in seeds:
            run(dataset, seed, args.quick, rows, save)


if __name__ == "__main__":
    sys.exit(main())
