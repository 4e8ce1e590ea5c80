"""MosaicVAE with a cell-type classifier on the latent (scANVI's classification term)."""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from scvi.module import Classifier
from scvi.module.base import LossOutput

from mosaicvi._constants import COMPONENT_KEYS, MODULE_KEYS, REGISTRY_KEYS

from ._mosaicvae import MosaicVAE


class MosaicANVAE(MosaicVAE):
    """:class:`~mosaicvi.module.MosaicVAE` plus a classifier ``q(y | z)`` of the cells' labels.

    The classifier (:class:`scvi.module.Classifier`, as scANVI's) reads the mean of a
    posterior over the latent. In training, each labeled cell is classified from every
    component of its posterior (under ``"poe"`` with the ELBO: the joint posterior and, for
    cells with several modalities, each modality's own posterior of the subset terms), and
    the cross-entropies, weighted like the components, are added to the objective times
    ``classification_ratio`` (scANVI's weighting: mean over the labeled cells of the
    minibatch). So the latent inferred from any one modality is trained to carry the labels,
    and a cell measured in one modality only is classified from the posterior it has.

    The labels of the batches flagged in ``held_out_batches`` are ignored (held out for
    calibration). The ELBO terms and the ``objective`` metric (what early stopping monitors) are
    :class:`~mosaicvi.module.MosaicVAE`'s, without the classification term: labels do not reach the
    validation objective. The classification term is logged as ``classification_loss``.

    Parameters
    ----------
    *args, **kwargs
        :class:`~mosaicvi.module.MosaicVAE`'s arguments.
    n_labels
        Number of label categories (unlabeled cells carry the code ``n_labels``).
    classification_ratio
        Weight of the classification term (scANVI's default, 50).
    classifier_hidden
        Width of the classifier's hidden layer; 0 with ``classifier_layers=0``: a linear
        classifier.
    classifier_layers
        Number of hidden layers of the classifier (0: linear).
    classifier_dropout
        Dropout rate of the classifier's hidden layers.
    classify_subsets
        Also classify each paired cell from each modality's own posterior (the subset
        terms' components; ``"poe"`` with the ELBO). ``False``: from the joint posterior
        only, as scANVI classifies its one posterior (measured in ``docs/model.md``).
    """

    def __init__(
        self,
        *args,
        n_labels: int,
        classification_ratio: float = 50.0,
        classifier_hidden: int = 128,
        classifier_layers: int = 1,
        classifier_dropout: float = 0.1,
        classify_subsets: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if (
            isinstance(n_labels, bool)
            or not isinstance(n_labels, numbers.Integral)
            or n_labels < 2
        ):
            raise ValueError(f"`n_labels` must be an integer of at least 2, got {n_labels!r}.")
        if (
            isinstance(classification_ratio, bool)
            or not isinstance(classification_ratio, numbers.Real)
            or not 0.0 <= classification_ratio < float("inf")
        ):
            raise ValueError(
                "`classification_ratio` must be a finite number >= 0, got "
                f"{classification_ratio!r}."
            )
        if not isinstance(classify_subsets, bool):
            raise TypeError(f"`classify_subsets` must be True or False, got {classify_subsets!r}.")
        self.classify_subsets = classify_subsets
        self.n_labels = int(n_labels)
        self.classification_ratio = float(classification_ratio)
        if not 0.0 <= classifier_dropout < 1.0:
            raise ValueError(
                f"`classifier_dropout` must be in [0, 1), got {classifier_dropout!r}."
            )
        #: batches whose labels the classification term ignores (held out for calibration;
        #: set by ``MosaicANVI.train(calibration_batches=...)`` for one training)
        self.register_buffer(
            "held_out_batches", torch.zeros(self.n_batch, dtype=torch.bool), persistent=False
        )
        #: whether any batch is held out (read in Python: no device sync per step)
        self.holds_out_batches = False
        #: ``False``: the classification term is left out (a frozen query's training: the
        #: classifier, its batch-norm statistics included, stays the reference's)
        self.train_classifier = True
        self.classifier = Classifier(
            self.n_latent,
            n_hidden=classifier_hidden,
            n_labels=self.n_labels,
            n_layers=classifier_layers,
            dropout_rate=classifier_dropout,
            logits=True,
        )

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """Logits ``(..., n_labels)`` of the labels given latent positions ``z``."""
        shape = z.shape
        return self.classifier(z.reshape(-1, shape[-1])).reshape(*shape[:-1], self.n_labels)

    @torch.inference_mode()
    def predict_logits(self, tensors: dict, given: list[str] | None = None) -> torch.Tensor:
        """Logits of a minibatch's labels from the posterior mean (given ``given``'s experts)."""
        return self.classify(self.posterior(tensors, given)[MODULE_KEYS.QZ].loc)

    def loss(
        self,
        tensors: dict,
        inference_outputs: dict,
        generative_outputs: dict,
        kl_weight: float = 1.0,
    ) -> LossOutput:
        """:meth:`~mosaicvi.module.MosaicVAE.loss` plus ``classification_ratio`` times the classification term."""
        output = super().loss(tensors, inference_outputs, generative_outputs, kl_weight)
        if not self.train_classifier:
            output.extra_metrics["classification_loss"] = output.loss.new_zeros(())
            return output
        labels = tensors[REGISTRY_KEYS.LABELS].reshape(-1).long()
        labeled = labels < self.n_labels
        if self.holds_out_batches:
            batch = tensors[REGISTRY_KEYS.BATCH].reshape(-1).long()
            labeled = labeled & ~self.held_out_batches[batch]
        comp = inference_outputs[MODULE_KEYS.COMPONENTS]
        weights = comp[COMPONENT_KEYS.WEIGHTS]
        if not self.classify_subsets:
            weights = self._joint_weights(weights)
        # every cell is classified (no host sync to select the labeled ones); the
        # unlabeled cells' terms are masked out
        logits = self.classify(comp[COMPONENT_KEYS.LOC])  # (n_components, n_cells, n_labels)
        target = labels.clamp(max=self.n_labels - 1).expand(weights.shape[0], -1)
        ce = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none")
        per_cell = (ce.view_as(weights) * weights).sum(0) / weights.sum(0).clamp_min(1e-12)
        mask = labeled.to(per_cell.dtype)
        classification = (per_cell * mask).sum() / mask.sum().clamp_min(1.0)
        output.loss = output.loss + self.classification_ratio * classification
        output.extra_metrics["classification_loss"] = classification.detach()
        return output
