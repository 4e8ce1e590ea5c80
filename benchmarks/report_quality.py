"""The sections of ``docs/benchmarks.md`` written from ``benchmarks/quality.py``'s results.

``quality_study_<dataset>.json`` (the choice split: one factor at a time) and
``quality_<dataset>.json`` (the reporting split: defaults against simple baselines).
"""

from __future__ import annotations

import math

import numpy as np

#: scib-metrics' metrics, then its aggregates (``report.py`` uses both lists too)
SCIB_DETAIL = [
    "Isolated labels",
    "KMeans NMI",
    "KMeans ARI",
    "Silhouette label",
    "cLISI",
    "BRAS",
    "iLISI",
    "KBET",
    "Graph connectivity",
    "PCR comparison",
]
SCIB = ["Bio conservation", "Batch correction", "Total"]
SCIB_ALL = SCIB_DETAIL + SCIB

#: the aggregates, before the budget's columns in every table here
_SCIB_AND_BUDGET = [
    ("scIB bio", "scib Bio conservation"),
    ("scIB batch", "scib Batch correction"),
    ("scIB total", "scib Total"),
]

STUDY_COLUMNS = {
    "pbmc": [
        ("p3 RNA-only: accuracy", "rna_only_accuracy"),
        ("p3 protein-only: accuracy", "protein_only_accuracy"),
        ("p3 protein from RNA: r", "protein_r"),
        *_SCIB_AND_BUDGET,
        ("epochs", "epochs_trained"),
        ("train s", "train_seconds"),
    ],
    "snareseq": [
        ("leave-one-library-out accuracy", "lolo_accuracy"),
        *_SCIB_AND_BUDGET,
        ("epochs", "epochs_trained"),
        ("train s", "train_seconds"),
    ],
}

REPORT_COLUMNS = {
    "pbmc": [
        ("p1 (RNA-only): accuracy", "p1_accuracy"),
        ("p2 (protein-only): accuracy", "p2_accuracy"),
        ("p4 protein from RNA: r", "p4_protein_r"),
        *_SCIB_AND_BUDGET,
        ("epochs", "epochs"),
        ("train s", "train_seconds"),
    ],
    "snareseq": [
        ("leave-one-library-out accuracy", "lolo_accuracy"),
        *_SCIB_AND_BUDGET,
        ("epochs", "epochs"),
        ("train s", "train_seconds"),
    ],
}

TITLES = {
    "pbmc": "PBMC CITE-seq",
    "snareseq": "SNARE-seq",
}


def _values(rows: list[dict], key: str) -> list[float]:
    out = []
    for r in rows:
        v = r.get(key)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            out.append(float(v))
    return out


def _fmt(values: list[float], key: str) -> str:
    digits = 0 if key in ("train_seconds", "epochs", "epochs_trained") else 3
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def _groups(rows: list[dict], key: str) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r[key], []).append(r)
    return groups


def _mean(rows: list[dict], key: str) -> float:
    values = _values(rows, key)
    return float(np.mean(values)) if values else math.nan


def _header(result: dict) -> list[str]:
    env = result["environment"]
    commands = "`, `".join(result.get("commands", [result["command"]]))
    return [
        f"Commands: `{commands}`; torch {env['torch']}, scvi-tools "
        f"{env['scvi-tools']}, mosaicvi {env['mosaicvi']}. Mean ± standard deviation over "
        "seeds.",
        "",
    ]


def study_section(results: dict[str, dict]) -> list[str]:
    """One table per data set: each factor's scores and its difference from its stage's base."""
    lines = [
        "## Where the quality goes: one factor at a time (choice split)",
        "",
        "`benchmarks/quality.py study`. Choices are made on other donors and libraries than "
        "the comparison with the baselines reports: PBMC donors p3 "
        "and p4 only (p3 split at random into an RNA-only and a protein-only half, labels "
        "transferred from p4, p3's RNA-only half's protein predicted from RNA); SNARE-seq "
        "libraries 09A-09F, 200 cells each. Stage 1 varies the KL weight and its warm-up "
        "from the base; stage 2 every other factor from the base with stage 1's choice. "
        "*Δ total*: the difference of the mean scIB total from the stage's base. Timings "
        "come from runs side by side on 2 cores, one thread each: not speed figures. PBMC's "
        "label-transfer donors are disjoint between the splits; its scIB and protein imputation "
        "share donors p3 and p4 with the report (four donors allow no more).",
        "",
    ]
    for dataset, result in results.items():
        lines += [f"### {TITLES[dataset]}", ""]
        if "commands" not in result:  # rows of both stages, from one invocation per stage
            stages = sorted({r["stage"] for r in result["runs"]})
            result = {
                **result,
                "commands": [
                    f"python benchmarks/quality.py study --study-stage {s} --dataset {dataset}"
                    for s in stages
                ],
            }
        lines += _header(result)
        base = result["base"]
        lines += [
            f"Base: {base['max_epochs']} epochs, KL warm-up over the first "
            f"{base['warmup']:.0%} of them up to a weight of {base['max_kl_weight']}; "
            + (
                f"stage 2 base: {result['stage2_base']}."
                if result.get("stage2_base") is not None
                else "stage 2 not run."
            ),
            "",
        ]
        if result.get("references"):
            parts = [f"{k} {v:.3f}" for k, v in result["references"].items()]
            lines += ["Simple baselines on the same cells: " + "; ".join(parts) + ".", ""]
        columns = STUDY_COLUMNS[dataset]
        lines.append(
            "| stage | factor | " + " | ".join(t for t, _ in columns) + " | Δ total | seeds |"
        )
        lines.append("|---|---|" + "---|" * (len(columns) + 2))
        by_stage = _groups(result["runs"], "stage")
        for stage, rows in sorted(by_stage.items()):
            groups = _groups(rows, "factor")
            reference = _mean(
                groups.get("base" if stage == 1 else "stage 2 base", []), "scib Total"
            )
            for factor, group in groups.items():
                cells = [_fmt(_values(group, key), key) for _, key in columns]
                delta = _mean(group, "scib Total") - reference
                lines.append(
                    f"| {stage} | {factor} | "
                    + " | ".join(cells)
                    + f" | {delta:+.3f} | {len(group)} |"
                )
        lines.append("")
    return lines


def baselines_section(results: dict[str, dict]) -> list[str]:
    """Defaults against PCA, 15-NN, ``MULTIVI`` and ``TOTALVI`` on the reporting split."""
    lines = [
        "## Against simple baselines, at the defaults (reporting split)",
        "",
        "`benchmarks/quality.py report`. MosaicVI at its defaults (`max_epochs=None`), "
        "`MULTIVI` and `TOTALVI` at theirs (early stopping on), PCA and a 15-NN regression. "
        "PBMC: the four-donor mosaic; scIB on the 1,200 cells with RNA (PCA of RNA the "
        "unintegrated reference), 15-NN label transfer from the paired donors p3 and p4 to "
        "p1 (RNA-only) and p2 (protein-only); p4's protein predicted from RNA by a model "
        "trained with it hidden (per-protein Pearson of `log1p` against the held-out counts; "
        "the PCA (RNA) row is the 15-NN regression on RNA PCA fit on p3). PCA of the "
        "concatenated modalities cannot embed the PBMC cells that lack one of them. "
        "SNARE-seq: libraries 09G-09L, 200 cells each, scIB against `cell_type` across "
        "libraries and leave-one-library-out 15-NN transfer.",
        "",
    ]
    anchors = {"pbmc": ("PCA (RNA)", "PCA (protein)"), "snareseq": ("PCA (concatenated)",)}
    for dataset, result in results.items():
        rows = result["runs"]
        lines += [f"### {TITLES[dataset]}", ""]
        lines += _header(result)
        columns = REPORT_COLUMNS[dataset]
        groups = _groups(rows, "model")
        lines.append("| model | " + " | ".join(t for t, _ in columns) + " |")
        lines.append("|---|" + "---|" * len(columns))
        for model, group in groups.items():
            cells = [_fmt(_values(group, key), key) for _, key in columns]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines += ["", "Every scIB metric:", ""]
        lines.append("| model | " + " | ".join(SCIB_ALL) + " |")
        lines.append("|---|" + "---|" * len(SCIB_ALL))
        for model, group in groups.items():
            if not _values(group, "scib Total"):
                continue
            cells = [_fmt(_values(group, f"scib {k}"), k) for k in SCIB_ALL]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        ours = groups.get("MosaicVI")
        if ours:
            lines += ["", "MosaicVI's mean minus each baseline's:", ""]
            for anchor in anchors[dataset]:
                if anchor not in groups:
                    continue
                parts = []
                for title, key in columns[:-2]:
                    a, b = _mean(ours, key), _mean(groups[anchor], key)
                    if not (math.isnan(a) or math.isnan(b)):
                        parts.append(f"{title} {a - b:+.3f}")
                lines.append(f"- against {anchor}: " + "; ".join(parts) + ".")
        lines.append("")
    return lines
