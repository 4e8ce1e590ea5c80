"""Command line: ``mosaicvi demo`` trains on the bundled real PBMC mosaic."""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from pathlib import Path

logger = logging.getLogger("mosaicvi")


def run_demo(output_dir: Path, max_epochs: int | None = None, seed: int = 0) -> dict[str, Path]:
    """Train MosaicVI on the bundled PBMC CITE-seq mosaic and write its results.

    Writes ``mosaicvi_demo.h5mu`` (the data with the joint latent in
    ``.obsm["X_mosaicvi"]``, its UMAP in ``.obsm["X_umap"]``, and a modality
    ``protein_imputed`` holding the denoised protein imputed from RNA for the RNA-only donor
    p1_0) and ``mosaicvi_demo_umap.png`` (UMAP coloured by cell type and by donor).

    Parameters
    ----------
    output_dir
        Folder to write to (created if needed).
    max_epochs
        Training epochs; scvi-tools' heuristic (400 for this data set) when ``None``.
    seed
        Random seed.

    Returns
    -------
    Paths of the written files, keyed ``"h5mu"`` and ``"png"``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc
    import scvi
    from anndata import AnnData

    from mosaicvi import MosaicVI
    from mosaicvi._constants import LATENT_OBSM_KEY
    from mosaicvi.data import load_pbmc_cite_mosaic

    output_dir.mkdir(parents=True, exist_ok=True)
    scvi.settings.seed = seed
    mdata = load_pbmc_cite_mosaic()
    MosaicVI.setup_mudata(
        mdata, modalities={"rna": "rna", "protein": "protein"}, batch_key="batch"
    )
    model = MosaicVI(mdata)
    logger.info("%s", model)
    start = time.perf_counter()
    model.train(max_epochs=max_epochs)
    logger.info("trained in %.0f s", time.perf_counter() - start)

    mdata.obsm[LATENT_OBSM_KEY] = model.get_latent_representation()
    rna_only = mdata.obs_names[mdata.obs["batch"] == "p1_0"]
    idx = mdata.obs_names.get_indexer(rna_only)
    imputed = model.get_protein_expression(indices=idx, given=["rna"])
    protein_imputed = AnnData(
        X=imputed.to_numpy(dtype="float32"),
        obs=mdata.obs.loc[rna_only, ["batch", "celltype"]].copy(),
        var=mdata.mod["protein"].var.copy(),
    )
    protein_imputed.uns["mosaicvi"] = {"source": "MosaicVI.get_protein_expression(given=['rna'])"}
    mdata.mod["protein_imputed"] = protein_imputed
    with warnings.catch_warnings():  # protein_imputed shares the protein names, on purpose
        warnings.filterwarnings("ignore", message="var_names are not unique")
        mdata.update()

    sc.pp.neighbors(mdata, use_rep=LATENT_OBSM_KEY, random_state=seed)
    sc.tl.umap(mdata, random_state=seed)
    view = AnnData(
        obs=mdata.obs[["celltype", "batch"]].copy(), obsm={"X_umap": mdata.obsm["X_umap"]}
    )
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    for ax, key, title in zip(axes, ("celltype", "batch"), ("cell type", "donor")):
        sc.pl.umap(view, color=key, ax=ax, show=False, title=f"MosaicVI latent: {title}")
    fig.tight_layout()
    paths = {
        "h5mu": output_dir / "mosaicvi_demo.h5mu",
        "png": output_dir / "mosaicvi_demo_umap.png",
    }
    fig.savefig(paths["png"], dpi=120)
    plt.close(fig)
    mdata.write(paths["h5mu"])
    return paths


def quiet_console() -> None:
    """A clean console for the demo: only its own messages, warnings and the progress bar.

    Sets mudata's announced default ``pull_on_update=False`` (which silences its
    ``FutureWarning`` on every ``update()``), keeps Lightning's informational lines (device
    summary, seed, logger advertisement) at warning level, and hides Lightning's deprecation
    warning about torch's ``LeafSpec``, which is Lightning's to fix.
    """
    import mudata

    mudata.set_options(pull_on_update=False)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``mosaicvi`` command."""
    parser = argparse.ArgumentParser(prog="mosaicvi", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="train on the bundled real PBMC CITE-seq mosaic; write latent, UMAP, imputation",
    )
    demo.add_argument("--output-dir", type=Path, default=Path("."), help="where to write")
    demo.add_argument("--max-epochs", type=int, default=None, help="default: scvi heuristic")
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    quiet_console()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    paths = run_demo(args.output_dir, max_epochs=args.max_epochs, seed=args.seed)
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}")


if __name__ == "__main__":
    main()
