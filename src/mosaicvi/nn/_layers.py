"""Hidden layers shared by the decoders."""

from __future__ import annotations

from scvi.nn import FCLayers


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
