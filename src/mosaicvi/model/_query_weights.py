"""The reference's weights in a query model: new categories' columns, frozen entries."""

from __future__ import annotations

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from scvi.nn import FCLayers


def _covariate_columns(n_in: int, old_sizes: list[int], new_sizes: list[int]) -> np.ndarray:
    """Column of a covariate-injected layer's new input holding each of its old columns.

    The input is ``[features, one-hot block of each covariate]``; a covariate with one
    category has no block (as in :class:`scvi.nn.FCLayers`). New categories are appended to
    their covariate's block.
    """
    old_eff = [n if n > 1 else 0 for n in old_sizes]
    new_eff = [n if n > 1 else 0 for n in new_sizes]
    base = n_in - sum(new_eff)
    columns = [np.arange(base)]
    offset = base
    for old, new in zip(old_eff, new_eff):
        columns.append(np.arange(offset, offset + old))
        offset += new
    return np.concatenate(columns)


def _merge_weights(module: torch.nn.Module, reference: dict, old_sizes: list[int]):
    """The mapped module's state: reference values where they exist, new entries elsewhere.

    Returns the state dict to load and, for each tensor that gained entries, a boolean mask of
    the new entries (those trained when the rest is frozen).
    """
    state = module.state_dict()
    weights = {}  # the linear weight of each layer that sees covariates -> its FCLayers
    for fc in module.modules():
        if isinstance(fc, FCLayers) and sum(fc.n_cat_list) > 0:
            for i, layers in enumerate(fc.fc_layers):
                if fc.inject_into_layer(i):
                    weights[id(layers[0].weight)] = fc
    injected = {key: weights[id(p)] for key, p in module.named_parameters() if id(p) in weights}
    merged, new_entries = {}, {}
    for key, new in state.items():
        if key not in reference:
            raise ValueError(f"The reference model has no tensor {key!r}: not the same network.")
        old = reference[key].to(new.device)
        if old.shape == new.shape:
            merged[key] = old
            continue
        fresh = torch.ones_like(new, dtype=torch.bool)
        if key in injected and old.dim() == 2 and old.shape[0] == new.shape[0]:
            new_sizes = list(injected[key].n_cat_list)
            columns = _covariate_columns(new.shape[1], old_sizes, new_sizes)
            if len(columns) != old.shape[1]:
                raise ValueError(f"Cannot place the reference's columns of {key!r}.")
            value = torch.zeros_like(new)  # new categories start with no effect
            value[:, columns] = old
            fresh[:, columns] = False
        else:  # per-category tensors (priors, plug-ins, dispersions): new entries at the end
            if old.dim() != new.dim() or any(o > n for o, n in zip(old.shape, new.shape)):
                raise ValueError(
                    f"{key!r} has shape {tuple(new.shape)} in the query model and "
                    f"{tuple(old.shape)} in the reference: not the same network."
                )
            value = new.clone()
            part = tuple(slice(0, n) for n in old.shape)
            value[part] = old
            fresh[part] = False
        merged[key] = value
        new_entries[key] = fresh
    return merged, new_entries


class _FrozenEntries:
    """Keeps a query model's frozen entries at the reference's values.

    Two guards, both built from the tensor they act on, so wherever the model trains:
    the gradient hook (``__call__``) zeroes the frozen entries' gradient, and
    :meth:`restore`, run after each optimizer step, writes the reference's values back into
    them. Masking the gradient alone does not freeze them under weight decay (Adam adds
    ``weight_decay * param`` to the gradient inside its step, AdamW shrinks the parameter
    directly) or an optimizer with momentum from earlier steps; restoring the values does,
    whatever ``plan_kwargs`` says.
    """

    def __init__(self, param: torch.nn.Parameter, new_entries: torch.Tensor) -> None:
        self.param = param
        self.frozen = ~new_entries.to(param.device)
        self.values = param.detach()[self.frozen].clone()
        self._copies = {}  # device -> (frozen, values) moved there (the originals kept)

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device == self.frozen.device:
            return self.frozen, self.values
        if device not in self._copies:  # the model moved (e.g. loaded on CPU, trained on GPU)
            self._copies = {device: (self.frozen.to(device), self.values.to(device))}
        return self._copies[device]

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        frozen, _ = self._on(grad.device)
        return grad.masked_fill(frozen, 0.0)

    @torch.no_grad()
    def restore(self) -> None:
        frozen, values = self._on(self.param.device)
        self.param.data[frozen] = values.to(self.param.dtype)


class FrozenQueryCallback(Callback):
    """Lightning callback: the frozen entries of a query model restored after each step.

    The restore is a post-step hook of each optimizer (registered when training starts,
    removed when it ends), so every other hook and callback sees the restored values. It acts
    on the parameters the guards were built on: it refuses to train a module whose parameters
    were replaced (e.g. by ``load_state_dict(assign=True)``), where it would freeze nothing.
    With ``precision="16-true"`` / ``"bf16-true"`` the parameters themselves are cast, so
    "bit-identical" holds in that precision only.
    """

    def __init__(self, guards: list[_FrozenEntries]) -> None:
        self.guards = guards
        self._handles = []

    def _restore(self, *args) -> None:
        for guard in self.guards:
            guard.restore()

    def on_train_start(self, trainer, pl_module) -> None:
        params = {id(p) for p in pl_module.module.parameters()}
        if any(id(guard.param) not in params for guard in self.guards):
            raise RuntimeError(
                "The query model's parameters were replaced after `load_query_data`: its "
                "frozen entries can no longer be guarded. Map the query again."
            )
        self._handles = [opt.register_step_post_hook(self._restore) for opt in trainer.optimizers]

    def on_train_end(self, trainer, pl_module) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
