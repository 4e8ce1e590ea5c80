"""Shared pieces of the benchmark scripts: data, model runners, metrics, result files.

Every benchmark trains the models it compares on the same cells with the same seed, batch
size, thread count and epoch budget, and writes ``benchmarks/results/<name>.json``; the tables
of ``docs/benchmarks.md`` are regenerated from those files by ``benchmarks/report.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
import scvi
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from mosaicvi import MosaicVI
from mosaicvi.metrics import feature_correlation, knn_label_transfer_accuracy

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT.parent / "shared" / "data"
RESULTS_DIR = ROOT / "benchmarks" / "results"
PBMC = DATA_DIR / "pbmc_cite_mosaic.h5mu"
SNARE = DATA_DIR / "mop_snareseq_rna_atac.h5mu"

#: Shared training settings: every model gets the same batch size and thread count.
BATCH_SIZE = 128
N_THREADS = 2

#: Epoch budget and SNARE-seq subsample of the quality benchmarks (the same for every model),
#: sized so that the whole suite runs in under an hour on 2 CPU cores; ``--quick`` smoke runs.
BUDGET = {"pbmc_epochs": 120, "snareseq_epochs": 20, "snareseq_cells_per_batch": 200}
QUICK = {"pbmc_epochs": 3, "snareseq_epochs": 3, "snareseq_cells_per_batch": 25}


def quiet() -> None:
    """Silence Lightning's and scvi-tools' per-run chatter; fix the thread count."""
    import logging
    import warnings

    torch.set_num_threads(N_THREADS)
    scvi.settings.verbosity = logging.ERROR
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


# ----------------------------------------------------------------------------- data


def read(path: Path) -> md.MuData:
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: the benchmarks read ../shared/data/.")
    mdata = md.read_h5mu(path)
    return mdata


def subsample(mdata: md.MuData, n_per_batch: int, batch_key: str, seed: int = 0) -> md.MuData:
    """At most ``n_per_batch`` cells of each batch (the ``--quick`` smoke runs)."""
    rng = np.random.default_rng(seed)
    keep = []
    for _, idx in mdata.obs.groupby(batch_key, observed=True).indices.items():
        keep.extend(rng.choice(idx, min(n_per_batch, len(idx)), replace=False))
    return subset_cells(mdata, mdata.obs_names[np.sort(keep)])


def hide(mdata: md.MuData, hidden: dict[str, Sequence[str]], batch_key: str) -> md.MuData:
    """Unpadded copy of ``mdata`` without modality ``mod`` for the cells of ``hidden[mod]``."""
    mods = {}
    for name, adata in mdata.mod.items():
        cells = mdata.obs_names[mdata.obs[batch_key].isin(hidden.get(name, []))]
        mods[name] = adata[~adata.obs_names.isin(cells)].copy()
    out = md.MuData(mods)
    out.obs = mdata.obs.loc[out.obs_names].copy()
    return out


def subset_cells(mdata: md.MuData, names: Sequence[str]) -> md.MuData:
    """Copy of ``mdata`` restricted to the cells ``names`` (every modality, unpadded)."""
    out = md.MuData({k: a[a.obs_names.isin(names)].copy() for k, a in mdata.mod.items()})
    out.obs = mdata.obs.loc[out.obs_names].copy()
    return out


def pad(mdata: md.MuData, order: Sequence[str], obs_keys: Sequence[str]) -> md.MuData:
    """Zero-padded copy: every modality holds every cell, as MULTIVI and TOTALVI require.

    Protein is stored dense (TOTALVI's background prior indexes it per batch, which fails on
    a sparse matrix in scvi-tools 1.4.2); RNA and ATAC stay sparse.
    """
    names = mdata.obs_names
    mods = {}
    for name in order:
        adata = mdata.mod[name]
        coo = sp.coo_matrix(adata.X, dtype=np.float32)
        rows = names.get_indexer(adata.obs_names)[coo.row]
        x = sp.csr_matrix((coo.data, (rows, coo.col)), shape=(len(names), adata.n_vars))
        x = x.toarray() if name == "protein" else x
        mods[name] = ad.AnnData(x, obs=mdata.obs.loc[names, list(obs_keys)].copy())
        mods[name].var_names = adata.var_names
    out = md.MuData(mods)
    out.obs = mdata.obs.loc[names, list(obs_keys)].copy()
    return out


def pca_of(adata: ad.AnnData, n_comps: int = 30, clr: bool = False) -> np.ndarray:
    """PCA of one modality: library-normalised ``log1p`` (RNA), or CLR-like (protein)."""
    adata = adata.copy()
    if clr:  # protein: log1p then centre per cell
        x = np.log1p(adata.X.toarray() if sp.issparse(adata.X) else adata.X)
        adata.X = x - x.mean(1, keepdims=True)
    else:
        sc.pp.normalize_total(adata, target_sum=1e4)
        sc.pp.log1p(adata)
    sc.pp.pca(adata, n_comps=n_comps, random_state=0)
    return adata.obsm["X_pca"]


def log_normalize(x, target_sum: float = 1e4) -> np.ndarray:
    """``log1p`` of counts (or rates) scaled to ``target_sum`` per cell, dense."""
    x = np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64)
    total = x.sum(1, keepdims=True)
    return np.log1p(x / np.maximum(total, 1e-12) * target_sum)


def concatenated_pca(mdata: md.MuData, n_comps: int = 30, seed: int = 0) -> np.ndarray:
    """Baseline: PCA of the concatenated normalised modalities (cells measured in all).

    RNA and protein are library-normalised and ``log1p``-transformed, ATAC is binarised and
    TF-IDF-normalised; each block is scaled to unit total variance so that no modality
    dominates by its number of features.
    """
    blocks = []
    for name, adata in mdata.mod.items():
        a = adata[mdata.obs_names].copy() if adata.n_obs != mdata.n_obs else adata.copy()
        if name == "atac":
            x = sp.csr_matrix(a.X, dtype=np.float32)
            x.data[:] = 1.0
            idf = a.n_obs / np.maximum(np.asarray(x.sum(0)).ravel(), 1.0)
            tf = sp.diags(1.0 / np.maximum(np.asarray(x.sum(1)).ravel(), 1.0)) @ x
            a.X = (tf @ sp.diags(idf)).tocsr()
            a.X.data = np.log1p(a.X.data * 1e4)
        else:
            sc.pp.normalize_total(a, target_sum=1e4)
            sc.pp.log1p(a)
        x = sp.csr_matrix(a.X, dtype=np.float64)
        mean_sq = np.asarray(x.multiply(x).mean(0)).ravel()
        var = mean_sq - np.asarray(x.mean(0)).ravel() ** 2
        blocks.append(x / np.sqrt(var.sum()))
    joint = ad.AnnData(sp.hstack(blocks).tocsr().astype(np.float32))
    sc.pp.pca(joint, n_comps=n_comps, random_state=seed)
    return joint.obsm["X_pca"]


# ----------------------------------------------------------------------------- models


def _fit(model, max_epochs: int | None, batch_size: int | None, early_stopping: bool, **extra):
    """``model.train`` with the shared settings; ``None`` keeps the model's own default."""
    kwargs = {"max_epochs": max_epochs, "batch_size": batch_size}
    model.train(
        enable_progress_bar=False,
        early_stopping=early_stopping,
        **{k: v for k, v in kwargs.items() if v is not None},
        **extra,
    )
    return model


def train_mosaicvi(
    mdata: md.MuData,
    modalities: dict[str, str],
    seed: int,
    max_epochs: int | None,
    batch_key: str = "batch",
    model_kwargs: dict | None = None,
    early_stopping: bool = False,
    batch_size: int | None = BATCH_SIZE,
    **train_kwargs,
) -> MosaicVI:
    """MosaicVI on unpadded MuData (``mdata`` is registered, not modified)."""
    scvi.settings.seed = seed
    MosaicVI.setup_mudata(mdata, modalities=modalities, batch_key=batch_key)
    model = MosaicVI(mdata, **(model_kwargs or {}))
    return _fit(model, max_epochs, batch_size, early_stopping, **train_kwargs)


def train_multivi(
    padded: md.MuData,
    seed: int,
    max_epochs: int | None,
    batch_key: str = "batch",
    early_stopping: bool = False,
    batch_size: int | None = BATCH_SIZE,
    **train_kwargs,
) -> scvi.model.MULTIVI:
    """``scvi.model.MULTIVI`` with its defaults, on zero-padded MuData."""
    scvi.settings.seed = seed
    layers = {f"{m}_layer": m for m in ("rna", "atac", "protein") if m in padded.mod}
    scvi.model.MULTIVI.setup_mudata(
        padded, modalities={**layers, "batch_key": "rna"}, batch_key=batch_key
    )
    model = scvi.model.MULTIVI(
        padded,
        n_genes=padded["rna"].n_vars,
        n_regions=padded["atac"].n_vars if "atac" in padded.mod else 0,
    )
    return _fit(model, max_epochs, batch_size, early_stopping, **train_kwargs)


def train_totalvi(
    padded: md.MuData,
    seed: int,
    max_epochs: int | None,
    batch_key: str = "batch",
    early_stopping: bool = False,
    batch_size: int | None = BATCH_SIZE,
    **train_kwargs,
) -> scvi.model.TOTALVI:
    """``scvi.model.TOTALVI`` with its defaults; protein rows of zeros mark a missing panel."""
    scvi.settings.seed = seed
    scvi.model.TOTALVI.setup_mudata(
        padded,
        modalities={"rna_layer": "rna", "protein_layer": "protein", "batch_key": "rna"},
        batch_key=batch_key,
    )
    model = scvi.model.TOTALVI(padded)
    return _fit(model, max_epochs, batch_size, early_stopping, **train_kwargs)


@torch.inference_mode()
def multivi_decode(model: scvi.model.MULTIVI, indices: np.ndarray) -> dict[str, np.ndarray]:
    """MULTIVI's decoded means at its latent mean: RNA scale, accessibility and protein.

    ``MULTIVI`` has getters for RNA and accessibility; its protein foreground is read from
    the module output (``py_["rate_fore"]``), which is what ``TOTALVI`` returns.
    """
    model.module.eval()
    out: dict[str, list] = {}
    for tensors in model._make_data_loader(adata=model.adata, indices=indices, batch_size=256):
        _, gen = model.module.forward(
            tensors, generative_kwargs={"use_z_mean": True}, compute_loss=False
        )
        for key, value in (
            ("rna", gen.get("px_scale")),
            ("atac", gen.get("p")),
            ("protein", gen.get("py_", {}).get("rate_fore")),
        ):
            if value is not None and value.shape[-1] > 0:
                out.setdefault(key, []).append(value.cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


# ----------------------------------------------------------------------------- metrics

#: PBMC donors measured in both RNA and protein: the reference of label transfer.
PAIRED_DONORS = ["p3_0", "p4_0"]


def donor_accuracy(z: np.ndarray, obs: pd.DataFrame, donor: str, label_key: str = "celltype"):
    """15-NN label transfer from the paired PBMC donors to ``donor`` (rows of ``z`` = ``obs``)."""
    batch = obs["batch"].to_numpy()
    return knn_label_transfer_accuracy(
        z, obs[label_key].to_numpy(), np.isin(batch, PAIRED_DONORS), batch == donor
    )


def knn_protein_regression(mdata: md.MuData, fit: str = "p3_0", predict: str = "p4_0"):
    """Baseline imputation: 15-NN regression on RNA PCA, fit on donor ``fit``.

    Returns the ``log1p`` protein predicted for the protein cells of donor ``predict`` (in
    their order) and their held-out ``log1p`` counts.
    """
    from sklearn.neighbors import KNeighborsRegressor

    rna, prot = mdata["rna"], mdata["protein"]
    emb = pca_of(rna)
    pos = rna.obs_names.get_indexer
    train = rna.obs_names[rna.obs["batch"].to_numpy() == fit]
    test = prot.obs_names[prot.obs["batch"].to_numpy() == predict]
    reg = KNeighborsRegressor(n_neighbors=15).fit(
        emb[pos(train)], np.log1p(prot[train].X.toarray())
    )
    return reg.predict(emb[pos(test)]), np.log1p(prot[test].X.toarray())


def exact_neighbors(x: np.ndarray, k: int):
    """Exact k nearest neighbours (scikit-learn) for scib-metrics.

    Exact and deterministic, and at these sizes faster than the default ``pynndescent``,
    whose numba compilation alone takes about a minute in a fresh process.
    """
    from scib_metrics.nearest_neighbors import NeighborsResults
    from sklearn.neighbors import NearestNeighbors

    distances, indices = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x)
    return NeighborsResults(indices=indices, distances=distances)


def scib_scores(
    embeddings: dict[str, np.ndarray],
    obs: pd.DataFrame,
    batch_key: str,
    label_key: str,
    pre_integrated: np.ndarray,
) -> dict[str, dict[str, float]]:
    """scib-metrics' ``Benchmarker`` on each embedding (unscaled scores, scIB weighting)."""
    import gc

    from scib_metrics.benchmark import Benchmarker

    adata = ad.AnnData(obs=obs[[batch_key, label_key]].copy())
    adata.obsm["Unintegrated"] = np.asarray(pre_integrated, dtype=np.float32)
    for key, emb in embeddings.items():
        adata.obsm[key] = np.asarray(emb, dtype=np.float32)
    bm = Benchmarker(
        adata,
        batch_key=batch_key,
        label_key=label_key,
        embedding_obsm_keys=list(embeddings),
        pre_integrated_embedding_obsm_key="Unintegrated",
        n_jobs=N_THREADS,
        progress_bar=False,
    )
    # Benchmarker calls gc.collect() after every metric; with torch, scvi-tools and jax
    # loaded each call scans a large heap (~0.7 s). Freezing the objects that exist now
    # leaves those calls only the metric's own garbage.
    gc.freeze()
    try:
        bm.prepare(neighbor_computer=exact_neighbors)
        bm.benchmark()
    finally:
        gc.unfreeze()
    table = bm.get_results(min_max_scale=False)
    table = table.drop(index="Metric Type", errors="ignore").astype(float)
    return {key: {k: float(v) for k, v in table.loc[key].items()} for key in embeddings}


def imputation_scores(pred: np.ndarray, truth: np.ndarray, prefix: str = "") -> dict[str, float]:
    """Mean Pearson and Spearman per feature and per cell (inputs already transformed)."""
    out = {}
    for method in ("pearson", "spearman"):
        for axis, name in ((0, "per_feature"), (1, "per_cell")):
            out[f"{prefix}{method}_{name}"] = float(
                np.nanmean(feature_correlation(pred, truth, method=method, axis=axis))
            )
    return out


def accessibility_scores(prob: np.ndarray, truth) -> dict[str, float]:
    """Per-cell AUROC and average precision of the observed (binarised) peaks."""
    truth = sp.csr_matrix(truth)
    auroc, ap = [], []
    for i in range(truth.shape[0]):
        y = np.zeros(truth.shape[1], dtype=bool)
        y[truth.indices[truth.indptr[i] : truth.indptr[i + 1]]] = True
        if 0 < y.sum() < len(y):
            auroc.append(roc_auc_score(y, prob[i]))
            ap.append(average_precision_score(y, prob[i]))
    return {
        "auroc_per_cell": float(np.mean(auroc)),
        "average_precision_per_cell": float(np.mean(ap)),
    }


# ----------------------------------------------------------------------------- runs


def timed(fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)`` and its wall time in seconds."""
    start = time.perf_counter()
    value = fn(*args, **kwargs)
    return value, time.perf_counter() - start


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB, Linux ``ru_maxrss``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_isolated(args: Sequence[str], src: str | os.PathLike | None = None) -> dict:
    """Run ``python benchmarks/<args>`` in a fresh process; it prints one JSON line last.

    ``src``: a mosaicvi source tree put first on the path (another commit's, to compare);
    ``None``: the installed one.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(N_THREADS)}
    if src is not None:
        env["PYTHONPATH"] = str(Path(src).resolve())
    proc = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def environment() -> dict:
    import mosaicvi

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "scvi-tools": scvi.__version__,
        "mosaicvi": mosaicvi.__version__,
        "threads": N_THREADS,
        "cpu_count": os.cpu_count(),
        "batch_size": BATCH_SIZE,
    }


def parse_args(
    doc: str, default_seeds: Sequence[int] = (0, 1, 2)
) -> tuple[argparse.Namespace, list[int], dict]:
    """Command line of the quality benchmarks: ``--seeds``, ``--quick``; seeds and budget."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(default_seeds))
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: few cells, 3 epochs, 1 seed"
    )
    args = parser.parse_args()
    quiet()
    seeds = args.seeds[:1] if args.quick else args.seeds
    return args, seeds, QUICK if args.quick else BUDGET


def write_results(name: str, payload: dict, quick: bool) -> Path:
    """Write ``results/<name>.json`` (``results/quick/`` for smoke runs) and the docs tables."""
    directory = RESULTS_DIR / "quick" if quick else RESULTS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    script = os.path.relpath(Path(sys.argv[0]).resolve(), ROOT)
    command = " ".join(["python", script, *sys.argv[1:]])
    payload = {"command": command, "environment": environment(), **payload}
    # written whole then renamed: a benchmark run alongside never reads half a file
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(partial, path)
    if not quick:
        from report import write_report

        write_report()
    return path
