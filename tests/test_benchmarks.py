"""Smoke run of the benchmark suite (``--quick``: a few cells, 3 epochs, one seed).

Checks that every benchmark script runs end to end against scvi-tools' MULTIVI and TOTALVI,
writes finite metrics for every model, and that the docs page renders from its results.
"""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "benchmarks" / "results" / "quick"
DATA = ROOT.parent / "shared" / "data"

pytestmark = [
    pytest.mark.skipif(
        not (DATA / "mop_snareseq_rna_atac.h5mu").exists(),
        reason="the benchmarks read the SNARE-seq and PBMC files in ../shared/data, absent here",
    ),
    pytest.mark.skipif(
        importlib.util.find_spec("scib_metrics") is None, reason="needs the benchmark group"
    ),
]


def models(runs, key):
    return {r["model"] for r in runs if isinstance(r.get(key), float) and math.isfinite(r[key])}


@pytest.fixture(scope="module")
def quick_results():
    subprocess.run(
        [sys.executable, "benchmarks/run_all.py", "--quick"], cwd=ROOT, check=True, timeout=1200
    )
    return {
        n: json.loads((QUICK / f"{n}.json").read_text())
        for n in (
            "integration",
            "imputation",
            "protein_imputation",
            "speed",
            "ablation",
            "fusion_speed",
            "scale",
            "query_mapping",
            "defaults",
            "de_memory",
            "quality_study_pbmc",
            "quality_study_snareseq",
            "quality_pbmc",
            "quality_snareseq",
            "panels",
            "labels",
            "gate_cost",
        )
    }


def test_integration_scores_every_model(quick_results):
    res = quick_results["integration"]
    assert models(res["snareseq"]["runs"], "Total") == {
        "MosaicVI",
        "MULTIVI",
        "PCA (concatenated)",
    }
    assert models(res["pbmc"]["runs"], "Total") == {"MosaicVI", "MULTIVI", "TOTALVI", "PCA (RNA)"}
    assert models(res["pbmc"]["runs"], "p2_accuracy") == {"MosaicVI", "MULTIVI"}


def test_imputation_scores_every_model(quick_results):
    res = quick_results["imputation"]
    assert models(res["pbmc"]["runs"], "pearson_per_feature") == {
        "MosaicVI",
        "MULTIVI",
        "TOTALVI",
        "15-NN regression on RNA PCA (p3)",
    }
    snare = res["snareseq"]["runs"]
    assert models(snare, "auroc_per_cell") == {"MosaicVI", "MULTIVI"}
    assert models(snare, "rna_pearson_per_cell") == {"MosaicVI", "MULTIVI"}


def test_protein_imputation_scores_decoder_and_latent(quick_results):
    runs = quick_results["protein_imputation"]["runs"]
    scored = models(runs, "pearson_per_feature")
    for likelihood in ("mixture", "nb"):
        name = f'MosaicVI, protein_likelihood="{likelihood}"'
        assert {f"{name}: decoder", f"{name}: 15-NN on its latent (p3)"} <= scored
    assert 'MosaicVI, protein_likelihood="mixture": decoder, with background' in scored
    assert 'MosaicVI, protein_likelihood="nb": decoder, with background' not in scored
    floored = [
        r["floored_foreground_proteins"] for r in runs if "floored_foreground_proteins" in r
    ]
    n_proteins = quick_results["protein_imputation"]["n_proteins"]
    assert floored and all(0 <= f <= n_proteins for f in floored)
    assert models(runs, "pearson_per_feature_knn_cell_level") == {
        f'MosaicVI, protein_likelihood="{lik}": decoder{bg}'
        for lik, bg in (("mixture", ""), ("mixture", ", with background"), ("nb", ""))
    }
    split = quick_results["protein_imputation"]["split_runs"]
    assert len(split) == 2  # one seed: p4 cells in the training split, and the others
    assert sum(r["n_cells"] for r in split) == quick_results["protein_imputation"]["n_held_out"]
    assert all(r["n_cells"] > 0 and math.isfinite(r["pearson_per_feature"]) for r in split)


def test_speed_measures_each_variant(quick_results):
    res = quick_results["speed"]
    assert len(models(res["throughput"], "cells_per_second")) == 3
    assert all(r["peak_rss_mib"] > r["rss_before_training_mib"] > 0 for r in res["throughput"])
    assert {r["model"] for r in res["convergence"]} == {"MosaicVI", "MULTIVI", "TOTALVI"}


def test_ablation_scores_every_variant(quick_results):
    res = quick_results["ablation"]
    variants = set(res["variants"])
    assert len(variants) >= 9
    for key in ("Total", "protein_pearson_per_feature", "p1_accuracy", "seconds_per_epoch"):
        assert models(res["pbmc"]["runs"], key) == variants
    for key in ("Total", "auroc_per_cell", "rna_pearson_per_cell", "seconds_per_epoch"):
        assert models(res["snareseq"]["runs"], key) == variants
    assert models(quick_results["fusion_speed"]["runs"], "seconds_per_epoch") == variants


def test_query_mapping_compares_every_model_on_both_donors(quick_results):
    runs = quick_results["query_mapping"]["runs"]
    assert {(r["query"], r["model"]) for r in runs} == {
        (d, m)
        for d in ("p1_0", "p4_0")
        for m in ("MosaicVI query", "MosaicVI de novo", "TOTALVI query")
    }
    assert all(0 <= r["accuracy"] <= 1 for r in runs)
    assert all(r["map_seconds"] > 0 for r in runs if "query" in r["model"])
    assert all("pearson_per_feature" in r for r in runs if r["query"] == "p4_0")


def test_report_renders_from_results(quick_results, tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from report import write_report
    finally:
        sys.path.pop(0)
    page = write_report(QUICK, tmp_path / "benchmarks.md").read_text()
    for heading in (
        "## Integration",
        "## Imputation",
        "## Speed and memory",
        "## Ablation",
        "## Differential analysis: known markers",
        "## Differential analysis: memory at ATAC scale",
        "## Calibration of predictive intervals",
        "## Query mapping (scArches)",
        "## Fast defaults against the exact path (equal epochs)",
        "## Against simple baselines, at the defaults (reporting split)",
        "## Where the quality goes: one factor at a time (choice split)",
        "## Panels that differ between batches: masked, not zero-filled",
        "## The validation gate at atlas size",
    ):
        assert heading in page
    assert "Not run yet" not in page


def test_scale_times_every_model_and_its_loader(quick_results):
    runs = quick_results["scale"]["runs"]
    models = ("MosaicVI", "MosaicVI-exact", "MULTIVI")
    trained = {r["model"]: r for r in runs if "cells_per_second" in r}
    loaders = {r["model"]: r for r in runs if "loader_cells_per_second" in r}
    assert set(trained) == set(loaders) == set(models)
    for row in trained.values():
        assert row["n_peaks"] == 25734 and row["seconds_per_epoch"] > 0
        assert row["cells_per_second"] == pytest.approx(
            row["n_train_cells"] / row["seconds_per_epoch"]
        )
        assert row["peak_rss_mib"] > 0


def test_defaults_are_compared_with_the_exact_path_on_both_data_sets(quick_results):
    res = quick_results["defaults"]
    variants = set(res["variants"])
    assert variants == {"defaults (sampled)", "exact (before issue 24)"}
    snare, pbmc = res["snareseq"]["runs"], res["pbmc"]["runs"]
    for key in ("lolo_accuracy", "Total", "atac_auroc_per_region"):
        assert models(snare, key) == variants, key
    assert all(0.0 <= r["atac_auroc_per_region"] <= 1.0 for r in snare)
    for key in ("p1_accuracy", "p2_accuracy", "protein_pearson_per_feature"):
        assert models(pbmc, key) == variants, key


def test_de_memory_measures_the_peak_above_the_footprint(quick_results):
    runs = quick_results["de_memory"]["runs"]
    assert len(runs) == 1 and runs[0]["code"].startswith("this tree")
    row = runs[0]
    assert row["n_peaks"] == 25734 and row["n_comparisons"] == 2
    assert row["peak_rss_mib"] >= row["footprint_rss_mib"] > 0
    assert row["peak_above_footprint_mib"] == pytest.approx(
        row["peak_rss_mib"] - row["footprint_rss_mib"]
    )


def test_quality_study_scores_both_stages_on_the_choice_split(quick_results):
    pbmc, snare = quick_results["quality_study_pbmc"], quick_results["quality_study_snareseq"]
    for res, keys in (
        (pbmc, ("rna_only_accuracy", "protein_only_accuracy", "protein_r", "scib Total")),
        (snare, ("lolo_accuracy", "scib Total")),
    ):
        assert {r["stage"] for r in res["runs"]} == {1, 2}
        for r in res["runs"]:
            assert all(math.isfinite(r[k]) for k in keys), r
        assert all(math.isfinite(v) for v in res["references"].values())
    # stage 2 trains from stage 1's choice of KL weight, which each run records
    for res in (pbmc, snare):
        chosen = res["stage2_base"]["max_kl_weight"]
        stage2 = [r for r in res["runs"] if r["stage"] == 2]
        assert all(r["config"]["train"]["plan_kwargs"]["max_kl_weight"] == chosen for r in stage2)


def test_quality_report_puts_the_defaults_beside_every_baseline(quick_results):
    pbmc, snare = quick_results["quality_pbmc"]["runs"], quick_results["quality_snareseq"]["runs"]
    assert models(pbmc, "scib Total") == {"MosaicVI", "MULTIVI", "TOTALVI", "PCA (RNA)"}
    assert models(pbmc, "p2_accuracy") == {"MosaicVI", "MULTIVI", "PCA (protein)"}
    assert models(pbmc, "p4_protein_r") == {"MosaicVI", "TOTALVI", "PCA (RNA)"}
    assert models(snare, "scib Total") == {
        "MosaicVI",
        "MULTIVI",
        "PCA (concatenated)",
        "PCA (RNA)",
    }
    assert models(snare, "lolo_accuracy") == models(snare, "scib Total")


def test_panels_compares_masked_with_zero_filled_totalvi_and_15nn(quick_results):
    runs = quick_results["panels"]["runs"]
    pbmc = [r for r in runs if r["dataset"] == "pbmc"]
    assert {r["model"] for r in pbmc} == {
        "15-NN on RNA PCA",
        "MosaicVI (masked)",
        "MosaicVI (zero-filled)",
        "MosaicVI (full panel)",
        "TOTALVI",
    }
    masked = next(r for r in pbmc if r["model"] == "MosaicVI (masked)")
    assert masked["n_masked"] > 0  # the heuristic found p4's zero columns
    for r in pbmc:
        if r["model"] != "MosaicVI (full panel)":
            assert np.isfinite(r["hidden_protein_r"])
    snare = {r["model"]: r for r in runs if r["dataset"] == "snareseq"}
    assert set(snare) == {"MosaicVI (masked)", "MosaicVI (zero-filled)"}
    # NaN only if no hidden region had both open and closed cells in the smoke data
    assert all(
        math.isnan(r["hidden_region_auroc"]) or 0 <= r["hidden_region_auroc"] <= 1
        for r in snare.values()
    )


def test_labels_compares_mosaicanvi_with_15nn_totalanvi_and_scanvi(quick_results):
    runs = quick_results["labels"]["runs"]
    pbmc = {r["model"]: r for r in runs if r["dataset"] == "pbmc"}
    anvi = {"MosaicANVI", "MosaicANVI (calibration donor)"}
    assert set(pbmc) == {"15-NN (MosaicVI latent)", "TOTALANVI", "scANVI", *anvi}
    # RNA-based baselines predict the RNA-only donor only; MosaicANVI both donors
    assert models(list(pbmc.values()), "p1_0_accuracy") == set(pbmc)
    assert models(list(pbmc.values()), "p2_0_accuracy") == {"15-NN (MosaicVI latent)", *anvi}
    assert models(list(pbmc.values()), "p2_0_coverage") == anvi
    for name in anvi:
        row = pbmc[name]
        assert 0 <= row["p1_0_coverage"] <= 1 and row["p1_0_set_size"] >= 0
        assert set(row["temperatures"]) == {"rna", "protein", "protein+rna"}
    snare = {r["model"] for r in runs if r["dataset"] == "snareseq"}
    assert snare == {"15-NN (MosaicVI latent)", "scANVI", *anvi}


def test_gate_cost_times_the_gate_and_counts_its_calls(quick_results):
    (row,) = quick_results["gate_cost"]["runs"]
    assert row["n_cells"] == 3200 and row["de_check_data_calls"] >= 1
    for key in ("model_seconds", "check_data_seconds", "check_data_after_var_names_seconds"):
        assert math.isfinite(row[key]) and row[key] >= 0


def test_replacements_compare_two_trees(tmp_path):
    """The tree against itself: every output the same (the real run names an older tree)."""
    subprocess.run(
        [sys.executable, "benchmarks/replacements.py", "--quick", "--baseline-src", "src"],
        cwd=ROOT,
        check=True,
        timeout=900,
    )
    res = json.loads((QUICK / "replacements.json").read_text())
    for part in ("kl", "correlation"):
        assert res[part] and all(r["max_relative_difference"] == 0 for r in res[part].values())
    assert res["sampler"]["identical"] == res["sampler"]["settings"] > 0
    assert res["prior"]["mean_max_abs_difference"] == 0
    for fits in res["prior_fits"].values():  # the batched EM is GaussianMixture's
        assert fits["n_fits"] > 0 and fits["mean_max_abs_difference"] < 1e-5
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from report_house import replacements_section
    finally:
        sys.path.pop(0)
    assert "Library replacements" in "\n".join(replacements_section(res))
