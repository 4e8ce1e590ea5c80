"""What every modality head has: its expert, its per-cell context, its decoder and likelihood.

A :class:`ModalityHead` holds everything one modality needs, so that the multimodal VAE
(:class:`~mosaicvi.module.MosaicVAE`) loops over heads and never names a modality:

- its **expert**, a :class:`~mosaicvi.nn.ModalityExpert` giving ``q_m(z | x_m)``;
- its per-cell **context** (:meth:`ModalityHead.context`): what the decoder needs of the cell
  beyond ``z`` and the covariates, such as the library size. Measured cells get their own
  (:meth:`ModalityHead.observed_context`); a cell without the modality gets a *plug-in*, the
  running mean of the observed context of its batch, learned in training like batch norm's
  running statistics (batches that never measured the modality get the mean over the others);
- its **decoder and likelihood** (:meth:`ModalityHead.decode`), returning a
  :class:`torch.distributions.Distribution` of the counts and the denoised value;
- its per-cell **log likelihood** (:meth:`ModalityHead.log_likelihood`);
- any **extra KL** term of its own per-cell latent variables (:meth:`ModalityHead.kl`).

Heads are found by data type in :data:`HEADS`; a new modality is one new file with a head
class, added to that registry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.distributions import Distribution

from ._encoder import ModalityExpert
from ._head_types import Covariates, HeadOutput
from ._layers import hidden_layers
from ._sparse import dense, finite_entries, mask_entries, take_rows


class ModalityHead(nn.Module):
    """Base class of the modality heads: expert, context, decoder, likelihood, extra KL.

    Every head has an expert (``expert``) and the hidden layers of a decoder
    (``body``, covariates injected in every layer; :meth:`hidden` runs them). Subclasses
    set ``n_context`` (columns of the per-cell context) and, if they have their own
    per-cell latent variables, ``local_kl``; add their output layers on
    ``decoder_widths[-1]`` hidden units; and implement :meth:`decode` and, for a non-empty
    context, :meth:`observed_context`.

    Parameters
    ----------
    n_features
        Number of features of the modality.
    n_latent
        Dimension of the latent space.
    n_batch
        Number of batches.
    widths
        Widths of the expert's hidden layers, from the input inwards; decoders use them in
        reverse order.
    n_cats_per_cov
        Number of categories of each further categorical covariate.
    n_continuous_cov
        Number of continuous covariates (appended to ``z`` for the decoder).
    encode_covariates
        Whether the expert sees batch and covariates.
    dropout_rate
        Dropout rate of the expert.
    corruption_rate
        Denoising training: probability of zeroing each input count of the expert.
    encoder_input
        ``"counts"`` or ``"normalized"`` (:class:`~mosaicvi.nn.ModalityExpert`).
    context_momentum
        Weight of a minibatch in the running mean of the plug-in context, once
        ``1 / context_momentum`` minibatches of a batch have been seen (before that, the
        plain mean of the minibatches so far).
    feature_mask
        Boolean ``(n_batch, n_features)``: whether each batch measured each feature
        (``mosaicvi.data._features``); ``None``: every batch measured every feature.
    nan_entries
        Whether the counts may hold NaN, marking single entries unmeasured.

    Notes
    -----
    Features a cell's batch did not measure (and NaN entries) are **unmeasured entries**
    (:meth:`measured_entries`): they are set to 0 and left out of the likelihood
    (:meth:`masked_log_likelihood`), and the expert reads the measured ones rescaled to the
    full width (:class:`~mosaicvi.nn.ModalityExpert`). The decoder predicts every feature.
    """

    #: number of columns of the per-cell context
    n_context: ClassVar[int] = 0
    #: name of the extra KL term of the head's own latent variables (``kl_<modality>_<name>``
    #: in the loss), or ``None``
    local_kl: ClassVar[str | None] = None

    def __init__(
        self,
        n_features: int,
        n_latent: int,
        n_batch: int,
        widths: Sequence[int],
        n_cats_per_cov: Sequence[int] = (),
        n_continuous_cov: int = 0,
        encode_covariates: bool = False,
        dropout_rate: float = 0.1,
        corruption_rate: float = 0.0,
        encoder_input: str = "counts",
        context_momentum: float = 0.01,
        feature_mask=None,
        nan_entries: bool = False,
    ) -> None:
        super().__init__()
        self.n_features = n_features
        self.n_batch = n_batch
        self.encode_covariates = encode_covariates
        self.context_momentum = context_momentum
        #: categories of batch and of each categorical covariate (decoder inputs)
        self.cat_sizes = [n_batch, *n_cats_per_cov]
        #: ``z`` and the continuous covariates
        self.n_decoder_input = n_latent + n_continuous_cov
        #: hidden-layer widths of the decoder, from ``z`` outwards
        self.decoder_widths = list(widths)[::-1]
        self.expert = ModalityExpert(
            n_features,
            n_latent,
            widths,
            n_cat_list=self.cat_sizes if encode_covariates else None,
            n_continuous=n_continuous_cov if encode_covariates else 0,
            dropout_rate=dropout_rate,
            corruption_rate=corruption_rate,
            encoder_input=encoder_input,
        )
        self.body = hidden_layers(self.n_decoder_input, self.cat_sizes, self.decoder_widths)
        self.register_buffer("plugin_context", torch.zeros(n_batch, self.n_context))
        self.register_buffer("plugin_updates", torch.zeros(n_batch))
        mask = None if feature_mask is None else torch.as_tensor(feature_mask, dtype=torch.bool)
        if mask is not None and tuple(mask.shape) != (n_batch, n_features):
            raise ValueError(
                f"`feature_mask` must have shape (n_batch, n_features) = ({n_batch}, "
                f"{n_features}), got {tuple(mask.shape)}."
            )
        if mask is not None and bool(mask.all()):
            mask = None
        # derived from the data registry (not saved in the state dict)
        self.register_buffer("feature_mask", mask, persistent=False)
        self.nan_entries = bool(nan_entries)

    @property
    def masks_entries(self) -> bool:
        """Whether some entries of this modality are unmeasured (a batch's panel, or NaN)."""
        return self.feature_mask is not None or self.nan_entries

    def batch_measured(self, covariates: Covariates) -> torch.Tensor | None:
        """Whether each cell's batch measured each feature, ``(n_cells, n_features)``, or ``None``."""
        if self.feature_mask is None:
            return None
        return self.feature_mask[covariates.batch.view(-1).long()]

    def measured_entries(
        self, x: torch.Tensor, covariates: Covariates
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``x`` with its unmeasured entries set to 0, and which entries are measured.

        The mask is ``None`` when every entry is measured (``x`` is then returned as is).
        """
        keep = None
        if self.nan_entries:
            x, keep = finite_entries(x)
        by_batch = self.batch_measured(covariates)
        if by_batch is not None:
            keep = by_batch if keep is None else keep & by_batch
            x = mask_entries(x, keep)  # a user's mask may cover features with counts
        return x, keep

    #: Whether the head models binarised counts (``x > 0``): intervals and calibration
    #: compare ``x > 0`` with its draws.
    binarised: ClassVar[bool] = False

    #: The keyword arguments of :class:`~mosaicvi.MosaicVI` this head reads: each model
    #: argument's name mapped to the head's option it sets and that option's default. The
    #: model routes them here by data type (:meth:`head_options`) and names none itself.
    model_arguments: ClassVar[dict[str, tuple[str, object]]] = {}

    @classmethod
    def head_options(cls, **arguments) -> dict[str, object]:
        """The head's options from the model arguments it reads (``model_arguments``), checked.

        An argument left out takes its default. Subclasses check the values (with the model
        argument's name in the error) and may translate them.
        """
        unknown = set(arguments) - set(cls.model_arguments)
        if unknown:
            raise TypeError(f"{cls.__name__} reads no argument {sorted(unknown)}.")
        return {
            option: arguments.get(name, default)
            for name, (option, default) in cls.model_arguments.items()
        }

    @staticmethod
    def check_choice(argument: str, value, allowed: Sequence) -> None:
        """Raise a ``ValueError`` naming ``argument`` unless ``value`` is in ``allowed``."""
        if not isinstance(value, str) or value not in allowed:
            raise ValueError(f"`{argument}` must be one of {list(allowed)}, got {value!r}.")

    @classmethod
    def variant(cls, **options) -> tuple[type[ModalityHead], dict]:
        """The head class that models ``options``, and the options it takes.

        A data type is registered with one class (:data:`~mosaicvi.nn.HEADS`); a class with
        one subclass per likelihood (:class:`~mosaicvi.nn.ATACHead`) picks it here. By
        default, the class itself with every option.
        """
        return cls, options

    @classmethod
    def data_options(
        cls, counts, rows: np.ndarray, batch: np.ndarray, n_batch: int, **options
    ) -> dict[str, object]:
        """Options of the head estimated from the training data (none by default).

        Parameters
        ----------
        counts
            The modality's count matrix, as stored (sparse or dense; not to be modified).
        rows
            Rows of ``counts`` of the cells measured in the modality.
        batch
            Batch code of each of those cells.
        n_batch
            Number of batches.
        **options
            The head's other options (e.g. its likelihood).
        """
        return {}

    # ------------------------------------------------------------------ expert
    def encode(
        self,
        x: torch.Tensor,
        present: torch.Tensor,
        covariates: Covariates,
        measured: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The expert's mean and variance for every cell (0 and 1 where ``present`` is False).

        ``measured`` (:meth:`measured_entries`): which entries of ``x`` were measured.
        """
        if self.encode_covariates:
            return self.expert(
                x, present, covariates.continuous, covariates.cat_list, measured=measured
            )
        return self.expert(x, present, measured=measured)

    # ----------------------------------------------------------------- context
    def observed_context(self, x: torch.Tensor, covariates: Covariates) -> torch.Tensor:
        """Context of cells that have the modality, from their counts ``x``."""
        return torch.zeros(x.shape[0], self.n_context, dtype=x.dtype, device=x.device)

    def context(
        self, x: torch.Tensor, present: torch.Tensor, covariates: Covariates
    ) -> torch.Tensor:
        """Per-cell context, ``(n_cells, n_context)``: observed, or the plug-in of the batch.

        In training, the observed context of each batch updates its running plug-in.
        """
        context = self.plugin(covariates.batch)
        if self.n_context == 0:
            return context
        idx = present.nonzero(as_tuple=True)[0]
        if idx.numel() == 0:
            return context
        observed = self.observed_context(take_rows(x, idx), covariates.take(idx))
        if self.training:
            self._update_plugin(observed.detach(), covariates.batch[idx])
        return context.index_copy(0, idx, observed.to(context.dtype))

    def plugin(self, batch: torch.Tensor) -> torch.Tensor:
        """Plug-in context of cells without the modality, by batch, ``(n_cells, n_context)``."""
        # no data-dependent branch or shape: no device-to-host synchronisation on a GPU
        seen = (self.plugin_updates > 0)[:, None]
        n_seen = seen.sum().clamp(min=1)
        fallback = torch.where(seen, self.plugin_context, 0.0).sum(0, keepdim=True) / n_seen
        table = torch.where(seen, self.plugin_context, fallback)
        return table[batch.view(-1).long()]

    @torch.no_grad()
    def pin_plugin(self, n_batch: int) -> None:
        """Fix the plug-in of those of the first ``n_batch`` batches that never had the modality.

        Such a batch's plug-in is the average over the batches seen so far (:meth:`plugin`),
        which would move as new batches are seen. Pinning stores that average as the batch's
        own (counted as one update), so that it no longer changes: a query mapped onto a
        reference (:meth:`~mosaicvi.MosaicVI.load_query_data`) leaves the reference's cells
        exactly as they were.
        """
        unseen = self.plugin_updates[:n_batch] == 0
        if not unseen.any() or not (self.plugin_updates > 0).any():
            return
        fallback = self.plugin(torch.nonzero(unseen).view(-1).to(self.plugin_updates.device))
        self.plugin_context[:n_batch][unseen] = fallback
        self.plugin_updates[:n_batch][unseen] = 1.0

    @torch.no_grad()
    def _update_plugin(self, observed: torch.Tensor, batch: torch.Tensor) -> None:
        codes = batch.view(-1).long()
        counts = observed.new_zeros(self.n_batch).index_add(
            0, codes, observed.new_ones(codes.shape[0])
        )
        sums = observed.new_zeros(self.n_batch, self.n_context).index_add(0, codes, observed)
        seen = counts > 0
        self.plugin_updates += seen.to(self.plugin_updates.dtype)
        rate = self.plugin_updates.reciprocal().clamp(min=self.context_momentum)
        rate = torch.where(seen, rate, torch.zeros_like(rate))[:, None]
        means = sums / counts.clamp(min=1.0)[:, None]
        self.plugin_context += rate * (means - self.plugin_context)

    # ----------------------------------------------------------------- decoder
    def hidden(self, z: torch.Tensor, covariates: Covariates) -> torch.Tensor:
        """The decoder's hidden layers on ``z`` (with the continuous covariates appended)."""
        if covariates.continuous is not None:
            z = torch.cat([z, covariates.continuous], dim=-1)
        return self.body(z, *covariates.cat_list)

    def decode(
        self,
        z: torch.Tensor,
        context: torch.Tensor,
        covariates: Covariates,
        sample_local: bool = True,
    ) -> HeadOutput:
        """Distribution of the counts and denoised value of each cell, given ``z``.

        Parameters
        ----------
        z
            Latent samples, ``(n_cells, n_latent)``.
        context
            The cells' context (:meth:`context`).
        covariates
            The cells' covariates.
        sample_local
            Draw the head's own latent variables (training); otherwise use their means.
        """
        raise NotImplementedError

    def log_likelihood(self, px: Distribution, x: torch.Tensor) -> torch.Tensor:
        """Log likelihood of each cell's counts ``x`` (dense or sparse CSR) under ``px``, ``(n_cells,)``."""
        return px.log_prob(dense(x)).sum(-1)

    def entry_log_likelihood(self, px: Distribution, x: torch.Tensor) -> torch.Tensor:
        """Log likelihood of each entry of ``x``, ``(n_cells, n_features)``."""
        return px.log_prob(dense(x))

    def masked_log_likelihood(
        self, px: Distribution, x: torch.Tensor, measured: torch.Tensor | None
    ) -> torch.Tensor:
        """Log likelihood of each cell's measured entries, ``(n_cells,)``.

        ``measured`` ``None``: every entry (:meth:`log_likelihood`); otherwise the entries
        where it is True (the others add exactly 0, and no gradient).
        """
        if measured is None:
            return self.log_likelihood(px, x)
        entries = self.entry_log_likelihood(px, x)
        return torch.where(measured, entries, torch.zeros_like(entries)).sum(-1)

    def kl(self, local: Distribution | None, covariates: Covariates) -> torch.Tensor:
        """KL of the head's own latent variables from their prior, per cell (``local_kl``)."""
        raise NotImplementedError
