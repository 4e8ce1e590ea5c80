"""Lightning DDP on mosaic data: two CPU processes (gloo), minibatches lacking modalities."""

import json

import numpy as np
import pytest
import scvi
from lightning.pytorch.callbacks import Callback

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


class RecordCells(Callback):
    """Writes, per rank, the cell ids (a continuous covariate) of every minibatch it ran."""

    def __init__(self, directory) -> None:
        self.directory = directory
        self.seen = {"train": {}, "validation": {}}

    def _record(self, trainer, batch, kind) -> None:
        ids = batch["extra_continuous_covs"][:, 0].round().long().tolist()
        self.seen[kind].setdefault(str(trainer.current_epoch), []).extend(ids)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._record(trainer, batch, "train")

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, *args) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, batch, "validation")

    def on_fit_end(self, trainer, pl_module) -> None:
        splitter = trainer.datamodule  # the split each rank made (same seed, same split)
        split = {"train": splitter.train_idx.tolist(), "validation": splitter.val_idx.tolist()}
        path = self.directory / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps({**self.seen, "split": split}))


@pytest.mark.parametrize(
    "loader",
    [{}, {"chunk_size": 8}, {"data_on_device": True}],
    ids=["default", "chunked", "on_device"],
)
def test_ddp_sees_every_training_and_validation_cell_once_per_epoch(tmp_path, loader):
    """Counts the cells each of 2 ranks ran: together, every training cell once per epoch.

    Before issue 24, with ``chunk_size`` each rank ran 1/2 of its share (Lightning split the
    already split minibatches again), and the default loader repeated cells to even out the
    ranks.
    """
    mdata = simulate_mosaic(n_cells=203, n_genes=20, n_regions=30, n_proteins=6, seed=2)
    mdata.obs["cell_id"] = np.arange(mdata.n_obs, dtype=float)
    scvi.settings.seed = 0
    MosaicVI.setup_mudata(
        mdata, modalities=MODS, batch_key="batch", continuous_covariate_keys=["cell_id"]
    )
    model = MosaicVI(mdata, n_latent=4, n_hidden=16)
    model.train(
        max_epochs=2,
        batch_size=16,
        accelerator="cpu",
        devices=2,
        strategy="ddp_notebook_find_unused_parameters_true",
        enable_progress_bar=False,
        check_val_every_n_epoch=1,
        callbacks=[RecordCells(tmp_path)],
        **loader,
    )
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["split"] == ranks[1]["split"]
    for kind, expected in ranks[0]["split"].items():
        assert len(expected) > 0
        for epoch in ("0", "1"):
            per_rank = [rank[kind][epoch] for rank in ranks]
            assert all(per_rank), f"{kind}, epoch {epoch}: a rank ran no cell"
            seen = sorted(per_rank[0] + per_rank[1])
            assert seen == sorted(expected), f"{kind}, epoch {epoch}"
