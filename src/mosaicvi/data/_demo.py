"""The bundled real demo data set."""

from __future__ import annotations

from importlib.resources import as_file, files

import mudata
from mudata import MuData


def load_pbmc_cite_mosaic() -> MuData:
    """A real mosaic of human PBMC CITE-seq: 1,600 cells, 500 genes, 224 proteins.

    Four donors (``mdata.obs["batch"]``): ``p1_0`` RNA only, ``p2_0`` protein only, ``p3_0``
    and ``p4_0`` both; 8 cell types in ``mdata.obs["celltype"]``. Not padded: each modality's
    AnnData holds only its cells. Raw integer counts.

    Provenance: Hao et al. 2021 (Cell), the 1,600-cell subset shipped as
    ``scmidas/data/quickstart_pbmc_mosaic.h5mu`` in the MIT-licensed ``scmidas`` 0.3.0 wheel;
    see ``mosaicvi/data/files/PROVENANCE.md``. Read from the installed package, never
    downloaded.

    Returns
    -------
    A new MuData with modalities ``rna`` and ``protein``.
    """
    resource = files("mosaicvi.data") / "files" / "pbmc_cite_mosaic.h5mu"
    with as_file(resource) as path:
        return mudata.read_h5mu(path)
