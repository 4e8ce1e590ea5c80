"""Regenerate ``docs/benchmarks.md`` from ``benchmarks/results/*.json``.

Every figure in that page comes from a results file written by a benchmark script; run this
after editing the page's layout (the benchmark scripts call it themselves).

    python benchmarks/report.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import report_house
import report_quality
from report_quality import SCIB, SCIB_DETAIL

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "benchmarks.md"


def _load(name: str, results: Path) -> dict | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _stats(runs: list[dict], model: str, key: str) -> tuple[float, float, int]:
    values = [r[key] for r in runs if r["model"] == model and key in r]
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return math.nan, math.nan, 0
    return float(np.mean(values)), float(np.std(values)), len(values)


def _cell(runs: list[dict], model: str, key: str, digits: int = 3) -> str:
    if key.endswith("seconds") or key.startswith("n_") or key.endswith("_proteins"):
        digits = 0  # times and counts
    mean, std, n = _stats(runs, model, key)
    if n == 0:
        return "–"
    if n == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _models(runs: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["model"] for r in runs))


def _table(runs: list[dict], columns: list[tuple[str, str]], digits: int = 3) -> list[str]:
    lines = ["| model | " + " | ".join(title for title, _ in columns) + " |"]
    lines.append("|---|" + "---|" * len(columns))
    for model in _models(runs):
        cells = [_cell(runs, model, key, digits) for _, key in columns]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def _best(runs: list[dict], key: str) -> str:
    scored = [(m, _stats(runs, m, key)[0]) for m in _models(runs)]
    scored = [(m, v) for m, v in scored if not math.isnan(v)]
    if not scored:
        return "–"
    return max(scored, key=lambda mv: mv[1])[0]


def _header(result: dict, spread: str = "seeds") -> list[str]:
    env = result["environment"]
    return [
        f"Command: `{result['command'].replace(str(ROOT) + '/', '')}`; torch {env['torch']}, scvi-tools "
        f"{env['scvi-tools']}, mosaicvi {env['mosaicvi']}, {env['threads']} threads, batch "
        f"size {result.get('batch_size', env['batch_size'])}. Mean ± standard deviation over "
        f"{spread}.",
        "",
    ]


def integration_section(res: dict) -> list[str]:
    out = ["## Integration", "", *_header(res)]
    if res.get("note"):
        out += [f"Note: {res['note']}", ""]
    snare = res["snareseq"]
    out += [
        f"### SNARE-seq mouse cortex (RNA + ATAC, 12 libraries, {snare['n_cells']} cells, "
        f"{snare['epochs']} epochs for every model)",
        "",
        "scib-metrics `Benchmarker` (unscaled; total = 0.6 bio + 0.4 batch), labels "
        "`cell_type`, batches `batch`. PCA is deterministic and run once.",
        "",
        *_table(snare["runs"], [(k, k) for k in SCIB] + [("train s", "train_seconds")]),
        "",
        f"Best total: **{_best(snare['runs'], 'Total')}**.",
        "",
        "<details><summary>Each scIB metric</summary>",
        "",
        *_table(snare["runs"], [(k, k) for k in SCIB_DETAIL]),
        "",
        "</details>",
        "",
    ]
    pbmc = res["pbmc"]
    refs = pbmc["references"]
    out += [
        f"### PBMC CITE-seq mosaic ({pbmc['n_cells']} cells, {pbmc['epochs']} epochs)",
        "",
        f"scIB on the {pbmc['n_cells_scib']} cells with RNA (the cells TOTALVI can embed; PCA "
        "of RNA is the unintegrated reference). Label transfer: 15-NN classifier fit on the "
        "paired donors p3, p4, accuracy on the RNA-only donor p1 and the protein-only donor "
        f"p2 (TOTALVI cannot embed p2). One-modality PCA references: p1 "
        f"{refs['PCA of RNA: p1 accuracy']:.3f} (RNA), p2 "
        f"{refs['PCA of protein: p2 accuracy']:.3f} (protein).",
        "",
        *_table(
            pbmc["runs"],
            [(k, k) for k in SCIB]
            + [("p1 accuracy", "p1_accuracy"), ("p2 accuracy", "p2_accuracy")]
            + [("train s", "train_seconds")],
        ),
        "",
        f"Best total: **{_best(pbmc['runs'], 'Total')}**; best p1 accuracy: "
        f"**{_best(pbmc['runs'], 'p1_accuracy')}**.",
        "",
    ]
    return out


def imputation_section(res: dict) -> list[str]:
    out = ["## Imputation", "", *_header(res)]
    pbmc = res["pbmc"]
    cols = [
        ("Pearson per protein", "pearson_per_feature"),
        ("Spearman per protein", "spearman_per_feature"),
        ("Pearson per cell", "pearson_per_cell"),
        ("Spearman per cell", "spearman_per_cell"),
        ("Pearson per protein, with background", "with_background_pearson_per_feature"),
        ("Pearson per cell, with background", "with_background_pearson_per_cell"),
        ("train s", "train_seconds"),
    ]
    out += [
        f"### PBMC: donor p4's protein hidden, predicted from RNA ({pbmc['n_held_out']} cells, "
        f"{pbmc['epochs']} epochs)",
        "",
        "Correlations of `log1p` predicted (denoised foreground) and held-out counts.",
        "",
        *_table(pbmc["runs"], cols),
        "",
        f"Best mean per-protein Pearson: **{_best(pbmc['runs'], 'pearson_per_feature')}**.",
        "",
    ]
    snare = res["snareseq"]
    cols = [
        ("ATAC from RNA: AUROC per cell", "auroc_per_cell"),
        ("ATAC from RNA: AP per cell", "average_precision_per_cell"),
        ("RNA from ATAC: Pearson per gene", "rna_pearson_per_feature"),
        ("RNA from ATAC: Pearson per cell", "rna_pearson_per_cell"),
        ("train s", "train_seconds"),
    ]
    out += [
        f"### SNARE-seq: ATAC hidden for {', '.join(snare['atac_hidden'])}, RNA hidden for "
        f"{', '.join(snare['rna_hidden'])} ({snare['n_cells']} cells, {snare['epochs']} epochs)",
        "",
        "One mosaic model per seed predicts both. Expression is compared as log-normalised "
        "values (`log1p` of counts per 10,000).",
        "",
        *_table(snare["runs"], cols),
        "",
    ]
    return out


def protein_imputation_section(res: dict) -> list[str]:
    cols = [
        ("Pearson per protein", "pearson_per_feature"),
        ("Spearman per protein", "spearman_per_feature"),
        ("Pearson per cell", "pearson_per_cell"),
        ("cell level Pearson", "cell_level_pearson"),
        ("Pearson per protein, 15-NN cell level", "pearson_per_feature_knn_cell_level"),
        ("proteins with foreground = background", "floored_foreground_proteins"),
        ("train s", "train_seconds"),
    ]
    split_cols = [
        ("cells", "n_cells"),
        ("Pearson per protein", "pearson_per_feature"),
        ("Pearson per cell", "pearson_per_cell"),
        ("cell level Pearson", "cell_level_pearson"),
    ]
    return [
        f"### PBMC protein from RNA: latent or decoder ({res['n_held_out']} cells, "
        f"{res['epochs']} epochs)",
        "",
        *_header(res),
        "The same task as above, for each protein likelihood. *decoder*: "
        '`get_protein_expression(given=["rna"])`, denoised foreground or (*with background*) '
        "the expected count; *15-NN on its latent*: the baseline's 15-NN regression fit on p3, "
        "in the model's RNA-only latent instead of RNA PCA. *cell level Pearson*: correlation "
        "across p4 cells of the predicted and true per-cell mean `log1p` protein. *15-NN cell "
        "level*: the decoder's per-protein Pearson once its per-cell means are replaced by "
        "those of the 15-NN on its latent. The second-last column counts the proteins (of "
        f"{res['n_proteins']}) whose mixture foreground scale `relu(.) + 1` is 1 for every p4 "
        "cell.",
        "",
        *_table(res["runs"], cols),
        "",
        f"Best mean per-protein Pearson: **{_best(res['runs'], 'pearson_per_feature')}**.",
        "",
        "The default model trained again with `train_size=0.5`; its decoder (with background) "
        "scored on the p4 cells of the training split (their RNA was fit) and of the "
        "validation split (never seen):",
        "",
        *_table(res["split_runs"], split_cols),
        "",
    ]


def speed_section(res: dict) -> list[str]:
    runs = res["throughput"]
    out = ["## Speed and memory", "", *_header(res, "rounds")]
    first = runs[0]
    out += [
        f"### Training throughput on SNARE-seq ({first['n_cells']} cells, "
        f"{first['n_train_cells']} in the training split, {first['epochs']} epochs per run, "
        "fresh process per run, order A B C A B C)",
        "",
        *_table(
            runs,
            [
                ("s / epoch", "seconds_per_epoch"),
                ("cells / s", "cells_per_second"),
                ("peak RSS MiB", "peak_rss_mib"),
                ("RSS before training MiB", "rss_before_training_mib"),
            ],
            digits=1,
        ),
        "",
    ]
    anchor_speed = _stats(runs, "MULTIVI", "cells_per_second")[0]
    anchor_mem = _stats(runs, "MULTIVI", "peak_rss_mib")[0]
    lines = []
    for model in _models(runs):
        if model == "MULTIVI":
            continue
        speed = _stats(runs, model, "cells_per_second")[0] / anchor_speed
        mem = _stats(runs, model, "peak_rss_mib")[0] / anchor_mem
        lines.append(f"| {model} | {speed:.2f}x | {mem:.2f}x |")
    out += ["| against MULTIVI | throughput | peak memory |", "|---|---|---|", *lines, ""]
    conv = res["convergence"]
    out += [
        "### Time to converge on PBMC under each model's default early stopping",
        "",
        "| model | epochs | train s | p1 accuracy |",
        "|---|---|---|---|",
        *[
            f"| {r['model']} | {r['epochs']} | {r['train_seconds']:.0f} | {r['p1_accuracy']:.3f} |"
            for r in conv
        ],
        "",
    ]
    return out


def _relative_time(runs: list[dict], reference: str) -> dict[str, str]:
    base = _stats(runs, reference, "seconds_per_epoch")[0]
    return {m: f"{_stats(runs, m, 'seconds_per_epoch')[0] / base:.2f}x" for m in _models(runs)}


def _ablation_table(
    runs: list[dict], columns: list[tuple[str, str]], defaults: list[str]
) -> list[str]:
    """Variants as rows, the defaults marked; last, the time per epoch against the first row."""
    models = _models(runs)
    relative = _relative_time(runs, models[0])
    table = _table(runs, columns + [("s / epoch", "seconds_per_epoch")], digits=3)
    table[0] = table[0].replace("| model |", "| variant |", 1) + f" time vs {models[0]} |"
    table[1] += "---|"
    rows = []
    for line, model in zip(table[2:], models):
        if model in defaults:
            line = line.replace(f"| {model} |", f"| **{model} (default)** |", 1)
        rows.append(line + f" {relative[model]} |")
    return table[:2] + rows


def _bests(runs: list[dict], columns: list[tuple[str, str]]) -> str:
    return "; ".join(f"{title}: **{_best(runs, key)}**" for title, key in columns)


def ablation_section(res: dict) -> list[str]:
    out = ["## Ablation of MosaicVI's options", "", *_header(res)]
    out += [
        "Every fusion x objective, and the stacked-layer, denoising and own-modality subset-term "
        "variants of the default, each with every other argument at its default. Arguments of "
        "each variant:",
        "",
        "| variant | arguments |",
        "|---|---|",
        *[
            f"| {name} | `{', '.join(f'{k}={v!r}' for k, v in kw.items()) or 'defaults'}` |"
            for name, kw in res["variants"].items()
        ],
        "",
        "Time per epoch is the training wall time over the epochs (validation included), "
        "variants run one after another in one process.",
        "",
    ]
    pbmc = res["pbmc"]
    cols = [(k, k) for k in SCIB] + [
        ("p1 accuracy", "p1_accuracy"),
        ("p2 accuracy", "p2_accuracy"),
        ("protein from RNA: Pearson per protein", "protein_pearson_per_feature"),
        ("protein from RNA: Pearson per cell", "protein_pearson_per_cell"),
    ]
    out += [
        f"### PBMC, donor p4's protein hidden ({pbmc['n_cells']} cells, {pbmc['epochs']} epochs)",
        "",
        f"scIB on the {pbmc['n_cells_scib']} cells with RNA; 15-NN label transfer from p3, p4 "
        f"to p1 (RNA only) and p2 (protein only); p4's protein ({pbmc['n_held_out']} cells) "
        "imputed from RNA, `log1p` denoised foreground against the held-out counts.",
        "",
        *_ablation_table(pbmc["runs"], cols, res["defaults"]),
        "",
        "Best: " + _bests(pbmc["runs"], cols[2:3] + cols[3:6]) + ".",
        "",
    ]
    snare = res["snareseq"]
    cols = [(k, k) for k in SCIB] + [
        ("ATAC from RNA: AUROC per cell", "auroc_per_cell"),
        ("ATAC from RNA: AP per cell", "average_precision_per_cell"),
        ("RNA from ATAC: Pearson per cell", "rna_pearson_per_cell"),
    ]
    out += [
        f"### SNARE-seq, ATAC hidden for {', '.join(snare['atac_hidden'])} and RNA for "
        f"{', '.join(snare['rna_hidden'])} ({snare['n_cells']} cells, {snare['epochs']} epochs)",
        "",
        "scIB on every cell of the mosaic (PCA of the concatenated modalities of the full, "
        "paired data as the unintegrated reference); imputation of the hidden modality of "
        "each library from the other.",
        "",
        *_ablation_table(snare["runs"], cols, res["defaults"]),
        "",
        "Best: " + _bests(snare["runs"], cols[2:3] + cols[3:4] + cols[5:6]) + ".",
        "",
    ]
    return out


def fusion_speed_section(res: dict) -> list[str]:
    data = res["data"]
    return [
        "### Time per epoch with three modalities (simulated)",
        "",
        *_header(res, "rounds"),
        f"Simulated RNA + ATAC + protein mosaic: {data['n_cells']} cells spread over the 7 "
        f"subsets of modalities, {data['n_genes']} genes, {data['n_regions']} regions, "
        f"{data['n_proteins']} proteins; training seconds of epoch {res['epochs']} "
        "(validation excluded), variants in turn, one process.",
        "",
        *_ablation_table(res["runs"], [], defaults=[]),
        "",
    ]


INTRO = """# Benchmarks

mosaicvi against scvi-tools' `MULTIVI` and `TOTALVI`, side by side on the same real data,
seeds, batch size (128), thread count (2) and epoch budget. Every figure on this page is
written by a script in `benchmarks/` into `benchmarks/results/*.json` and put here by
`benchmarks/report.py`; none is typed by hand. Re-run everything with

```bash
bash scripts/setup.sh && .venv/bin/pip install --group benchmark -e . \\
  && .venv/bin/python benchmarks/run_all.py
```

(`--quick` for a smoke run on a few cells, which writes to `benchmarks/results/quick/`.)
The quality benchmarks use a fixed epoch budget for every model, sized so that the comparison
with `MULTIVI` and `TOTALVI` runs in under an hour on 2 CPU cores (the ablation of MosaicVI's
options, two seeds, adds about 35 minutes): fewer epochs than each model's defaults, which matters most
for `MULTIVI` (learning rate 1e-4). The last table measures each model under its own
defaults.
"""


def _against(runs: list[dict], key: str, anchor: str = "MULTIVI") -> dict[str, str]:
    """Each model's mean ``key`` as a multiple of ``anchor``'s."""
    base = _stats(runs, anchor, key)[0]
    return {
        m: "–" if math.isnan(base) else f"{_stats(runs, m, key)[0] / base:.2f}x"
        for m in _models(runs)
    }


def scale_section(results: Path) -> list[str]:
    """Every ``scale*.json`` (``benchmarks/scale.py``): throughput, memory, quality at budget."""
    files = sorted(results.glob("scale*.json"))
    if not files:
        return ["## Scale", "", "Not run yet: `python benchmarks/scale.py`.", ""]
    out = ["## Scale: throughput, memory and quality at equal time", ""]
    for path in files:
        res = json.loads(path.read_text())
        runs = res["runs"]
        out += [f"### `{path.name}`", "", *_header(res, "rounds")]
        before = "MosaicVI-sampled" in _models(runs)  # runs from before issue 24
        if res.get("budget_seconds"):
            out += [
                f"Each model trained on SNARE-seq for {res['budget_seconds']:.0f} s of wall clock "
                f"(batch size {res['batch_size']}), then scored with scIB as in the integration "
                "benchmark (all 10,309 cells)."
                + (
                    " Measured before issue 24: `MosaicVI` was the exact path, "
                    "`MosaicVI-sampled` a uniform draw of regions."
                    if before
                    else ""
                ),
                "",
                *_table(runs, [("epochs done", "epochs_done")], digits=0),
                "",
                *_table(runs, [(k, k) for k in SCIB]),
                "",
            ]
            continue
        train = [r for r in runs if "cells_per_second" in r]
        loader = [r for r in runs if "loader_cells_per_second" in r]
        first = train[0] if train else runs[0]
        gpu = [("peak GPU MiB", "peak_gpu_mib")] if any("peak_gpu_mib" in r for r in runs) else []
        latent = [("latent of all cells, s", "latent_seconds")] if res.get("backed") else []
        if "n_proteins" in first:
            features = f"{first['n_genes']} genes, {first['n_proteins']} proteins"
        else:
            opened = first.get("open_per_cell", math.nan)
            features = f"{first.get('n_peaks', '?')} peaks ({opened:.0f} open per cell)"
        if before:
            variants = (
                "measured before issue 24: `MosaicVI` was then the exact path (the defaults "
                "of the time), `MosaicVI-sampled` drew "
                f"`atac_closed_samples={res.get('closed_samples')}` regions uniformly; "
            )
        else:
            closed = res.get("closed_samples")
            own = f"`atac_closed_samples={closed}`" if closed else "its defaults"
            variants = (
                f"`MosaicVI` with {own}, "
                "`MosaicVI-exact` with `atac_closed_cells=None, subset_terms='all'` (the "
                "defaults before issue 24); "
            )
        out += [
            f"Data `{first.get('data', 'snare')}`: {first['n_cells']} cells, {features}, "
            f"batch size {first['batch_size']}, "
            f"{res['epochs']} epochs per run (the first not timed"
            + (f"; {res['train_batches']} minibatches each" if res.get("train_batches") else "")
            + "), "
            + ("trained from a backed h5mu, " if res.get("backed") else "")
            + variants
            + ("MosaicVI models with `data_on_device=True`; " if res.get("data_on_device") else "")
            + f"{first.get('device', 'CPU')}.",
            "",
            *_table(
                train,
                [
                    ("s / epoch", "seconds_per_epoch"),
                    ("cells / s", "cells_per_second"),
                    ("peak RSS MiB", "peak_rss_mib"),
                    *gpu,
                    *latent,
                ],
                digits=1,
            ),
            "",
        ]
        rival = "TOTALVI" if "TOTALVI" in _models(runs) else "MULTIVI"
        speed = _against(train, "cells_per_second", rival)
        feed = _against(loader, "loader_cells_per_second", rival)
        out += [
            f"| model | cells / s against {rival} | loader alone, cells / s "
            f"| loader against {rival} |",
            "|---|---|---|---|",
            *[
                f"| {m} | {speed.get(m, '–')} | {_cell(loader, m, 'loader_cells_per_second', 0)} "
                f"| {feed.get(m, '–')} |"
                for m in _models(runs)
            ],
            "",
        ]
    return out


def defaults_section(
    res: dict, heading: str = "## Fast defaults against the exact path (equal epochs)"
) -> list[str]:
    """The fast defaults against the exact path at equal epochs (``defaults.py``)."""
    snare, pbmc = res["snareseq"], res["pbmc"]
    options = "; ".join(
        f"{name}: `{', '.join(f'{k}={v!r}' for k, v in kw.items()) or 'defaults'}`"
        for name, kw in res["variants"].items()
    )
    note = [res["note"], ""] if res.get("note") else []
    return [
        heading,
        "",
        *_header(res),
        *note,
        f"Variants: {options}. SNARE-seq: {snare['n_cells']} cells (250 per library), ATAC "
        f"hidden for {', '.join(snare['atac_hidden'])} (imputed from RNA, scored per region "
        f"and per cell), RNA hidden for 09D-09F, {snare['epochs']} epochs; label transfer is "
        "15-NN with each library left out in turn. PBMC: p4's protein hidden, "
        f"{pbmc['epochs']} epochs; label transfer 15-NN from the paired donors.",
        "",
        *_table(
            snare["runs"],
            [
                ("leave-one-library-out accuracy", "lolo_accuracy"),
                ("scIB total", "Total"),
                ("bio", "Bio conservation"),
                ("batch", "Batch correction"),
                ("ATAC AUROC per region", "atac_auroc_per_region"),
                ("ATAC AUROC per cell", "auroc_per_cell"),
                ("train s", "train_seconds"),
            ],
        ),
        "",
        *_table(snare["runs"], [(k, k) for k in SCIB_DETAIL if k in snare["runs"][0]]),
        "",
        *_table(
            pbmc["runs"],
            [
                ("p1 accuracy (RNA only)", "p1_accuracy"),
                ("p2 accuracy (protein only)", "p2_accuracy"),
                ("p4 protein Pearson per protein", "protein_pearson_per_feature"),
                ("train s", "train_seconds"),
            ],
        ),
        "",
    ]


def defaults_ablation_section(res: dict) -> list[str]:
    """Each sampled estimator alone (``defaults.py --ablation``), SNARE-seq."""
    snare = res["snareseq"]
    options = "; ".join(
        f"{name}: `{', '.join(f'{k}={v!r}' for k, v in kw.items()) or 'defaults'}`"
        for name, kw in res["variants"].items()
    )
    note = [res["note"], ""] if res.get("note") else []
    return [
        "### Options not taken as defaults",
        "",
        *_header(res),
        *note,
        f"Variants: {options}. Same protocol and seeds as the table above "
        f"({snare['n_cells']} cells, {snare['epochs']} epochs), whose rows are the defaults "
        "and the exact path.",
        "",
        *_table(
            snare["runs"],
            [
                ("leave-one-library-out accuracy", "lolo_accuracy"),
                ("scIB total", "Total"),
                ("ATAC AUROC per region", "atac_auroc_per_region"),
                ("ATAC AUROC per cell", "auroc_per_cell"),
                ("train s", "train_seconds"),
            ],
        ),
        "",
        "PBMC, same protocol and seeds as above:",
        "",
        *_table(
            res["pbmc"]["runs"],
            [
                ("p1 accuracy (RNA only)", "p1_accuracy"),
                ("p2 accuracy (protein only)", "p2_accuracy"),
                ("p4 protein Pearson per protein", "protein_pearson_per_feature"),
                ("train s", "train_seconds"),
            ],
        ),
        "",
    ]


def differential_section(res: dict) -> list[str]:
    """Rank of known markers in ``differential_*`` one-vs-rest tests (``differential.py``)."""
    runs = res["runs"]
    out = ["## Differential analysis: known markers", "", *_header(res)]
    out += [
        'One-vs-rest `mode="change"` tests on the PBMC mosaic (one model per seed). Rank: the '
        "marker's place by `proba_de` among the features up in the cell type (1 = top), per "
        "seed; out of 224 proteins or 500 genes.",
        "",
        "| setting | cell type | marker | rank per seed | proba_de (mean) | cells |",
        "|---|---|---|---|---|---|",
    ]
    keys = []
    for r in runs:
        key = (r["setting"], r["cell_type"], r["marker"])
        if key not in keys:
            keys.append(key)
    for setting, cell_type, marker in keys:
        rows = [
            r
            for r in runs
            if (r["setting"], r["cell_type"], r["marker"]) == (setting, cell_type, marker)
        ]
        ranks = " / ".join(str(r["rank"]) for r in rows)
        proba = float(np.mean([r["proba_de"] for r in rows]))
        out.append(
            f"| {setting} | {cell_type} | {marker} | {ranks} | {proba:.2f} | {rows[0]['n_cells']} |"
        )
    return [*out, ""]


def de_memory_section(res: dict) -> list[str]:
    """Peak memory of one-vs-rest differential accessibility (``de_memory.py``)."""
    env = res["environment"]
    out = ["## Differential analysis: memory at ATAC scale", ""]
    out += [
        f"Command: `{res['command'].replace(str(ROOT) + '/', '')}`; torch {env['torch']}, "
        f"scvi-tools {env['scvi-tools']}, {env['threads']} threads. One model "
        f"({res['epochs']} epochs, seed 0), saved; each row is a fresh process that reads the "
        "data and loads the model (its resident memory: the footprint), then runs "
        '`differential_accessibility(groupby="cell_type")`, every cell type against the rest. '
        "Peak: the process's peak resident memory during the analysis (`VmHWM`, reset after "
        "loading).",
        "",
        "| code | batch_correction | cells | peaks | comparisons | samples per group "
        "| footprint MiB | peak MiB | peak above footprint MiB | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        out.append(
            f"| {r['code']} | {r['batch_correction']} | {r['n_cells']:,} | {r['n_peaks']:,} "
            f"| {r['n_comparisons']} | {r['n_samples_overall']:,} "
            f"| {r['footprint_rss_mib']:.0f} | {r['peak_rss_mib']:.0f} "
            f"| {r['peak_above_footprint_mib']:.0f} | {r['seconds']:.0f} |"
        )
    return [*out, ""]


def _mean_sd(values: list[float]) -> str:
    sd = np.std(values, ddof=1) if len(values) > 1 else 0.0
    return f"{np.mean(values):.3f} ± {sd:.3f}"


def calibration_section(res: dict) -> list[str]:
    """Coverage of nominal predictive intervals on held-out truth (``calibration.py``)."""
    runs = res["runs"]
    settings = (
        ("", "raw"),
        ("_pooled", "pooled"),
        ("_by_predicted", "by predicted count"),
        ("_fit_nonzero", "fit on non-zero counts"),
    )
    out = ["## Calibration of predictive intervals", "", *_header(res)]
    if res.get("runs_made_by"):
        out += [f"Runs: {res['runs_made_by']}.", ""]
    out += [
        f"Central intervals of the posterior predictive counts ({res['n_samples']} draws per "
        "cell) for a modality the model never saw for those cells (their batch never "
        "measured it); empirical coverage = fraction of (cell, feature) counts inside (bounds "
        "included), over all counts / over the non-zero counts, and the mean interval width "
        "in counts. Mean ± s.d. over seeds.",
        "",
        "Calibrated: `calibrate_intervals` fit on the model's validation cells of the other "
        "batches, measured in both modalities and decoded with the modality hidden (plug-in "
        "context, the other batches' decoders), then applied to the held-out cells: one "
        "scale per level (*pooled*), one per bin of the predicted mean count (*by predicted "
        "count*), or one per level fit on the non-zero counts (*fit on non-zero counts*). "
        "See the Analysis page.",
        "",
        "| data | cells (calibration); seeds | zero counts | nominal | "
        + " | ".join(name for _, name in settings)
        + " |",
        "|---|---|---|---|" + "---|" * len(settings),
    ]
    for data in dict.fromkeys(r["data"] for r in runs):
        rows = [r for r in runs if r["data"] == data]
        sizes = (
            f"{rows[0].get('cells', '')} ({rows[0].get('calibration_cells', '')}); "
            f"{len(rows)} seed{'s' if len(rows) > 1 else ''}"
        )
        zeros = f"{np.mean([r.get('zero_fraction', np.nan) for r in rows]):.3f}"
        for level in (50, 80, 90):
            cells = []
            for suffix, _ in settings:
                if f"coverage_{level}{suffix}" not in rows[0]:
                    cells.append("–")
                    continue
                overall = _mean_sd([r[f"coverage_{level}{suffix}"] for r in rows])
                nonzero = _mean_sd([r[f"coverage_{level}{suffix}_nonzero"] for r in rows])
                width = np.mean([r[f"width_{level}{suffix}"] for r in rows])
                cells.append(f"{overall} / {nonzero}; width {width:.2f}")
            out.append(f"| {data} | {sizes} | {zeros} | {level}% | " + " | ".join(cells) + " |")
    if (PAGE.parent / "_static" / "calibration.png").exists():
        out += ["", "![calibration plot](_static/calibration.png)"]
    return [*out, ""]


def query_mapping_section(res: dict) -> list[str]:
    """Reference mapping of an RNA-only donor: MosaicVI vs de novo vs TOTALVI (``query_mapping.py``)."""
    out = ["## Query mapping (scArches)", "", *_header(res)]
    out += [
        f"PBMC mosaic, {res['epochs']} epochs for every reference, query and de novo model. A "
        "reference is trained without one donor, which is then mapped as an RNA-only query "
        "with `load_query_data` (only the query batch's new parameters trained). Accuracy: "
        "15-NN label transfer to the query donor from the paired reference donors (p3 and p4 "
        "for p1; p3 for p4). Protein: mean per-protein Pearson of `log1p` imputed vs measured "
        "(p4's protein is held out). Seconds: `load_query_data` + `train` + the query's latent "
        "for mapping; the whole training for de novo. TOTALVI's reference lacks the "
        "protein-only donor p2 (it needs RNA for every cell).",
        "",
    ]
    for donor in dict.fromkeys(r["query"] for r in res["runs"]):
        runs = [r for r in res["runs"] if r["query"] == donor]
        columns = [("label-transfer accuracy", "accuracy")]
        if any("pearson_per_feature" in r for r in runs):
            columns.append(("protein Pearson (per protein)", "pearson_per_feature"))
        columns += [("map seconds", "map_seconds"), ("train seconds (de novo)", "train_seconds")]
        out += [f"Query donor **{donor}**:", "", *_table(runs, columns), ""]
    return out


def panels_section(res: dict) -> list[str]:
    """``benchmarks/panels.py``: features unmeasured in a batch, masked against zero-filled."""
    env = res["environment"]
    commands = "`, `".join(res.get("commands", [res["command"]]))
    out = [
        "## Panels that differ between batches: masked, not zero-filled",
        "",
        f"Commands: `{commands}`; torch {env['torch']}, scvi-tools {env['scvi-tools']}, "
        f"mosaicvi {env['mosaicvi']}, one thread per run (runs side by side: times are not "
        f"speed figures). Fixed budgets: {res['epochs']['pbmc']} epochs (PBMC), "
        f"{res['epochs']['snareseq']} (SNARE-seq), the same for every model. Mean ± "
        "standard deviation over seeds.",
        "",
        "PBMC: half of the 224 proteins (every other one) removed from paired donor p4, "
        "as zero columns. *p4 hidden proteins: r*: the mean per-protein Pearson of `log1p` "
        "predictions against the held-out counts. MosaicVI (masked): the defaults, whose "
        "heuristic masks p4's zero columns; MosaicVI (zero-filled): "
        "`infer_feature_masks=False`, scored as the getter gives it and decoded under p3 "
        "(a batch that measured them); TOTALVI with its protein batch mask, decoded under p3; "
        "15-NN regression on RNA PCA fit on p3. Integration: the masked model against the "
        "model trained on the full panel (15-NN label transfer from p3 and p4 to p1 and p2, "
        "scIB on the cells with RNA).",
        "",
    ]
    runs = res["runs"]
    pbmc = [r for r in runs if r["dataset"] == "pbmc"]
    if pbmc:
        out += _table(
            pbmc,
            [
                ("p4 hidden proteins: r", "hidden_protein_r"),
                ("decoded under p3: r", "hidden_protein_r_under_p3"),
                ("p1 (RNA-only): accuracy", "p1_accuracy"),
                ("p2 (protein-only): accuracy", "p2_accuracy"),
                ("scIB bio", "scib Bio conservation"),
                ("scIB batch", "scib Batch correction"),
                ("scIB total", "scib Total"),
                ("proteins masked for p4", "n_masked"),
                ("train s", "train_seconds"),
            ],
        )
        out.append("")
    snare = [r for r in runs if r["dataset"] == "snareseq"]
    if snare:
        out += [
            "SNARE-seq: half of the 25,734 peaks (drawn at random) removed from libraries "
            "09A, 09E and 09I and given as `feature_masks`; *hidden regions: AUROC*, the mean "
            "over those regions (with open and closed cells) of the AUROC of the predicted "
            "accessibility of those libraries' cells against the held-out binarised counts.",
            "",
            *_table(
                snare,
                [
                    ("hidden regions: AUROC", "hidden_region_auroc"),
                    ("leave-one-library-out accuracy", "lolo_accuracy"),
                    ("train s", "train_seconds"),
                ],
            ),
            "",
        ]
    return out


def labels_section(res: dict) -> list[str]:
    """``benchmarks/labels.py``: label transfer with calibrated uncertainty."""
    env = res["environment"]
    commands = "`, `".join(res.get("commands", [res["command"]]))
    epochs = res["epochs"]
    level = res["level"]
    out = [
        "## Label transfer with uncertainty: MosaicANVI",
        "",
        f"Commands: `{commands}`; torch {env['torch']}, scvi-tools {env['scvi-tools']}, "
        f"mosaicvi {env['mosaicvi']}, one thread per run (runs side by side: times are not "
        "speed figures). Every model gets the same budget: "
        f"{epochs['pbmc'][0]} epochs unsupervised then {epochs['pbmc'][1]} with labels "
        f"(PBMC), {epochs['snareseq'][0]} then {epochs['snareseq'][1]} (SNARE-seq); 15-NN "
        "reads the unsupervised MosaicVI's latent. Mean ± standard deviation over seeds.",
        "",
        "*ECE*: expected calibration error of the probabilities (15 bins); *calibrated*: "
        "after temperature scaling. *Set size* and *coverage*: conformal prediction sets at "
        f"level {level} (coverage: the share of cells whose set holds their label). "
        "MosaicANVI calibrates on its validation set's labeled cells (same donors as the "
        "labels); *(calibration donor)* holds one labeled donor's (library's) labels out of "
        "training and calibrates on it (`train(calibration_batches=[...])`: PBMC p4, "
        "SNARE-seq 09G), at the cost of those labels.",
        "",
    ]
    runs = res["runs"]
    pbmc = [r for r in runs if r["dataset"] == "pbmc"]
    if pbmc:
        out += [
            "PBMC: labels of the paired donors p3 and p4; predicted: p1 (RNA-only; every "
            "model) and p2 (protein-only; TOTALANVI and scANVI need RNA).",
            "",
        ]
        for donor, title in (("p1_0", "p1 (RNA-only)"), ("p2_0", "p2 (protein-only)")):
            out += [f"{title}:", ""]
            out += _table(
                pbmc,
                [
                    ("accuracy", f"{donor}_accuracy"),
                    ("macro F1", f"{donor}_macro_f1"),
                    ("ECE", f"{donor}_ece"),
                    ("ECE calibrated", f"{donor}_ece_calibrated"),
                    ("set size", f"{donor}_set_size"),
                    ("coverage", f"{donor}_coverage"),
                ],
            )
            out.append("")
    snare = [r for r in runs if r["dataset"] == "snareseq"]
    if snare:
        held = ", ".join(res["data"]["snareseq"]["predict"])
        out += [
            f"SNARE-seq, 200 cells per library: labels (`cell_type`) of every library but "
            f"{held}, each predicted; mean over the three.",
            "",
            *_table(
                snare,
                [
                    ("accuracy", "mean_accuracy"),
                    ("macro F1", "mean_macro_f1"),
                    ("ECE", "mean_ece"),
                    ("ECE calibrated", "mean_ece_calibrated"),
                    ("set size", "mean_set_size"),
                    ("coverage", "mean_coverage"),
                    ("train s", "train_seconds"),
                ],
            ),
            "",
        ]
    for dataset, groups, text in (
        (
            "pbmc_choice",
            (("rna_half", "p3 RNA-only half"), ("protein_half", "p3 protein-only half")),
            "PBMC donors p3 and p4 only, p3 split into an RNA-only and a protein-only half, "
            "labels of p4",
        ),
        (
            "snareseq_choice",
            (("09E", "09E"), ("09F", "09F")),
            "SNARE-seq libraries 09A-09F (200 cells each), labels of 09A-09D",
        ),
    ):
        study = [r for r in runs if r["dataset"] == dataset]
        if not study:
            continue
        columns = [(f"{title}: accuracy", f"{group}_accuracy") for group, title in groups]
        out += [
            f"Choice study (`--study`), {text}: MosaicANVI's options one at a time, on data "
            "the tables above never predict; every row from the same unsupervised MosaicVI "
            "except *from scratch* (as many epochs, all with labels).",
            "",
            *_table(
                study,
                [
                    *columns,
                    ("mean accuracy", "mean_accuracy"),
                    ("mean macro F1", "mean_macro_f1"),
                    ("train s", "train_seconds"),
                ],
            ),
            "",
        ]
    return out


def labels_speed_section(results: Path) -> list[str]:
    """``benchmarks/labels.py --speed``: what the classification term costs per step."""
    out = []
    for device in ("gpu", "cpu"):
        res = _load(f"labels_speed_{device}", results)
        if res is None:
            continue
        runs = res["runs"]
        env = res["environment"]
        first = runs[0]
        if not out:
            out += ["### Training throughput: MosaicANVI against MosaicVI", ""]
        out += [
            f"Command: `{res['command']}` on {first['device']} (torch {env['torch']}, "
            f"{env['cpu_count']} CPU cores): SNARE-seq, all 10,309 cells, batch size "
            f"{first['batch_size']}, {first['epochs']} epochs timed after one of warm-up, "
            "the models alternating in one process; mean ± standard deviation over the "
            "repeats. MosaicANVI's time includes its calibration after training "
            f"({_stats(runs, 'MosaicANVI', 'calibrate_seconds')[0]:.2f} s on average).",
            "",
            *_table(
                runs,
                [
                    ("cells/s", "cells_per_second"),
                    ("cells/s without calibration", "cells_per_second_without_calibration"),
                ],
                digits=0,
            ),
            "",
        ]
    return out


def write_report(results: Path = RESULTS, page: Path = PAGE) -> Path:
    """Write ``page`` (``docs/benchmarks.md``) from whatever results files exist."""
    lines = [INTRO]
    for prefix, section in (
        ("quality", report_quality.baselines_section),
        ("quality_study", report_quality.study_section),
    ):
        found = {d: _load(f"{prefix}_{d}", results) for d in ("pbmc", "snareseq")}
        found = {d: r for d, r in found.items() if r is not None}
        if found:
            lines += section(found)
    for name, section in (
        ("integration", integration_section),
        ("imputation", imputation_section),
        ("protein_imputation", protein_imputation_section),
        ("speed", speed_section),
        ("defaults", defaults_section),
        ("ablation", ablation_section),
        ("fusion_speed", fusion_speed_section),
        ("differential", differential_section),
        ("de_memory", de_memory_section),
        ("calibration", calibration_section),
        ("query_mapping", query_mapping_section),
        ("panels", panels_section),
        ("labels", labels_section),
    ):
        result = _load(name, results)
        if result is None:
            lines += [
                f"## {name.replace('_', ' ').capitalize()}",
                "",
                f"Not run yet: `python benchmarks/{name}.py`.",
                "",
            ]
        else:
            lines += section(result)
        if name == "labels":
            lines += labels_speed_section(results)
        if name == "defaults":
            region_draw = _load("defaults_region_draw", results)
            if region_draw is not None:
                heading = "### The region draw as the default (replaced by the share of cells)"
                lines += defaults_section(region_draw, heading)
            ablation = _load("defaults_ablation", results)
            if ablation is not None:
                lines += defaults_ablation_section(ablation)
    lines += scale_section(results)
    for name, section in (
        ("gate_cost", report_house.gate_cost_section),
        ("replacements", report_house.replacements_section),
        ("rerun_check", report_house.rerun_section),
    ):
        result = _load(name, results)
        if result is not None:
            lines += section(result)
    page.write_text("\n".join(lines).rstrip() + "\n")
    return page


if __name__ == "__main__":
    print(write_report())
