"""What a modality head receives and returns: a minibatch's covariates, a decoding."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.distributions import Distribution

from mosaicvi._constants import REGISTRY_KEYS


class Covariates(NamedTuple):
    """Per-cell covariates of a minibatch, as every head receives them.

    A named tuple of tensors, so that :func:`scvi.module.base.auto_move_data` moves it.

    Parameters
    ----------
    batch
        Batch code of each cell, ``(n_cells, 1)``.
    categorical
        Codes of each further categorical covariate, each ``(n_cells, 1)``.
    continuous
        Continuous covariates, ``(n_cells, n_continuous)``, or ``None``.
    """

    batch: torch.Tensor
    categorical: tuple[torch.Tensor, ...] = ()
    continuous: torch.Tensor | None = None

    @classmethod
    def from_tensors(cls, tensors: dict) -> Covariates:
        """The covariates of a minibatch from the data loader."""
        cat = tensors.get(REGISTRY_KEYS.CAT_COVS)
        return cls(
            batch=tensors[REGISTRY_KEYS.BATCH],
            categorical=() if cat is None else tuple(torch.split(cat, 1, dim=1)),
            continuous=tensors.get(REGISTRY_KEYS.CONT_COVS),
        )

    @property
    def cat_list(self) -> tuple[torch.Tensor, ...]:
        """Batch first, then the categorical covariates (as :class:`scvi.nn.FCLayers` takes)."""
        return (self.batch, *self.categorical)

    def take(self, rows: torch.Tensor) -> Covariates:
        """The covariates of the cells ``rows``."""
        cont = None if self.continuous is None else self.continuous[rows]
        return Covariates(self.batch[rows], tuple(c[rows] for c in self.categorical), cont)

    def with_batch(self, batch: torch.Tensor) -> Covariates:
        """The same cells as if they were in batch ``batch`` (``(n_cells, 1)`` codes)."""
        return Covariates(batch, self.categorical, self.continuous)


class HeadOutput(NamedTuple):
    """What a head's decoder returns for some cells."""

    #: distribution of the counts, one row per cell
    px: Distribution
    #: denoised value (normalised expression, accessibility, foreground protein …)
    denoised: torch.Tensor
    #: the head's own per-cell latent variables (e.g. the protein background), or ``None``
    local: Distribution | None = None
