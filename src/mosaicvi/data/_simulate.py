"""A small simulated mosaic of RNA, ATAC and protein counts (no real trimodal data exists here)."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
from anndata import AnnData
from mudata import MuData
from scipy import sparse

from mosaicvi._constants import MODALITIES


def simulate_mosaic(
    n_cells: int = 700,
    n_genes: int = 100,
    n_regions: int = 200,
    n_proteins: int = 20,
    n_cell_types: int = 3,
    n_batches: int = 2,
    seed: int = 0,
) -> MuData:
    """Simulate an unpadded trimodal mosaic with cells in every non-empty subset of modalities.

    Cell types shift the means of all three modalities; batches scale them. RNA counts are
    negative binomial, ATAC counts Poisson with low rates (mostly 0/1), protein counts a
    background plus a type-specific foreground. Cells are assigned in turn to the 7 non-empty
    subsets of {rna, atac, protein}; each modality's AnnData holds only its cells.

    Parameters
    ----------
    n_cells
        Number of cells.
    n_genes, n_regions, n_proteins
        Number of features of each modality.
    n_cell_types
        Number of cell types (``mdata.obs["cell_type"]``).
    n_batches
        Number of batches (``mdata.obs["batch"]``).
    seed
        Random seed.

    Returns
    -------
    MuData with modalities ``rna``, ``atac``, ``protein`` and ``obs`` columns ``batch``,
    ``cell_type`` and ``subset`` (e.g. ``"rna+protein"``).
    """
    rng = np.random.default_rng(seed)
    cell_type = rng.integers(n_cell_types, size=n_cells)
    batch = rng.integers(n_batches, size=n_cells)
    subsets = [c for k in (1, 2, 3) for c in combinations(MODALITIES, k)]
    subset = [subsets[i % len(subsets)] for i in range(n_cells)]
    obs_names = np.array([f"cell{i}" for i in range(n_cells)])

    def means(n_features: int, base: float, spread: float) -> np.ndarray:
        type_effect = rng.normal(0.0, spread, size=(n_cell_types, n_features))
        batch_effect = rng.normal(0.0, 0.2, size=(n_batches, n_features))
        return base * np.exp(type_effect[cell_type] + batch_effect[batch])

    rna_mu = means(n_genes, 1.0, 1.0) * rng.lognormal(0.0, 0.3, size=(n_cells, 1))
    theta = 5.0
    rna = rng.poisson(rng.gamma(theta, rna_mu / theta))
    atac = rng.poisson(means(n_regions, 0.1, 1.5))
    background = rng.lognormal(2.0, 0.3, size=(n_batches, n_proteins))[batch]
    foreground = rng.choice([0.0, 5.0], size=(n_cell_types, n_proteins))[cell_type]
    protein = rng.poisson(rng.gamma(10.0, background * (1 + foreground) / 10.0))

    mods = {}
    for name, counts in (("rna", rna), ("atac", atac), ("protein", protein)):
        keep = np.array([name in s for s in subset])
        prefix = {"rna": "gene", "atac": "region", "protein": "protein"}[name]
        mods[name] = AnnData(
            X=sparse.csr_matrix(counts[keep].astype(np.float32)),
            obs=pd.DataFrame(index=obs_names[keep]),
            var=pd.DataFrame(index=[f"{prefix}{j}" for j in range(counts.shape[1])]),
        )
    mdata = MuData(mods)
    obs = pd.DataFrame(
        {
            "batch": pd.Categorical([f"batch{b}" for b in batch]),
            "cell_type": pd.Categorical([f"type{t}" for t in cell_type]),
            "subset": ["+".join(s) for s in subset],
        },
        index=obs_names,
    )
    mdata.obs = obs.loc[mdata.obs_names]
    return mdata
