"""Lightning DDP on mosaic data: two CPU processes (gloo), minibatches lacking modalities."""

import numpy as np
import scvi

from mosaicvi import MosaicVI
from mosaicvi.data import simulate_mosaic

MODS = {"rna": "rna", "atac": "atac", "protein": "protein"}


def test_ddp_on_two_cpu_processes_with_modalities_missing_from_minibatches():
    mdata = simulate_mosaic(n_cells=240, n_genes=20, n_regions=30, n_proteins=6, seed=5)
    # cells grouped by which modalities they have, read in chunks of 8 consecutive cells:
    # most minibatches (and so each rank's) lack one or two modalities entirely, whose expert
    # and head then get no gradient on that rank
    pattern = np.stack([mdata.obsm[m].ravel() for m in MODS], axis=1) @ [4, 2, 1]
    mdata = mdata[np.argsort(pattern, kind="stable")].copy()
    scvi.settings.seed = 0
    MosaicVI.setup_mudata(mdata, modalities=MODS, batch_key="batch")
    model = MosaicVI(mdata, n_latent=4, n_hidden=16)
    before = model.get_elbo()
    model.train(
        max_epochs=3,
        batch_size=16,
        accelerator="cpu",
        devices=2,
        strategy="ddp_notebook_find_unused_parameters_true",
        enable_progress_bar=False,
        chunk_size=8,
    )
    loss = model.history["elbo_train"].to_numpy(dtype=float).ravel()
    assert len(loss) == 3 and np.isfinite(loss).all()
    after = model.get_elbo()  # the ELBO of every cell (scvi-tools' sign: higher is better)
    assert after > before + 0.05 * abs(before)
    for mod in MODS:
        assert f"reconstruction_loss_{mod}_train" in model.history
    z = model.get_latent_representation()
    assert z.shape == (mdata.n_obs, 4) and np.isfinite(z).all()
