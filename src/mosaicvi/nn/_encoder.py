"""Per-modality encoders: each gives a Gaussian expert q_m(z | x_m) for the cells that have m."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._layers import corrupt_counts, hidden_layers, log1p_input, normalize_rows
from ._sparse import scale_rows, take_rows


class ModalityExpert(nn.Module):
    """Gaussian expert of one modality, run only on the cells that have it.

    The input is ``log1p`` of the counts (or of the counts scaled to 10,000 per cell, with
    ``encoder_input="normalized"``), concatenated with continuous covariates; categorical
    covariates are injected in every layer when given. A wide, mostly-zero input (ATAC, RNA)
    stays sparse through the first layer, which then multiplies only its non-zero entries.
    Layer norm (not batch norm) keeps cells independent, so a cell's absent modality cannot
    influence any other cell.

    Parameters
    ----------
    n_input
        Number of features of the modality.
    n_latent
        Dimension of the latent space.
    widths
        Width of each hidden layer, e.g. ``[128, 128]`` or ``[1300, 900]``.
    n_cat_list
        Number of categories of each categorical covariate given to the encoder.
    n_continuous
        Number of continuous covariates appended to the input.
    dropout_rate
        Dropout rate of the hidden layers.
    corruption_rate
        Denoising training: in training mode, each input count is set to 0 with this
        probability (:func:`~mosaicvi.nn.corrupt_counts`) before encoding.
    encoder_input
        ``"counts"``: ``log1p`` of the counts, as scVI; ``"normalized"``: ``log1p`` of the
        counts scaled to sum to 10,000 in each cell, so that the expert does not see the
        cell's depth.
    var_eps
        Minimum variance of the expert.
    """

    def __init__(
        self,
        n_input: int,
        n_latent: int,
        widths: Sequence[int],
        n_cat_list: list[int] | None = None,
        n_continuous: int = 0,
        dropout_rate: float = 0.1,
        corruption_rate: float = 0.0,
        encoder_input: str = "counts",
        var_eps: float = 1e-4,
    ) -> None:
        super().__init__()
        if not 0.0 <= corruption_rate < 1.0:
            raise ValueError(f"`corruption_rate` must be in [0, 1), got {corruption_rate!r}.")
        if encoder_input not in ("counts", "normalized"):
            raise ValueError(
                f"`encoder_input` must be 'counts' or 'normalized', got {encoder_input!r}."
            )
        self.normalize_input = encoder_input == "normalized"
        self.n_latent = n_latent
        self.corruption_rate = corruption_rate
        self.var_eps = var_eps
        self.body = hidden_layers(
            n_input + n_continuous, n_cat_list or [], widths, dropout_rate, n_wide=n_input
        )
        self.mean_encoder = nn.Linear(widths[-1], n_latent)
        self.var_encoder = nn.Linear(widths[-1], n_latent)

    def forward(
        self,
        x: torch.Tensor,
        present: torch.Tensor,
        cont: torch.Tensor | None = None,
        cat_list: tuple[torch.Tensor, ...] = (),
        measured: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert mean and variance, ``(n_cells, n_latent)``; 0 and 1 where ``present`` is False.

        ``measured``: boolean ``(n_cells, n_features)``, which entries of ``x`` were measured
        (unmeasured ones are 0 in ``x``). The first layer then reads each cell's measured
        inputs scaled by ``n_features / n_measured``, as inverted dropout does, so that a
        cell measured in half of the panel is not read as a cell with half of the signal
        (``encoder_input="normalized"`` already scales the measured inputs to 10,000).
        """
        n = x.shape[0]
        mu = torch.zeros(n, self.n_latent, dtype=x.dtype, device=x.device)  # x may be sparse
        var = torch.ones_like(mu)
        idx = present.nonzero(as_tuple=True)[0]
        if idx.numel() == 0:
            return mu, var
        counts = take_rows(x, idx)
        if self.training:
            counts = corrupt_counts(counts, self.corruption_rate)
        if self.normalize_input:
            counts = normalize_rows(counts)
        inputs = log1p_input(counts)
        if measured is not None and not self.normalize_input:  # normalised: already scaled
            n_measured = measured[idx].sum(-1).clamp(min=1)
            inputs = scale_rows(inputs, counts.shape[1] / n_measured)
        h = self.body(
            inputs,
            *(c[idx] for c in cat_list),
            dense_tail=None if cont is None else cont[idx],
        )
        q_m = self.mean_encoder(h)
        q_v = torch.exp(self.var_encoder(h)) + self.var_eps
        return mu.index_copy(0, idx, q_m), var.index_copy(0, idx, q_v)
