"""Hidden layers shared by the encoders and decoders, with a sparse-input path."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from scvi.nn import FCLayers
from torch import nn

from mosaicvi._checks import check_int

from ._sparse import (
    csr_tensor,
    entry_rows,
    full_precision,
    map_values,
    row_sums,
    sparse_input_matmul,
)

#: Inputs at least this wide and at most this dense go through the sparse first layer.
SPARSE_MIN_FEATURES = 1000
SPARSE_MAX_DENSITY = 0.1


def layer_widths(n_hidden: int | Sequence[int], n_layers: int | None = None) -> list[int]:
    """Widths of the hidden layers from ``n_hidden`` (an int or a list) and ``n_layers``.

    An int gives ``n_layers`` layers of that width (2 when ``n_layers`` is ``None``); a list
    such as ``[1300, 900]`` gives one layer per entry (Maui-style stacked layers), and
    ``n_layers`` must then be ``None`` or its length.
    """
    if n_layers is not None:
        check_int("n_layers", n_layers, minimum=1)
    if isinstance(n_hidden, int | np.integer) and not isinstance(n_hidden, bool):
        widths = [n_hidden] * (2 if n_layers is None else int(n_layers))
    elif isinstance(n_hidden, list | tuple) and len(n_hidden):
        widths = list(n_hidden)
        if n_layers is not None and n_layers != len(widths):
            raise ValueError(
                f"`n_hidden={list(widths)}` gives {len(widths)} layer(s) but `n_layers` is "
                f"{n_layers}: pass `n_layers=None` with a list of widths."
            )
    else:
        error = ValueError if isinstance(n_hidden, list | tuple) else TypeError  # empty
        raise error(
            f"`n_hidden` must be a positive integer or a non-empty list of them, got {n_hidden!r}."
        )
    for width in widths:
        check_int("n_hidden", width, minimum=1)
    return [int(w) for w in widths]


class SplitInputLinear(nn.Linear):
    """A linear layer whose input is ``[wide features, rest]``, its weight stored per part.

    ``y = x_wide @ weight_x + x_rest @ weight.T + bias``: ``weight_x``, ``(n_wide, n_out)``,
    holds the features' rows contiguously (one row per feature), and the inherited
    ``weight``, ``(n_out, n_rest)``, the rest of the input (continuous covariates, the
    one-hot covariates that :class:`scvi.nn.FCLayers` injects). A sparse ``x_wide`` is then
    multiplied without slicing or copying a full-width weight, and its gradient is written
    into ``weight_x``'s own buffer (``fc_layers_forward``). Initialised as
    :class:`torch.nn.Linear` over the whole input (uniform in ``+-1/sqrt(n_wide + n_rest)``).

    Parameters
    ----------
    n_wide
        Number of leading input columns stored in ``weight_x``.
    n_rest
        Number of the other input columns (may be 0).
    n_out
        Number of outputs.
    """

    def __init__(self, n_wide: int, n_rest: int, n_out: int) -> None:
        if n_wide < 1:
            raise ValueError(f"`n_wide` must be at least 1, got {n_wide}.")
        self.n_wide = n_wide
        super().__init__(n_rest, n_out)
        if n_rest == 0:  # no other columns: no weight (a parameter without gradient breaks DDP)
            self.register_parameter("weight", None)
        self.weight_x = nn.Parameter(torch.empty(n_wide, n_out))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if not hasattr(self, "weight_x"):  # called by nn.Linear before weight_x exists
            return
        bound = 1.0 / math.sqrt(self.n_wide + self.in_features)
        with torch.no_grad():
            for p in (self.weight_x, self.weight, self.bias):
                if p is not None:
                    p.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` dense, ``(n_cells, n_wide + n_rest)``."""
        out = x[:, : self.n_wide] @ self.weight_x
        if self.in_features:
            return out + nn.functional.linear(x[:, self.n_wide :], self.weight, self.bias)
        return out + self.bias

    def extra_repr(self) -> str:
        return f"n_wide={self.n_wide}, n_rest={self.in_features}, n_out={self.out_features}"


class StackedLayers(nn.Module):
    """Fully connected layers of any widths, with layer norm and covariates in every layer.

    Layer ``i`` is a one-layer :class:`scvi.nn.FCLayers` (linear, layer norm, ReLU, dropout,
    categorical covariates injected), so a stack of equal widths is the same network as
    ``FCLayers(n_layers=len(widths))``. Layer norm (not batch norm) keeps cells independent
    of one another in a minibatch. The first layer accepts a sparse CSR input
    (``fc_layers_forward``).

    Parameters
    ----------
    n_input
        Number of input features.
    widths
        Width of each layer, e.g. ``[1300, 900]``.
    n_cat_list
        Number of categories of each categorical covariate.
    dropout_rate
        Dropout rate after each layer.
    n_wide
        The first ``n_wide`` input columns (a modality's features) get their weight stored
        apart (:class:`SplitInputLinear`); 0 keeps a plain linear first layer.
    """

    def __init__(
        self,
        n_input: int,
        widths: Sequence[int],
        n_cat_list: Sequence[int] | None = None,
        dropout_rate: float = 0.0,
        n_wide: int = 0,
    ) -> None:
        super().__init__()
        dims = [n_input, *widths]
        self.n_output = dims[-1]
        # the first layer is built without the wide part, which SplitInputLinear then adds
        inputs = [n_input - n_wide, *widths[:-1]]
        with warnings.catch_warnings():  # a first layer of no other columns: "zero-element"
            warnings.simplefilter("ignore", UserWarning)
            layers = [
                FCLayers(
                    n_in,
                    n_out,
                    n_cat_list=list(n_cat_list or []),
                    n_layers=1,
                    dropout_rate=dropout_rate,
                    use_batch_norm=False,
                    use_layer_norm=True,
                )
                for n_in, n_out in zip(inputs, dims[1:])
            ]
            self.layers = nn.ModuleList(layers)
        if n_wide:
            first = self.layers[0].fc_layers[0]
            first[0] = SplitInputLinear(n_wide, first[0].in_features, widths[0])

    def forward(
        self, x: torch.Tensor, *cat_list: torch.Tensor, dense_tail: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``x`` (dense or sparse CSR) with ``dense_tail`` appended, through every layer."""
        h = fc_layers_forward(self.layers[0], x, *cat_list, dense_tail=dense_tail)
        for layer in self.layers[1:]:
            h = layer(h, *cat_list)
        return h


def hidden_layers(
    n_input: int,
    n_cat_list: Sequence[int],
    widths: Sequence[int],
    dropout_rate: float = 0.0,
    n_wide: int = 0,
) -> StackedLayers:
    """The hidden layers of the encoders and decoders (see :class:`StackedLayers`)."""
    return StackedLayers(n_input, widths, n_cat_list, dropout_rate, n_wide)


def corrupt_counts(x: torch.Tensor, rate: float) -> torch.Tensor:
    """Denoising corruption: each entry set to 0 with probability ``rate``, the rest scaled.

    Masking noise (Vincent et al., 2008) with the survivors scaled by ``1 / (1 - rate)``, as
    :func:`torch.nn.functional.dropout`, so a cell's expected counts are unchanged. Applied to
    the encoders' inputs in training only; the likelihood scores the clean counts.
    """
    if rate <= 0.0:
        return x
    return map_values(x, lambda v: nn.functional.dropout(v, rate, training=True))


def normalize_rows(x: torch.Tensor, target: float = 1e4) -> torch.Tensor:
    """Each row of a dense or sparse CSR ``x`` scaled to sum to ``target`` (rows of 0 stay 0).

    The encoders' library-size normalisation (``encoder_input="normalized"``): a cell's
    input no longer carries its depth, which the decoders take from the data.
    """
    scale = target / row_sums(x).clamp(min=1e-8)
    if not x.is_sparse_csr:
        return x * scale
    values = x.values() * scale[entry_rows(x), 0]
    return csr_tensor(x.crow_indices(), x.col_indices(), values, x.shape)


def log1p_input(x: torch.Tensor) -> torch.Tensor:
    """``log1p(x)``, as a sparse CSR tensor when ``x`` is wide and mostly zeros.

    ATAC (about 100 of 25,000 regions open per cell) and RNA counts are mostly zeros; the
    first layer then multiplies only the non-zero entries (``fc_layers_forward``), which
    is the same arithmetic without the zeros. A sparse CSR ``x`` (a minibatch from
    :class:`~mosaicvi.data.SparseRows`) stays sparse.
    """
    if x.is_sparse_csr:
        return map_values(x, torch.log1p)
    if x.shape[-1] >= SPARSE_MIN_FEATURES and x.dim() == 2 and x.shape[0] > 0:
        nnz = torch.count_nonzero(x)
        if nnz <= SPARSE_MAX_DENSITY * x.numel():
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                return map_values(x.to_sparse_csr(), torch.log1p)
    return torch.log1p(x)


def fc_layers_forward(
    fc: FCLayers, x: torch.Tensor, *cat_list: torch.Tensor, dense_tail: torch.Tensor | None = None
) -> torch.Tensor:
    """``fc(torch.cat([x, dense_tail]), *cat_list)`` where ``x`` may be a sparse CSR tensor.

    Same parameters and result as :class:`scvi.nn.FCLayers`; only the first linear layer is
    computed as ``x @ W_x + [dense_tail, one-hot covariates] @ W_rest.T + b`` so that a
    sparse ``x`` is never densified. With a :class:`SplitInputLinear` first layer, ``W_x`` is
    its own parameter (no slice of a full-width weight, no copy of it or of its gradient).
    """
    if not x.is_sparse_csr:
        if dense_tail is not None:
            x = torch.cat([x, dense_tail], dim=-1)
        return fc(x, *cat_list)
    covs = [
        nn.functional.one_hot(cat.squeeze(-1), n_cat).to(x.dtype)
        for n_cat, cat in zip(fc.n_cat_list, cat_list)
        if n_cat > 1
    ]
    h = x
    for i, layers in enumerate(fc.fc_layers):
        for layer in layers:
            if layer is None:
                continue
            if isinstance(layer, nn.Linear) and i == 0:
                n = x.shape[1]
                with full_precision(x):
                    if isinstance(layer, SplitInputLinear):
                        weight_rest = layer.weight
                        out = sparse_input_matmul(x.float(), layer.weight_x.float())
                    else:
                        weight_rest = layer.weight[:, n:]
                        out = torch.sparse.mm(x.float(), layer.weight[:, :n].float().T)
                tail = ([] if dense_tail is None else [dense_tail]) + covs
                if tail:
                    out = out + torch.cat(tail, dim=-1) @ weight_rest.T
                h = out if layer.bias is None else out + layer.bias
            elif isinstance(layer, nn.Linear) and fc.inject_into_layer(i) and covs:
                h = layer(torch.cat([h, *covs], dim=-1))
            else:
                h = layer(h)
    return h
