from importlib.resources import as_file, files
from pathlib import Path

import mudata as md
import pytest
import scvi

from mosaicvi import MosaicVI
from mosaicvi.data import simulate_mosaic

ALL = {"rna": "rna", "atac": "atac", "protein": "protein"}


@pytest.fixture
def trimodal():
    """A fresh simulated trimodal mosaic (cells in all 7 subsets)."""
    return simulate_mosaic(n_cells=210, n_genes=30, n_regions=40, n_proteins=8, seed=1)


@pytest.fixture(scope="session")
def trained_trimodal():
    """One small trimodal model, trained once and shared by the getter tests."""
    scvi.settings.seed = 0
    mdata = simulate_mosaic(n_cells=350, n_genes=40, n_regions=60, n_proteins=10, seed=0)
    MosaicVI.setup_mudata(mdata, modalities=ALL, batch_key="batch")
    model = MosaicVI(mdata, n_latent=5, n_hidden=32)
    model.train(max_epochs=15, batch_size=64, enable_progress_bar=False)
    return model, mdata


@pytest.fixture(scope="session")
def pbmc_path() -> Path:
    """The real PBMC CITE-seq mosaic bundled with the package (no ``../shared`` needed)."""
    with as_file(files("mosaicvi.data") / "files" / "pbmc_cite_mosaic.h5mu") as path:
        yield Path(path)


@pytest.fixture
def pbmc(pbmc_path):
    return md.read_h5mu(pbmc_path)
