"""Draw docs/_static/architecture.png: mosaicvi's layers and the files of each.

python scripts/architecture_figure.py
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.patches import FancyBboxPatch

OUT = Path(__file__).resolve().parents[1] / "docs" / "_static" / "architecture.png"

#: (layer, what it does, its files), top (what users call) to bottom (what it builds on)
LAYERS = [
    (
        "model/",
        "MosaicVI, MosaicANVI: scvi-tools' model API, one mixin per responsibility",
        "_setup  _gate  _getters  _decoding  _predictive  _intervals  _interval_calibration  "
        "_interval_scores\n_differential  _de_run  _de_checks  _de_samples  _query  "
        "_query_weights  _saveload  _io  _labels  _label_training  _trainingplan",
    ),
    (
        "module/",
        "MosaicVAE (MosaicANVAE): loops over the heads; inference, generative model, objective",
        "_mosaicvae  _inputs  _objective  _posterior  _mosaicanvae",
    ),
    (
        "nn/",
        "one head per data type (expert, context, decoder, likelihood, own options); fusion",
        "_head  _head_types  _registry (HEADS)  _rna  _atac  _atac_likelihood  _protein\n"
        "_encoder  _fusion  _layers  _sparse",
    ),
    (
        "data/",
        "registration without writing to the MuData; facts cached per state; loading rows",
        "_fields  _feature_field  _features  _labels  _manager  _presence  _validation\n"
        "_backed (RowReader)  _dataset  _sampler",
    ),
    (
        "scvi-tools, Lightning, torch",
        "public API; the private names used are in mosaicvi/_compat.py (tests/test_compat.py)",
        "",
    ),
]
COLOURS = ["#d8e8f5", "#dcefdc", "#fbe8cc", "#efdff2", "#e6e6e6"]


def main() -> None:
    """Draw the figure and save it."""
    fig, ax = plt.subplots(figsize=(11, 6.2))
    ax.set_xlim(0, 1)
    ax.set_ylim(0, len(LAYERS))
    ax.axis("off")
    for k, ((name, what, files), colour) in enumerate(zip(LAYERS, COLOURS)):
        y = len(LAYERS) - k - 1
        box = FancyBboxPatch(
            (0.01, y + 0.08),
            0.98,
            0.84,
            boxstyle="round,pad=0.005,rounding_size=0.02",
            facecolor=colour,
            edgecolor="#555555",
        )
        ax.add_patch(box)
        ax.text(0.03, y + 0.72, name, fontsize=12, fontweight="bold", va="center")
        ax.text(0.03, y + 0.5, what, fontsize=9.5, va="center")
        ax.text(0.03, y + 0.24, files, fontsize=8, va="center", family="monospace", color="#333")
        if k < len(LAYERS) - 1:
            ax.annotate(
                "",
                xy=(0.96, y + 0.06),
                xytext=(0.96, y + 0.3),
                arrowprops={"arrowstyle": "->", "color": "#555555"},
            )
    ax.set_title("mosaicvi, from what users call (top) to what it builds on", fontsize=12)
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=110)
    print(OUT)


if __name__ == "__main__":
    main()
