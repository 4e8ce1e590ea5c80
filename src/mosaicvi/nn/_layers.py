"""Hidden layers shared by the encoders and decoders, with a sparse-input path."""

from __future__ import annotations

import warnings

import torch
from scvi.nn import FCLayers
from torch import nn

#: Inputs at least this wide and at most this dense go through the sparse first layer.
SPARSE_MIN_FEATURES = 1000
SPARSE_MAX_DENSITY = 0.1


def hidden_layers(n_input: int, n_cat_list: list[int], n_hidden: int, n_layers: int) -> FCLayers:
    """Fully connected layers with layer norm and covariates injected in every layer.

    Layer norm (not batch norm) keeps cells independent of one another in a minibatch.
    """
    return FCLayers(
        n_input,
        n_hidden,
        n_cat_list=n_cat_list,
        n_layers=n_layers,
        n_hidden=n_hidden,
        dropout_rate=0.0,
        use_batch_norm=False,
        use_layer_norm=True,
    )


def log1p_input(x: torch.Tensor) -> torch.Tensor:
    """``log1p(x)``, as a sparse CSR tensor when ``x`` is wide and mostly zeros.

    ATAC (about 100 of 25,000 regions open per cell) and RNA counts are mostly zeros; the
    first layer then multiplies only the non-zero entries (:func:`fc_layers_forward`), which
    is the same arithmetic without the zeros.
    """
    if x.shape[-1] >= SPARSE_MIN_FEATURES and x.dim() == 2 and x.shape[0] > 0:
        nnz = torch.count_nonzero(x)
        if nnz <= SPARSE_MAX_DENSITY * x.numel():
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                sparse = x.to_sparse_csr()
                return torch.sparse_csr_tensor(
                    sparse.crow_indices(),
                    sparse.col_indices(),
                    torch.log1p(sparse.values()),
                    sparse.shape,
                )
    return torch.log1p(x)


def fc_layers_forward(
    fc: FCLayers, x: torch.Tensor, *cat_list: torch.Tensor, dense_tail: torch.Tensor | None = None
) -> torch.Tensor:
    """``fc(torch.cat([x, dense_tail]), *cat_list)`` where ``x`` may be a sparse CSR tensor.

    Same parameters and result as :class:`scvi.nn.FCLayers`; only the first linear layer is
    computed as ``x @ W_x.T + [dense_tail, one-hot covariates] @ W_rest.T + b`` so that a
    sparse ``x`` is never densified.
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
                out = torch.sparse.mm(x, layer.weight[:, :n].T)
                tail = ([] if dense_tail is None else [dense_tail]) + covs
                if tail:
                    out = out + torch.cat(tail, dim=-1) @ layer.weight[:, n:].T
                h = out if layer.bias is None else out + layer.bias
            elif isinstance(layer, nn.Linear) and fc.inject_into_layer(i) and covs:
                h = layer(torch.cat([h, *covs], dim=-1))
            else:
                h = layer(h)
    return h
