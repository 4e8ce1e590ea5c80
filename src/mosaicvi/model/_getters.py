"""Latents given any modalities and the imputed values of every modality, for every cell."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from mudata import MuData

from mosaicvi._constants import MODULE_KEYS


class MosaicGetterMixin:
    """``get_latent_representation`` and the denoised values of each modality."""

    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        given: Sequence[str] | None = None,
        give_mean: bool = True,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Latent representation of each cell.

        To use it with scanpy / muon: ``mdata.obsm["X_mosaicvi"] = model.get_latent_representation()``
        then ``sc.pp.neighbors(mdata, use_rep="X_mosaicvi")``.

        Parameters
        ----------
        adata
            MuData set up like the training data; the training data if ``None``.
        indices
            Cells to use; all if ``None``.
        given
            ``None``: the joint posterior from every modality each cell has. A list such as
            ``["rna"]``: the posterior from only those modalities (each cell must have at
            least one of them).
        give_mean
            Return the posterior mean; otherwise one sample.
        batch_size
            Minibatch size for inference.

        Returns
        -------
        ``(n_cells, n_latent)`` array.
        """
        self._check_if_trained(warn=False)
        _, _, given, loader = self._prepare(adata, indices, given, batch_size)
        module = self.module
        module.eval()
        latents = []
        for tensors in loader:
            qz = module.posterior(tensors, given)[MODULE_KEYS.QZ]
            latents.append((qz.loc if give_mean else qz.sample()).cpu().numpy())
        return np.concatenate(latents)

    def get_normalized_expression(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        given: Sequence[str] | None = None,
        transform_batch: str | Sequence[str] | None = None,
        gene_list: Sequence[str] | None = None,
        library_size: float = 1.0,
        n_samples: int = 1,
        batch_size: int | None = None,
        return_numpy: bool = False,
    ) -> pd.DataFrame | np.ndarray:
        """Denoised, normalised gene expression for every cell, measured in RNA or not.

        Parameters
        ----------
        adata, indices, given, batch_size
            As in :meth:`get_latent_representation`.
        transform_batch
            Decode as if cells were in this batch (or the average over these batches). By
            default a cell's own batch, or all batches with RNA if its own has none.
        gene_list
            Return only these genes.
        library_size
            Scale of the output: 1 gives frequencies, 1e4 counts per 10k.
        n_samples
            Latent samples to average; 1 uses the posterior mean.
        return_numpy
            Return an array instead of a DataFrame.

        Returns
        -------
        ``(n_cells, n_genes)`` DataFrame (cells by genes) or array.
        """
        self._check_if_trained(warn=False)
        values, names = self._denoised(
            "rna", adata, indices, given, transform_batch, n_samples, batch_size
        )
        return self._frame(values * library_size, names, "rna", gene_list, return_numpy)

    def get_accessibility_estimates(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        given: Sequence[str] | None = None,
        transform_batch: str | Sequence[str] | None = None,
        region_list: Sequence[str] | None = None,
        normalize_regions: bool = False,
        n_samples: int = 1,
        batch_size: int | None = None,
        return_numpy: bool = False,
    ) -> pd.DataFrame | np.ndarray:
        """Probability that each region is accessible (Bernoulli) or its frequency (Poisson).

        Parameters
        ----------
        adata, indices, given, transform_batch, n_samples, batch_size, return_numpy
            As in :meth:`get_normalized_expression`.
        region_list
            Return only these regions.
        normalize_regions
            Multiply by the learned region factors (Bernoulli likelihood only), giving the
            probability of observing the region at full cell depth.

        Returns
        -------
        ``(n_cells, n_regions)`` DataFrame or array.
        """
        self._check_if_trained(warn=False)
        values, names = self._denoised(
            "atac", adata, indices, given, transform_batch, n_samples, batch_size
        )
        if normalize_regions:
            values = self.module.heads["atac"].normalize_regions(values)
        return self._frame(values, names, "atac", region_list, return_numpy)

    def get_protein_expression(
        self,
        adata: MuData | None = None,
        indices: Sequence[int] | None = None,
        given: Sequence[str] | None = None,
        transform_batch: str | Sequence[str] | None = None,
        protein_list: Sequence[str] | None = None,
        include_background: bool = False,
        n_samples: int = 1,
        batch_size: int | None = None,
        return_numpy: bool = False,
    ) -> pd.DataFrame | np.ndarray:
        """Denoised protein (the foreground part of totalVI's mixture), in counts.

        Defined for every cell, including cells without protein data (imputation).

        Parameters
        ----------
        adata, indices, given, transform_batch, n_samples, batch_size, return_numpy
            As in :meth:`get_normalized_expression`.
        protein_list
            Return only these proteins.
        include_background
            Return the expected count including the background component (totalVI's
            ``include_protein_background``), i.e. the mixture mean, instead of the foreground.

        Returns
        -------
        ``(n_cells, n_proteins)`` DataFrame or array.
        """
        self._check_if_trained(warn=False)
        values, names = self._denoised(
            "protein",
            adata,
            indices,
            given,
            transform_batch,
            n_samples,
            batch_size,
            include_background,
        )
        return self._frame(values, names, "protein", protein_list, return_numpy)
