"""What scvi-tools' test reads: the groups' posterior samples and their replay per pass."""

from __future__ import annotations

import numpy as np
import torch
from scvi.model.base import DifferentialComputation


class _GroupCounts:
    """What scvi-tools' test reads of the counts: the mean counts of each group's measured cells.

    :meth:`~scvi.model.base.DifferentialComputation.get_bayes_factors` averages
    ``get_from_registry("X")[mask]`` over rows to find the features a group almost never
    has, for its pseudocount estimate. Here ``[mask]`` is the group's mean counts as one row
    (read in blocks by ``_measured_stats``), so no group's counts are read whole.
    """

    adata = None

    def __init__(self, groups: list[tuple]) -> None:
        self.groups = groups  # (mask, raw_mean) of each group

    def get_from_registry(self, key: str):
        if key != "X":
            raise KeyError(key)
        return self

    def __getitem__(self, selection) -> np.ndarray:
        return _lookup(self.groups, selection)[1][None, :]


class _GivenSamples(DifferentialComputation):
    """scvi-tools' test on posterior samples drawn beforehand.

    :meth:`~scvi.model.base.DifferentialComputation.get_bayes_factors` asks
    ``scale_sampler`` for the samples of each group: here they are handed over (float32,
    already decoded in the requested batches). No reference cycle: the samples are freed as
    soon as the test returns.

    Parameters
    ----------
    groups
        ``(mask, scale, batch)`` of each group: the mask passed as ``idx1`` / ``idx2``, the
        samples ``(n_samples, n_features)`` and the batch of each sample (NaN: its cell's own).
    counts
        The groups' mean counts (``_GroupCounts``), for the pseudocount estimate.
    """

    def __init__(self, groups: list[tuple], counts: _GroupCounts | None = None) -> None:
        super().__init__(model_fn=None, representation_fn=None, adata_manager=counts or _NO_COUNTS)
        self.groups = groups

    def scale_sampler(self, selection, **kwargs) -> dict:
        _, scale, batch = _lookup(self.groups, selection)
        return {"scale": scale, "batch": batch}


_NO_COUNTS = _GroupCounts([])


def _lookup(groups: list[tuple], selection) -> tuple:
    """The group whose mask is ``selection`` (the very array passed to scvi-tools)."""
    for group in groups:
        if group[0] is selection:
            return group
    raise ValueError("The cells asked for are not those of either group.")


class _Replay:
    """The torch random state before each group's and batch's latent draws.

    The first pass over the features records it, later passes restore it, so that every pass
    decodes the same latent samples.
    """

    def __init__(self, module) -> None:
        self.device = next(module.parameters()).device
        self.states: dict = {}

    def _get(self):
        if self.device.type == "cuda":
            return torch.get_rng_state(), torch.cuda.get_rng_state(self.device)
        if self.device.type == "mps":
            return torch.get_rng_state(), torch.mps.get_rng_state()
        return torch.get_rng_state(), None

    def at(self, key) -> None:
        if key not in self.states:
            self.states[key] = self._get()
            return
        cpu, device = self.states[key]
        torch.set_rng_state(cpu)
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(device, self.device)
        elif self.device.type == "mps":
            torch.mps.set_rng_state(device)
