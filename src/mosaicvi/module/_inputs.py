"""What MosaicVAE reads from a minibatch: counts (unmeasured entries masked), presence, covariates."""

from __future__ import annotations

import torch

from mosaicvi._constants import MODULE_KEYS, REGISTRY_KEYS, counts_key
from mosaicvi.nn import (
    Covariates,
)
from mosaicvi.nn._layers import SPARSE_MIN_FEATURES


class MosaicInputsMixin:
    """The inputs of :meth:`~mosaicvi.module.MosaicVAE.inference` and ``generative``."""

    def _counts(self, tensors: dict, mod: str) -> torch.Tensor:
        """A minibatch's counts of ``mod``, a narrow modality's made dense.

        A sparse CSR minibatch of a modality under ``SPARSE_MIN_FEATURES`` features (a
        protein panel, a few hundred genes) is made dense: dense operations cost less there.
        """
        x = tensors[counts_key(mod)]
        if x.is_sparse_csr and x.shape[1] < SPARSE_MIN_FEATURES:
            return x.to_dense()
        return x

    def _measured_counts(
        self, tensors: dict, covariates: Covariates
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Each modality's counts with unmeasured entries at 0, and the masks of measured ones.

        A mask (:meth:`~mosaicvi.nn.ModalityHead.measured_entries`) is given for the
        modalities that have unmeasured entries only.
        """
        x, measured = {}, {}
        for mod, head in self.heads.items():
            x[mod] = self._counts(tensors, mod)
            if head.masks_entries:
                x[mod], keep = head.measured_entries(x[mod], covariates)
                if keep is not None:
                    measured[mod] = keep
        return x, measured

    def _get_inference_input(self, tensors: dict) -> dict:
        covariates = Covariates.from_tensors(tensors)
        x, measured = self._measured_counts(tensors, covariates)
        return {
            MODULE_KEYS.X: x,
            MODULE_KEYS.PRESENCE: tensors[REGISTRY_KEYS.PRESENCE],
            MODULE_KEYS.COVARIATES: covariates,
            MODULE_KEYS.MEASURED: measured,
        }

    def _get_generative_input(self, tensors: dict, inference_outputs: dict) -> dict:
        return {
            MODULE_KEYS.Z: inference_outputs[MODULE_KEYS.Z],
            MODULE_KEYS.COMPONENTS: inference_outputs.get(MODULE_KEYS.COMPONENTS),
            MODULE_KEYS.CONTEXT: inference_outputs[MODULE_KEYS.CONTEXT],
            MODULE_KEYS.COVARIATES: Covariates.from_tensors(tensors),
        }
