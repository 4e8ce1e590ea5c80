"""The training objective of MosaicVAE: ELBO with the MVAE subset terms, or MVTCAE."""

from __future__ import annotations

import torch
from scvi.module.base import LossOutput

from mosaicvi._constants import COMPONENT_KEYS, MODULE_KEYS
from mosaicvi.nn import (
    Covariates,
    take_rows,
    weighted_kl,
)


class MosaicObjectiveMixin:
    """:meth:`loss` of :class:`~mosaicvi.module.MosaicVAE` (its objectives are described there)."""

    def _joint_weights(self, weights: torch.Tensor) -> torch.Tensor:
        """The component weights of the cell's posterior ``q(z | X)``, without the subset terms.

        Under ``"poe"`` the posterior is the first component (the subset terms follow it);
        a mixture posterior is every component.
        """
        if self.fusion != "poe" or weights.shape[0] == 1:
            return weights
        return torch.cat([weights[:1], torch.zeros_like(weights[1:])])

    def loss(
        self,
        tensors: dict,
        inference_outputs: dict,
        generative_outputs: dict,
        kl_weight: float = 1.0,
    ) -> LossOutput:
        """The negative training objective, and the ELBO of each cell's measured modalities.

        ``loss`` is the mean over cells of the negative objective: reconstruction terms are
        weighted sums over the posterior's components (each decoded from its own sample), the
        KL divergence of the posterior from the prior (its weighted-component bound for a
        mixture), each head's local KL terms, and with ``"poe"`` under the ELBO the MVAE
        subset terms; under MVTCAE, MVTCAE's weighting and expert KLs.

        The terms returned are those of the ELBO of the modalities each cell has, under its
        posterior ``q(z | X)`` (the joint term), as MULTIVI and TOTALVI report theirs:
        ``reconstruction_loss`` holds one term per modality, ``kl_local`` ``kl_z`` and each
        head's ``kl_<modality>_<name>``, so that :meth:`~mosaicvi.MosaicVI.get_elbo` and
        the ``elbo_*`` history are that ELBO. The objective's other terms are extra metrics,
        logged under their own names: ``subset_reconstruction_loss_<modality>`` and
        ``subset_kl`` (the subset terms' reconstruction and KL terms, ``"poe"`` with the
        ELBO), ``kl_z_experts`` (``sum_j KL(q(z|X) || q_j)``, MVTCAE); beside them
        ``reconstruction_loss_<modality>``, the joint term's, and ``objective``, the negative
        objective at the KL weight ``objective_kl_weight`` (the training plan's final weight,
        ``max_kl_weight``; the training loss, scvi-tools' ``train_loss``, weights the KL
        terms by the warm-up's ``kl_weight``): :meth:`~mosaicvi.MosaicVI.train` monitors
        ``objective_validation`` for early stopping. Expects ``generative`` to have been
        called with the ``components`` (as ``forward`` does).
        """
        comp = inference_outputs[MODULE_KEYS.COMPONENTS]
        weights = comp[COMPONENT_KEYS.WEIGHTS]
        joint_weights = self._joint_weights(weights)
        n_components, n_cells = weights.shape
        flat_weights, flat_joint = weights.flatten(), joint_weights.flatten()
        covariates = Covariates.from_tensors(tensors)

        def per_cell(values: torch.Tensor, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
            """Weighted sums over components of ``values`` at ``flat``: objective's, joint's."""
            sums = []
            for w in (flat_weights, flat_joint):
                out = weights.new_zeros(n_components * n_cells)
                out = out.index_add(0, flat, values * w[flat])
                sums.append(out.view(n_components, n_cells).sum(0))
            return tuple(sums)

        rows = generative_outputs[MODULE_KEYS.ROWS]
        px, local = generative_outputs[MODULE_KEYS.PX], generative_outputs[MODULE_KEYS.LOCAL]
        reconstruction, local_kl, joint_rec, joint_local = {}, {}, {}, {}
        counts = inference_outputs[MODULE_KEYS.X]
        measured = inference_outputs[MODULE_KEYS.MEASURED]
        for mod, head in self.heads.items():
            cells = rows[mod] % n_cells
            x = take_rows(counts[mod], cells)
            keep = measured[mod][cells] if mod in measured else None
            nll = -head.masked_log_likelihood(px[mod], x, keep)
            reconstruction[mod], joint_rec[mod] = per_cell(nll, rows[mod])
            if head.local_kl is not None:
                kl = head.kl(local[mod], covariates.take(cells))
                name = f"kl_{mod}_{head.local_kl}"
                local_kl[name], joint_local[name] = per_cell(kl, rows[mod])
        loc, var = comp[COMPONENT_KEYS.LOC], comp[COMPONENT_KEYS.VAR]
        kl_z = weighted_kl(loc, var, weights)
        kl_z_joint = kl_z if joint_weights is weights else weighted_kl(loc, var, joint_weights)
        rec_sum = torch.stack(list(reconstruction.values())).sum(0)
        local_sum = sum(local_kl.values(), torch.zeros_like(rec_sum))
        extra = {f"reconstruction_loss_{mod}": rec.mean() for mod, rec in joint_rec.items()}
        if joint_weights is not weights:  # the subset terms, apart
            for mod in reconstruction:
                extra[f"subset_reconstruction_loss_{mod}"] = (
                    reconstruction[mod] - joint_rec[mod]
                ).mean()
            subset_kl = kl_z - kl_z_joint
            for name in local_kl:
                subset_kl = subset_kl + local_kl[name] - joint_local[name]
            extra["subset_kl"] = subset_kl.mean()
        if self.objective == "elbo":

            def objective(w: float) -> torch.Tensor:
                return torch.mean(rec_sum + w * (local_sum + kl_z))

        else:
            present = inference_outputs[MODULE_KEYS.PRESENCE].to(weights.dtype)
            n_present = present.sum(-1)
            expert_loc, expert_var = (
                comp[COMPONENT_KEYS.EXPERT_LOC],
                comp[COMPONENT_KEYS.EXPERT_VAR],
            )
            kl_experts = sum(
                present[:, j] * weighted_kl(loc, var, weights, expert_loc[j], expert_var[j])
                for j in range(len(self.heads))
            )
            extra["kl_z_experts"] = kl_experts.mean()
            alpha = self.alpha
            kl = (1 - alpha) * kl_z + alpha / n_present * kl_experts

            def objective(w: float) -> torch.Tensor:
                total_rec = rec_sum + w * local_sum
                return torch.mean((n_present - alpha) / n_present * total_rec + w * self.beta * kl)

        loss = objective(kl_weight)
        # the objective at the schedule's final KL weight: what early stopping monitors
        # (``objective_validation``), comparable across the warm-up's epochs
        final = self.objective_kl_weight
        extra["objective"] = loss.detach() if kl_weight == final else objective(final).detach()
        return LossOutput(
            loss=loss,
            reconstruction_loss=joint_rec,
            kl_local={"kl_z": kl_z_joint, **joint_local},
            extra_metrics=extra,
        )
