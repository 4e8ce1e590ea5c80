"""Tables of ``docs/benchmarks.md`` for issue 29's house-keeping: gate, replacements, seed 0."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _command(res: dict) -> str:
    return res["command"].replace(str(ROOT) + "/", "")


def gate_cost_section(res: dict) -> list[str]:
    """The validation gate's cost per call (``gate_cost.py``)."""
    env = res["environment"]
    out = ["## The validation gate at atlas size", ""]
    out += [
        f"Command: `{_command(res)}`; torch {env['torch']}, scvi-tools {env['scvi-tools']}. "
        f"The PBMC mosaic tiled {res['copies']} times; each row a fresh process. "
        "`check_data` is the gate every getter and `train` run (median of 4 calls after the "
        "first); the last column reassigns the RNA feature names (same names, a new index), "
        "which recomputes the cached facts. Building the model includes the protein "
        "background prior.",
        "",
        "| code | cells | RNA | protein | setup s | model s | first check s | check s "
        "| 500-cell latent s | DE s (gate calls) | check after new var_names s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        out.append(
            f"| {r['code']} | {r['n_cells']:,} | {r['n_rna']:,} | {r['n_protein']:,} "
            f"| {r['setup_seconds']:.1f} | {r['model_seconds']:.1f} "
            f"| {r['check_data_first_seconds']:.3f} | {r['check_data_seconds']:.4f} "
            f"| {r['latent_500_cells_seconds']:.3f} "
            f"| {r['de_seconds']:.2f} ({r['de_check_data_calls']}) "
            f"| {r['check_data_after_var_names_seconds']:.3f} |"
        )
    return [*out, ""]


def replacements_section(res: dict) -> list[str]:
    """Hand-written code against its library replacement (``replacements.py``)."""
    out = ["## Library replacements (issue 29)", ""]
    out += [
        f"Command: `{_command(res)}` (the earlier tree: `{res['baseline']}`). The same inputs "
        "through the earlier and the present code, each in a fresh process, one thread.",
        "",
        "| function | inputs | largest relative difference | NaN in the same places "
        "| µs per call before | after |",
        "|---|---|---|---|---|---|",
    ]
    for part, name in (
        ("kl", "`weighted_kl` (`kl_divergence`)"),
        ("correlation", "`feature_correlation` (scipy)"),
    ):
        for key, r in res[part].items():
            out.append(
                f"| {name} | {key} | {r['max_relative_difference']:.1e} | {r['same_nan']} "
                f"| {r['us_before']:.0f} | {r['us_after']:.0f} |"
            )
    s = res["sampler"]
    p = res["prior"]
    out += [
        "",
        f"`ChunkedBatchSampler` (rank split by `DistributedSampler`): {s['settings']:,} "
        f"settings x replicas, 3 epochs each; {s['identical']:,} give the same minibatches "
        f"(or are refused by both), {s['different']} differ, {s['failed_before']} failed "
        "before (no cell, or no full minibatch per replica) and work or are refused with a "
        f"clear error now, {s.get('refused_now_no_step_before', 0)} gave epochs without a step "
        "before (`drop_last` with fewer cells than a minibatch) and are refused now.",
        "",
        f"Protein background prior (on at most 2,000 cells per batch by `GaussianMixture`'s "
        f"EM; was another EM over every cell) on PBMC, {p['n_values']} values (protein x "
        f"batch): means differ by {p['mean_median_abs_difference']:.3f} (median) and "
        f"{p['mean_max_abs_difference']:.2f} (largest), scales by "
        f"{p['scale_median_abs_difference']:.3f} / {p['scale_max_abs_difference']:.2f} "
        f"(`log1p` units); building the model took {p['model_seconds_before']:.2f} s before "
        f"and {p['model_seconds_after']:.2f} s after (median of 3).",
        "",
    ]
    fits = res.get("prior_fits")
    if fits:
        out += [
            "The batched EM of the prior against sklearn's `GaussianMixture` called once per "
            "protein and batch (same start, variance floor, stopping rule):",
            "",
            "| data | mixtures | largest difference of means | of scales | batched EM s "
            "| GaussianMixture s |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in fits.items():
            out.append(
                f"| {name} | {r['n_fits']:,} | {r['mean_max_abs_difference']:.1e} "
                f"| {r['scale_max_abs_difference']:.1e} | {r['seconds_batched_em']:.2f} "
                f"| {r['seconds_gaussian_mixture']:.2f} |"
            )
        out.append("")
    return out


def rerun_section(res: dict) -> list[str]:
    """The benchmarks' PBMC rows re-run at commits (``rerun_check.py``)."""
    out = ["## Benchmark rows re-run after the house-keeping (issue 29)", ""]
    out += [
        f"Command: `{_command(res)}`. Each commit's PBMC rows of MosaicVI / MosaicANVI "
        "re-trained and compared with the stored rows (timings left out). Seed 0: metrics "
        "changed and the largest change. Where every seed was re-run: `z` is the difference "
        "of the means over the seeds divided by its standard error; `z > 2` marks a shift "
        "beyond the seeds' noise.",
        "",
        "| commit | benchmark | model | metrics | seed 0: changed | seed 0: largest change "
        "| seeds | largest z | metrics with z > 2 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        seeds = ", ".join(map(str, r["seeds"]))
        z = f"{r['max_z']:.1f} | {r['n_z_over_2']}" if "max_z" in r else "– | –"
        out.append(
            f"| {r['commit']} | {r['benchmark']} | {r['model']} | {r['n_metrics']} "
            f"| {r['seed0_n_changed']} | {r['seed0_max_abs_change']:.4f} | {seeds} | {z} |"
        )
    headline = [r for r in res["runs"] if "means" in r]
    if headline:
        out += ["", "Headline metrics, stored → re-run (mean ± s.d. over the seeds):", ""]
        out += [
            "| benchmark | model | metric | stored | re-run | z |",
            "|---|---|---|---|---|---|",
        ]
        for r in headline:
            for key, m in r["means"].items():
                if not any(w in key for w in HEADLINE):
                    continue
                (a, sa), (b, sb) = m["stored"], m["rerun"]
                out.append(
                    f"| {r['benchmark']} | {r['model']} | {key} | {a:.3f} ± {sa:.3f} "
                    f"| {b:.3f} ± {sb:.3f} | {m['z']:.1f} |"
                )
    return [*out, ""]


#: metrics listed in the headline table of :func:`rerun_section`
HEADLINE = ("scib Total", "accuracy", "protein_r", "coverage")
