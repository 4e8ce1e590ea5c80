"""The module API of the getters: a minibatch's posterior, one modality decoded, predictive draws."""

from __future__ import annotations

import torch
from scvi.module.base import auto_move_data

from mosaicvi._constants import MODULE_KEYS
from mosaicvi.nn import Covariates, HeadOutput


class PosteriorAPIMixin:
    """What the model's getters call on :class:`~mosaicvi.module.MosaicVAE` after training.

    :meth:`posterior` gives a minibatch's latent posterior, context and covariates;
    :meth:`decode` one modality from a latent sample; :meth:`sample` posterior predictive
    counts. The getters use only these (and the module's ``heads`` for their own parameters).
    """

    @auto_move_data
    def posterior(self, tensors: dict, given: list[str] | None = None) -> dict:
        """The latent posterior of each cell of a minibatch, without the training terms.

        :meth:`inference` on the minibatch (``given`` as there), with the cells'
        ``covariates`` added, so that :meth:`decode` can follow.
        """
        inputs = self._get_inference_input(tensors)
        outputs = self.inference(**inputs, given=given, training_terms=False)
        return {**outputs, MODULE_KEYS.COVARIATES: inputs[MODULE_KEYS.COVARIATES]}

    def decode(
        self,
        modality: str,
        z: torch.Tensor,
        context: torch.Tensor,
        covariates: Covariates,
        sample_local: bool = False,
    ) -> HeadOutput:
        """Decode one modality for every cell from ``z`` (denoised value and distribution).

        ``context`` and ``covariates`` as returned by :meth:`posterior` (``covariates`` may
        be given another batch with :meth:`~mosaicvi.nn.Covariates.with_batch`). The head's
        own latent variables are at their posterior mean unless ``sample_local``. The
        distribution is the exact one even in training mode (where a head may return a
        training-only estimate, such as :class:`~mosaicvi.nn.SampledPeakBernoulli`).
        """
        head = self.heads[modality]
        if not head.training:
            return head.decode(z, context, covariates, sample_local)
        head.eval()
        try:
            return head.decode(z, context, covariates, sample_local)
        finally:
            head.train()

    @torch.inference_mode()
    def sample(
        self,
        tensors: dict,
        n_samples: int = 1,
        given: list[str] | None = None,
        modalities: list[str] | None = None,
        batch: dict[str, torch.Tensor] | None = None,
        context: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Posterior predictive counts, ``(n_samples, n_cells, n_features)`` per modality.

        Each draw samples ``z`` from the cell's posterior (given its present modalities, or
        ``given``), the heads' own latent variables, then the counts, for every cell,
        including cells that lack the modality: their context is the plug-in of their batch
        (e.g. a typical library size, not 0).

        Parameters
        ----------
        tensors
            A minibatch from the data loader.
        n_samples
            Draws per cell.
        given
            As in :meth:`inference`.
        modalities
            Modalities to draw (default: all).
        batch
            Optional batch codes to decode each draw of a modality with,
            ``(n_samples, n_cells, 1)`` per modality; default the cells' own batch.
        context
            Optional context to decode a modality with, ``(n_cells, n_context)`` per
            modality, instead of the cells' own (e.g. a plug-in, to decode cells measured in
            the modality as if they lacked it); default that of :meth:`posterior`.
        """
        posterior = self.posterior(tensors, given)
        covariates = posterior[MODULE_KEYS.COVARIATES]
        modalities = modalities or self.modalities
        draws = {mod: [] for mod in modalities}
        for s in range(n_samples):
            z = posterior[MODULE_KEYS.QZ].sample()
            for mod in modalities:
                covs = covariates
                if batch is not None and mod in batch:
                    covs = covariates.with_batch(batch[mod][s].to(z.device))
                if context is not None and mod in context:
                    ctx = context[mod].to(z.device)
                else:
                    ctx = posterior[MODULE_KEYS.CONTEXT][mod]
                px = self.decode(mod, z, ctx, covs, sample_local=True).px
                draws[mod].append(px.sample().cpu())
        return {mod: torch.stack(d) for mod, d in draws.items()}
