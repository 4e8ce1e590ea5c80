"""Per-modality encoders: each gives a Gaussian expert q_m(z | x_m) for the cells that have m."""

from __future__ import annotations

import torch
from scvi.nn import Encoder
from torch import nn

from ._layers import fc_layers_forward, log1p_input


class ModalityExpert(nn.Module):
    """Gaussian expert of one modality, run only on the cells that have it.

    The input is ``log1p`` of the counts, concatenated with continuous covariates; categorical
    covariates are injected when given. A wide, mostly-zero input (ATAC, RNA) stays sparse
    through the first layer, which then multiplies only its non-zero entries. Layer norm (not
    batch norm) keeps cells independent, so a cell's absent modality cannot influence any
    other cell.

    Parameters
    ----------
    n_input
        Number of features of the modality.
    n_latent
        Dimension of the latent space.
    n_hidden
        Width of the hidden layers.
    n_layers
        Number of hidden layers.
    n_cat_list
        Number of categories of each categorical covariate given to the encoder.
    n_continuous
        Number of continuous covariates appended to the input.
    dropout_rate
        Dropout rate of the hidden layers.
    """

    def __init__(
        self,
        n_input: int,
        n_latent: int,
        n_hidden: int,
        n_layers: int,
        n_cat_list: list[int] | None = None,
        n_continuous: int = 0,
        dropout_rate: float = 0.1,
    ) -> None:
        super().__init__()
        self.n_latent = n_latent
        self.encoder = Encoder(
            n_input + n_continuous,
            n_latent,
            n_cat_list=n_cat_list,
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
            use_batch_norm=False,
            use_layer_norm=True,
            var_eps=1e-4,
        )

    def forward(
        self,
        x: torch.Tensor,
        present: torch.Tensor,
        cont: torch.Tensor | None = None,
        cat_list: tuple[torch.Tensor, ...] = (),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Expert mean and variance, ``(n_cells, n_latent)``; 0 and 1 where ``present`` is False."""
        n = x.shape[0]
        mu = x.new_zeros(n, self.n_latent)
        var = x.new_ones(n, self.n_latent)
        idx = present.nonzero(as_tuple=True)[0]
        if idx.numel() == 0:
            return mu, var
        enc = self.encoder
        h = fc_layers_forward(
            enc.encoder,
            log1p_input(x[idx]),
            *(c[idx] for c in cat_list),
            dense_tail=None if cont is None else cont[idx],
        )
        q_m = enc.mean_encoder(h)
        q_v = enc.var_activation(enc.var_encoder(h)) + enc.var_eps
        return mu.index_copy(0, idx, q_m), var.index_copy(0, idx, q_v)
