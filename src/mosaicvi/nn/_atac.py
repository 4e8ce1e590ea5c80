"""ATAC heads: Bernoulli accessibility with region and cell factors (PeakVI), or Poisson counts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np
import torch
from scvi.distributions import Poisson
from torch import nn
from torch.distributions import Distribution

from ._atac_likelihood import (
    INCLUSION_UNIT,
    PeakBernoulli,
    SampledPeakBernoulli,
    closed_inclusion,
    region_open_frequency,
)
from ._head import ModalityHead
from ._head_types import Covariates, HeadOutput
from ._layers import hidden_layers, log1p_input
from ._sparse import (
    nonzero_entries,
    row_sums,
)

#: ``closed_cells`` of :class:`BernoulliATACHead` for ``"auto"``
DEFAULT_CLOSED_CELLS = 0.25
#: ``closed_cells="auto"`` scores every region below this many regions (a full-width
#: decode is cheap there, and the estimate would only add variance)
MIN_SAMPLED_REGIONS = 1000


class ATACHead(ModalityHead):
    """Region accessibility: the common part of the ATAC heads, one subclass per likelihood.

    Both likelihoods decode a per-region logit ``h`` from ``z`` (``output``) and learn a
    per-region factor (``region_factors``); the per-cell context has one column. The
    registry names this class for ATAC; :meth:`variant` gives the head of the ``likelihood``
    option: :class:`BernoulliATACHead` (PeakVI, the default) or :class:`PoissonATACHead`.
    """

    n_context = 1
    #: the likelihood this head models
    likelihood: ClassVar[str] = ""
    model_arguments = {
        "atac_likelihood": ("likelihood", "bernoulli"),
        "atac_closed_cells": ("closed_cells", "auto"),
        "atac_closed_samples": ("closed_samples", None),
    }

    @classmethod
    def head_options(cls, **arguments) -> dict[str, object]:
        """``likelihood`` and the closed-region estimator (``closed_cells`` or ``closed_samples``).

        ``atac_closed_cells="auto"`` leaves the choice to the head's data (the Bernoulli
        head's ``data_options``: a quarter of the cells from 1,000 regions); ``None`` or 1
        scores every cell. ``atac_closed_samples`` replaces ``atac_closed_cells``.
        """
        options = super().head_options(**arguments)
        cls.check_choice("atac_likelihood", options["likelihood"], ("bernoulli", "poisson"))
        cells, samples = options.pop("closed_cells"), options.pop("closed_samples")
        return {**options, **_closed_options(cells, samples)}

    def __init__(self, n_features: int, n_latent: int, n_batch: int, widths, **kwargs) -> None:
        if type(self) is ATACHead:
            raise TypeError(
                "ATACHead is the base of BernoulliATACHead and PoissonATACHead: build one of "
                "those, or `ATACHead.variant(likelihood=...)`."
            )
        super().__init__(n_features, n_latent, n_batch, widths, **kwargs)
        self.output = nn.Linear(self.decoder_widths[-1], n_features)
        self.region_factors = nn.Parameter(torch.zeros(n_features))

    @classmethod
    def variant(
        cls, likelihood: Literal["bernoulli", "poisson"] | None = None, **options
    ) -> tuple[type[ModalityHead], dict]:
        """The head class of ``likelihood`` and the options it takes.

        By default the class's own likelihood (Bernoulli for :class:`ATACHead`).
        """
        heads = {"bernoulli": BernoulliATACHead, "poisson": PoissonATACHead}
        if likelihood is None:
            likelihood = cls.likelihood or "bernoulli"
        if likelihood not in heads:
            raise ValueError(
                f"The ATAC likelihood must be one of {list(heads)}, got {likelihood!r}."
            )
        return heads[likelihood], options

    def region_factor(self) -> torch.Tensor:
        """``sigmoid(region_factors)``, the learned per-region factor."""
        return torch.sigmoid(self.region_factors)

    def normalize_regions(self, values: np.ndarray) -> np.ndarray:
        """Decoded accessibility at full region depth (``get_accessibility_estimates``).

        The Bernoulli head multiplies by the region factors (the probability of observing
        the region); the Poisson head's frequencies already include them (unchanged).
        """
        if self.likelihood != "bernoulli":
            return values
        return values * self.region_factor().detach().cpu().numpy()


class BernoulliATACHead(ATACHead):
    """Binarised accessibility with region and cell factors (PeakVI).

    A region is open with probability ``p * d * f``: ``p = sigmoid(h)`` decoded from ``z``,
    ``d`` a per-cell depth factor (the context) estimated from the cell's own ATAC counts by
    a network, ``f = sigmoid(region_factors)`` a learned per-region factor; the data are
    binarised (``x > 0``). Cells without ATAC get the running mean of their batch's depth
    factor. The denoised value is ``p``.

    In training, the likelihood is estimated (:class:`SampledPeakBernoulli`): every cell's
    open regions are scored exactly, and the closed regions' term, the sum over every region
    a cell has closed, is computed exactly for a random ``closed_cells`` share of the
    minibatch's decoded cells and weighted by the inverse of that share (the default), or
    for every cell from ``closed_samples`` regions drawn for the minibatch in proportion to
    their open frequency (``region_frequency``) with importance weights. Both estimates and
    their gradients are unbiased; validation and every getter use the exact likelihood.

    Parameters
    ----------
    n_features, n_latent, n_batch, widths
        See :class:`~mosaicvi.nn.ModalityHead`; the depth-factor network has the expert's
        widths.
    closed_cells
        Share of a minibatch's decoded cells, in (0, 1], whose closed regions are scored in
        training; ``None`` or 1 scores them for every cell. ``"auto"`` (default):
        ``DEFAULT_CLOSED_CELLS`` with at least ``MIN_SAMPLED_REGIONS`` regions, every
        cell below.
    closed_samples
        Instead of ``closed_cells``: the number of regions drawn per minibatch for every
        cell's closed term; ``None`` (default) draws none. Needs ``closed_cells=None``.
    region_frequency
        Fraction of the measured cells in which each region is open, ``(n_regions,)``, the
        region draw's proposal (:meth:`data_options` computes it when ``closed_samples`` is
        given); ``None`` draws regions uniformly.
    **kwargs
        Passed to :class:`~mosaicvi.nn.ModalityHead`.
    """

    likelihood = "bernoulli"
    binarised = True

    def __init__(
        self,
        n_features: int,
        n_latent: int,
        n_batch: int,
        widths: Sequence[int],
        closed_cells: float | Literal["auto"] | None = "auto",
        closed_samples: int | None = None,
        region_frequency: np.ndarray | None = None,
        **kwargs,
    ) -> None:
        if closed_samples is not None and (
            isinstance(closed_samples, bool)
            or not isinstance(closed_samples, (int, np.integer))
            or closed_samples < 1
        ):
            raise ValueError(
                f"`closed_samples` must be None or a positive integer, got {closed_samples!r}."
            )
        if isinstance(closed_cells, str) and closed_cells == "auto":
            auto = closed_samples is None and n_features >= MIN_SAMPLED_REGIONS
            closed_cells = DEFAULT_CLOSED_CELLS if auto else None
        if closed_cells is not None and (
            isinstance(closed_cells, bool)
            or not isinstance(closed_cells, (int, float, np.integer, np.floating))
            or not 0.0 < float(closed_cells) <= 1.0
        ):
            raise ValueError(f"`closed_cells` must be None or in (0, 1], got {closed_cells!r}.")
        if closed_cells is not None and closed_samples is not None:
            raise ValueError(
                "Give one of `closed_cells` (a share of the cells, every region) and "
                "`closed_samples` (a sample of the regions, every cell), not both."
            )
        super().__init__(n_features, n_latent, n_batch, widths, **kwargs)
        self.closed_cells = None if closed_cells is None else float(closed_cells)
        self.closed_samples = None if closed_samples is None else int(closed_samples)
        self.depth_body = hidden_layers(
            n_features, self.cat_sizes, list(widths), n_wide=n_features
        )
        self.depth_output = nn.Linear(widths[-1], 1)
        if self.sampled_regions:
            inclusion = closed_inclusion(n_features, self.closed_samples, region_frequency)
            units = torch.round(inclusion * INCLUSION_UNIT).to(torch.int64)
            units[torch.argmin(units)] += self.closed_samples * INCLUSION_UNIT - units.sum()
            # integer running sum of the inclusion probabilities: an exact systematic draw
            self.register_buffer("closed_cumulative", torch.cumsum(units, 0), persistent=False)

    @classmethod
    def data_options(
        cls, counts, rows: np.ndarray, batch: np.ndarray, n_batch: int, **options
    ) -> dict[str, object]:
        """``region_frequency``, the fraction of the measured cells with each region open.

        Only when regions are drawn (``closed_samples`` below the number of regions).
        """
        k = options.get("closed_samples")
        if k is None or k >= counts.shape[1]:
            return {}
        return {"region_frequency": region_open_frequency(counts, rows)}

    @property
    def sampled_regions(self) -> bool:
        """Whether training draws regions for the closed term (``closed_samples``)."""
        return self.closed_samples is not None and self.closed_samples < self.n_features

    @property
    def sampled(self) -> bool:
        """Whether training estimates the likelihood (from some cells or some regions)."""
        cells = self.closed_cells is not None and self.closed_cells < 1.0
        return cells or self.sampled_regions

    def observed_context(self, x: torch.Tensor, covariates: Covariates) -> torch.Tensor:
        """Depth factor in (0, 1), ``(n_cells, 1)``."""
        h = self.depth_body(log1p_input(x), *covariates.cat_list)
        return torch.sigmoid(self.depth_output(h))

    def decode(
        self,
        z: torch.Tensor,
        context: torch.Tensor,
        covariates: Covariates,
        sample_local: bool = True,
    ) -> HeadOutput:
        """Distribution of the binarised data and the decoded accessibility ``p``."""
        depth = context.clamp(max=1.0 - 1e-6)
        hidden = self.hidden(z, covariates)
        if self.training and self.sampled:
            px = SampledPeakBernoulli(
                hidden,
                self.output.weight,
                self.output.bias,
                self.region_factors,
                depth,
                closed_cells=None if self.sampled_regions else self.closed_cells,
                cumulative=self.closed_cumulative if self.sampled_regions else None,
                n_draws=self.closed_samples if self.sampled_regions else 0,
            )
            return HeadOutput(px, None)  # no full-width decode of every cell in training
        p = torch.sigmoid(self.output(hidden))
        # depth < 1 - 1e-6 keeps log(1 - probs) finite without clamping cells x regions
        probs = p * (depth * self.region_factor())
        return HeadOutput(PeakBernoulli(probs=probs, validate_args=False), p)

    def log_likelihood(self, px: Distribution, x: torch.Tensor) -> torch.Tensor:
        """Log likelihood of each cell's ``x > 0`` (sparse-aware), exact or estimated."""
        return px.log_prob_cells(x)  # PeakBernoulli or SampledPeakBernoulli

    def masked_log_likelihood(
        self, px: Distribution, x: torch.Tensor, measured: torch.Tensor | None
    ) -> torch.Tensor:
        """Log likelihood of each cell's measured ``x > 0``, ``(n_cells,)``.

        Sparse-aware as :meth:`PeakBernoulli.log_prob_cells`: the closed term over the
        measured regions, the open regions' gain where measured (``x`` is 0 elsewhere).
        """
        if measured is None:
            return self.log_likelihood(px, x)
        if isinstance(px, SampledPeakBernoulli):
            return px.log_prob_cells(x, measured)
        q = px.probs
        closed = torch.log1p(-q)
        out = torch.where(measured, closed, torch.zeros_like(closed)).sum(-1)
        rows, cols, _ = nonzero_entries(x)  # x is 0 at unmeasured entries
        q_open = q[rows, cols]
        gain = torch.log(q_open).clamp(min=-100.0) - torch.log1p(-q_open)
        return out.index_add(0, rows, gain)


class PoissonATACHead(ATACHead):
    """Fragment counts: Poisson with rate ``library * softmax(h + region_factors)``.

    The context is the log library size (total counts) of the cell; cells without ATAC get
    the running mean of their batch's. The denoised value is the region frequencies.

    This head has no sampled estimator: the softmax's normaliser sums over every region,
    and the log of an estimate of that sum would be a biased estimate of the likelihood. Its
    training cost grows with the number of regions.

    Parameters
    ----------
    n_features, n_latent, n_batch, widths
        See :class:`~mosaicvi.nn.ModalityHead`.
    **kwargs
        Passed to :class:`~mosaicvi.nn.ModalityHead`.
    """

    likelihood = "poisson"

    def __init__(
        self, n_features: int, n_latent: int, n_batch: int, widths: Sequence[int], **kwargs
    ) -> None:
        for option in ("closed_cells", "closed_samples"):
            if kwargs.pop(option, None) is not None:
                raise ValueError(
                    f"`{option}` (`atac_{option}`) is for the Bernoulli ATAC likelihood; the "
                    "Poisson one scores every region (the softmax's normaliser needs them all)."
                )
        super().__init__(n_features, n_latent, n_batch, widths, **kwargs)

    def observed_context(self, x: torch.Tensor, covariates: Covariates) -> torch.Tensor:
        """Log library size, ``(n_cells, 1)``."""
        return torch.log(row_sums(x).clamp(min=1.0))

    def decode(
        self,
        z: torch.Tensor,
        context: torch.Tensor,
        covariates: Covariates,
        sample_local: bool = True,
    ) -> HeadOutput:
        """Count distribution and the decoded region frequencies."""
        h = self.output(self.hidden(z, covariates))
        scale = torch.softmax(h + self.region_factors, dim=-1)
        rate = torch.exp(context) * scale
        measured = self.batch_measured(covariates)
        if measured is not None:  # the library counts the batch's measured regions only
            rate = rate / (scale * measured).sum(-1, keepdim=True).clamp(min=1e-8)
        return HeadOutput(Poisson(rate, scale=scale), scale)


def _closed_options(cells, samples) -> dict:
    """The Bernoulli head's ``closed_cells`` / ``closed_samples`` from the model's arguments."""
    if not (
        (isinstance(cells, str) and cells == "auto")
        or cells is None
        or (
            isinstance(cells, int | float | np.integer | np.floating)
            and not isinstance(cells, bool)
            and 0.0 < float(cells) <= 1.0
        )
    ):
        raise ValueError(f"`atac_closed_cells` must be 'auto', None or in (0, 1], got {cells!r}.")
    if samples is not None and (
        not isinstance(samples, int | np.integer) or isinstance(samples, bool) or samples < 1
    ):
        raise ValueError(
            f"`atac_closed_samples` must be None or a positive integer, got {samples!r}."
        )
    if samples is not None:
        if not (isinstance(cells, str) or cells is None):
            raise ValueError(
                "Give one of `atac_closed_cells` and `atac_closed_samples`, not both."
            )
        return {"closed_cells": None, "closed_samples": int(samples)}
    if isinstance(cells, str):
        return {}
    return {"closed_cells": None if cells is None else float(cells)}
