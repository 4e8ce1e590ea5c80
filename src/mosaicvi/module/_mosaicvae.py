"""The multimodal VAE: per-modality experts fused by a Product of Experts, MVAE-style objective."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch.distributions import Normal, kl_divergence

from mosaicvi._constants import MODALITY_REGISTRY_KEYS, MODULE_KEYS, REGISTRY_KEYS
from mosaicvi.nn import (
    ATACDecoder,
    ModalityExpert,
    ProteinDecoder,
    RNADecoder,
    product_of_experts,
)


class MosaicVAE(BaseModuleClass):
    """Product-of-Experts VAE for any subset of RNA, ATAC and protein.

    Each modality ``m`` has an encoder giving a Gaussian expert ``q_m(z | x_m)``. The joint
    posterior of a cell is the product of the experts of the modalities it has and a standard
    normal prior expert. The objective (MVAE, Wu & Goodman 2018) is the joint ELBO plus, for
    cells with two or more modalities, the ELBO of each present modality given its own expert
    alone, so that the latent given a single modality is trained for imputation. (For a cell
    with one modality the two coincide and it is counted once.) Every term of a modality a
    cell lacks is exactly zero.

    Parameters
    ----------
    n_features
        Number of features per registered modality, e.g. ``{"rna": 2000, "protein": 30}``.
    n_batch
        Number of batches.
    n_latent
        Dimension of the latent space.
    n_hidden
        Width of hidden layers.
    n_layers
        Number of hidden layers of encoders and decoders.
    dropout_rate
        Dropout rate of the encoders.
    n_cats_per_cov
        Number of categories of each extra categorical covariate.
    n_continuous_cov
        Number of continuous covariates.
    encode_covariates
        Whether encoders see batch and covariates (decoders always do).
    gene_likelihood
        RNA likelihood: ``"nb"``, ``"zinb"`` or ``"poisson"``.
    dispersion
        RNA dispersion: ``"gene"`` or ``"gene-batch"``.
    atac_likelihood
        ATAC likelihood: ``"bernoulli"`` or ``"poisson"``.
    protein_likelihood
        Protein likelihood: ``"mixture"`` (totalVI) or ``"nb"``.
    protein_background_prior
        ``(mean, scale)`` arrays ``(n_proteins, n_batch)`` for the mixture's background prior.
    subset_reconstruction
        What each single-modality subset term reconstructs: ``"all"`` present modalities
        (the subset ELBO of MoPoE, which trains the decoders on latents inferred from one
        modality, as imputation uses them) or only its ``"own"`` modality (MVAE).
    """

    def __init__(
        self,
        n_features: dict[str, int],
        n_batch: int = 1,
        n_latent: int = 20,
        n_hidden: int = 128,
        n_layers: int = 2,
        dropout_rate: float = 0.1,
        n_cats_per_cov: list[int] | None = None,
        n_continuous_cov: int = 0,
        encode_covariates: bool = False,
        gene_likelihood: Literal["nb", "zinb", "poisson"] = "nb",
        dispersion: Literal["gene", "gene-batch"] = "gene",
        atac_likelihood: Literal["bernoulli", "poisson"] = "bernoulli",
        protein_likelihood: Literal["mixture", "nb"] = "mixture",
        protein_background_prior: tuple[np.ndarray, np.ndarray] | None = None,
        subset_reconstruction: Literal["own", "all"] = "all",
    ) -> None:
        super().__init__()
        if subset_reconstruction not in ("own", "all"):
            raise ValueError(
                f"`subset_reconstruction` must be 'own' or 'all', got {subset_reconstruction!r}."
            )
        self.subset_reconstruction = subset_reconstruction
        self.modalities = list(n_features)
        self.n_latent = n_latent
        self.n_batch = n_batch
        cat_list = [n_batch, *(n_cats_per_cov or [])]
        n_dec_input = n_latent + n_continuous_cov
        self.encoders = torch.nn.ModuleDict(
            {
                mod: ModalityExpert(
                    n,
                    n_latent,
                    n_hidden,
                    n_layers,
                    n_cat_list=cat_list if encode_covariates else None,
                    n_continuous=n_continuous_cov if encode_covariates else 0,
                    dropout_rate=dropout_rate,
                )
                for mod, n in n_features.items()
            }
        )
        self.encode_covariates = encode_covariates
        decoders = {}
        common = {"n_cat_list": cat_list, "n_hidden": n_hidden, "n_layers": n_layers}
        if "rna" in n_features:
            decoders["rna"] = RNADecoder(
                n_dec_input,
                n_features["rna"],
                n_batch,
                gene_likelihood=gene_likelihood,
                dispersion=dispersion,
                **common,
            )
        if "atac" in n_features:
            decoders["atac"] = ATACDecoder(
                n_dec_input, n_features["atac"], likelihood=atac_likelihood, **common
            )
        if "protein" in n_features:
            decoders["protein"] = ProteinDecoder(
                n_dec_input,
                n_features["protein"],
                n_batch,
                likelihood=protein_likelihood,
                background_prior=protein_background_prior,
                **common,
            )
        self.decoders = torch.nn.ModuleDict(decoders)

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def _covariates(tensors: dict) -> dict:
        cat = tensors.get(REGISTRY_KEYS.CAT_COVS)
        return {
            "batch_index": tensors[REGISTRY_KEYS.BATCH],
            "cat_covs": cat,
            "cont_covs": tensors.get(REGISTRY_KEYS.CONT_COVS),
        }

    def _get_inference_input(self, tensors: dict) -> dict:
        return {
            "x": {mod: tensors[MODALITY_REGISTRY_KEYS[mod]] for mod in self.modalities},
            "presence": tensors[REGISTRY_KEYS.PRESENCE],
            **self._covariates(tensors),
        }

    def _get_generative_input(self, tensors: dict, inference_outputs: dict) -> dict:
        return {
            "z": inference_outputs[MODULE_KEYS.Z],
            "z_unimodal": inference_outputs.get(MODULE_KEYS.Z_UNIMODAL),
            "library": inference_outputs[MODULE_KEYS.LIBRARY],
            "atac_depth": inference_outputs[MODULE_KEYS.ATAC_DEPTH],
            **self._covariates(tensors),
        }

    @staticmethod
    def _cat_list(batch_index: torch.Tensor, cat_covs: torch.Tensor | None) -> tuple:
        cats = () if cat_covs is None else torch.split(cat_covs, 1, dim=1)
        return (batch_index, *cats)

    # --------------------------------------------------------------- inference
    @auto_move_data
    def inference(
        self,
        x: dict[str, torch.Tensor],
        presence: torch.Tensor,
        batch_index: torch.Tensor,
        cat_covs: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
        given: list[str] | None = None,
        unimodal: bool = True,
    ) -> dict:
        """Experts of the present modalities, their product, and per-modality posteriors.

        Parameters
        ----------
        given
            Use only these modalities' experts (default: every registered modality).
        unimodal
            Also return each modality's own posterior (prior x its expert), used by the loss.
        """
        mask = presence.to(torch.bool)
        if given is not None:
            keep = torch.tensor([m in given for m in self.modalities], device=mask.device)
            mask = mask & keep
        cat_list = self._cat_list(batch_index, cat_covs) if self.encode_covariates else ()
        cont = cont_covs if self.encode_covariates else None
        mus, variances = [], []
        for j, mod in enumerate(self.modalities):
            mu, var = self.encoders[mod](x[mod], mask[:, j], cont, cat_list)
            mus.append(mu)
            variances.append(var)
        mu, var = torch.stack(mus), torch.stack(variances)
        loc, joint_var = product_of_experts(mu, var, mask)
        qz = Normal(loc, joint_var.sqrt())
        outputs = {MODULE_KEYS.QZ: qz, MODULE_KEYS.Z: qz.rsample(), MODULE_KEYS.PRESENCE: mask}
        if unimodal:
            qz_uni = {}
            for j, mod in enumerate(self.modalities):
                only = torch.zeros_like(mask)
                only[:, j] = True
                m_loc, m_var = product_of_experts(mu, var, only)
                qz_uni[mod] = Normal(m_loc, m_var.sqrt())
            outputs[MODULE_KEYS.QZ_UNIMODAL] = qz_uni
            outputs[MODULE_KEYS.Z_UNIMODAL] = {mod: q.rsample() for mod, q in qz_uni.items()}
        outputs[MODULE_KEYS.LIBRARY] = {
            mod: torch.log(x[mod].sum(-1, keepdim=True).clamp(min=1.0))
            for mod in self.modalities
            if mod in ("rna", "atac")
        }
        depth = None
        if "atac" in self.modalities:
            j = self.modalities.index("atac")
            batch_cats = self._cat_list(batch_index, cat_covs)
            depth = self.decoders["atac"].cell_depth(x["atac"], mask[:, j], batch_cats)
        outputs[MODULE_KEYS.ATAC_DEPTH] = depth
        return outputs

    # -------------------------------------------------------------- generative
    def _decode(
        self,
        mod: str,
        z: torch.Tensor,
        library: dict,
        atac_depth: torch.Tensor | None,
        cat_list: tuple,
        cont_covs: torch.Tensor | None,
        sample_background: bool,
    ) -> tuple:
        z_in = z if cont_covs is None else torch.cat([z, cont_covs], dim=-1)
        if mod == "rna":
            return (*self.decoders["rna"](z_in, library["rna"], cat_list[0], cat_list[1:]), None)
        if mod == "atac":
            return (*self.decoders["atac"](z_in, atac_depth, library["atac"], cat_list), None)
        return self.decoders["protein"](z_in, cat_list, sample_background=sample_background)

    @auto_move_data
    def generative(
        self,
        z: torch.Tensor,
        library: dict,
        batch_index: torch.Tensor,
        atac_depth: torch.Tensor | None = None,
        cat_covs: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
        z_unimodal: dict[str, torch.Tensor] | None = None,
        sample_background: bool = True,
        modalities: list[str] | None = None,
    ) -> dict:
        """Decode every (or the listed) modality from ``z``; each from its own ``z_unimodal``.

        Returns the count distributions (``px``), the denoised estimates (``"denoised"``) and,
        for the protein mixture, the background posterior.
        """
        cat_list = self._cat_list(batch_index, cat_covs)
        args = (library, atac_depth, cat_list, cont_covs, sample_background)
        px, denoised, background = {}, {}, {}
        for mod in modalities or self.modalities:
            px[mod], denoised[mod], background[mod] = self._decode(mod, z, *args)
        outputs = {
            MODULE_KEYS.PX: px,
            "denoised": denoised,
            MODULE_KEYS.PROTEIN_BACKGROUND: background.get("protein"),
        }
        if z_unimodal is not None:
            # px_unimodal[m][k]: modality k decoded from the posterior given m alone
            targets = self.modalities if self.subset_reconstruction == "all" else None
            px_uni, back_uni = {}, {}
            for m in self.modalities:
                px_uni[m] = {}
                for k in targets or [m]:
                    px_uni[m][k], _, back = self._decode(k, z_unimodal[m], *args)
                    if back is not None:
                        back_uni[m] = back
            outputs[MODULE_KEYS.PX_UNIMODAL] = px_uni
            outputs[MODULE_KEYS.PROTEIN_BACKGROUND_UNIMODAL] = back_uni
        return outputs

    # -------------------------------------------------------------------- loss
    def _log_likelihood(self, mod: str, dist, x: torch.Tensor) -> torch.Tensor:
        if mod == "atac":
            x = self.decoders["atac"].observation(x)
        return dist.log_prob(x).sum(-1)

    def loss(
        self,
        tensors: dict,
        inference_outputs: dict,
        generative_outputs: dict,
        kl_weight: float = 1.0,
    ) -> LossOutput:
        """Negative joint ELBO plus the unimodal ELBO terms, per cell and per modality."""
        mask = inference_outputs[MODULE_KEYS.PRESENCE].to(torch.float32)
        multi = (mask.sum(1) >= 2).to(mask.dtype)
        batch_index = tensors[REGISTRY_KEYS.BATCH]
        px = generative_outputs[MODULE_KEYS.PX]
        px_uni = generative_outputs.get(MODULE_KEYS.PX_UNIMODAL)
        qz_uni = inference_outputs.get(MODULE_KEYS.QZ_UNIMODAL)
        standard = Normal(0.0, 1.0)

        x = {mod: tensors[MODALITY_REGISTRY_KEYS[mod]] for mod in self.modalities}
        col = {mod: mask[:, j] for j, mod in enumerate(self.modalities)}
        back = generative_outputs[MODULE_KEYS.PROTEIN_BACKGROUND]
        back_uni = generative_outputs.get(MODULE_KEYS.PROTEIN_BACKGROUND_UNIMODAL) or {}
        background_kl = self.decoders["protein"].background_kl if back is not None else None

        reconstruction = {
            mod: -self._log_likelihood(mod, px[mod], x[mod]) * col[mod] for mod in self.modalities
        }
        kl_uni, kl_background = torch.zeros_like(multi), torch.zeros_like(multi)
        if background_kl is not None:
            kl_background = background_kl(back, batch_index) * col["protein"]
        for m in px_uni or {}:
            # subset term of modality m: only for cells with m and at least one other modality
            weight = col[m] * multi
            kl_uni = kl_uni + kl_divergence(qz_uni[m], standard).sum(-1) * weight
            for k, dist in px_uni[m].items():
                ll = self._log_likelihood(k, dist, x[k])
                reconstruction[k] = reconstruction[k] - ll * weight * col[k]
            if m in back_uni:
                kl_background = kl_background + background_kl(back_uni[m], batch_index) * (
                    weight * col["protein"]
                )

        kl_z = kl_divergence(inference_outputs[MODULE_KEYS.QZ], standard).sum(-1)
        kl_local = {"kl_z": kl_z, "kl_z_unimodal": kl_uni, "kl_protein_background": kl_background}
        total_rec = torch.stack(list(reconstruction.values())).sum(0)
        loss = torch.mean(total_rec + kl_weight * (kl_z + kl_uni + kl_background))
        extra = {f"reconstruction_loss_{mod}": rec.mean() for mod, rec in reconstruction.items()}
        return LossOutput(
            loss=loss,
            reconstruction_loss=reconstruction,
            kl_local=kl_local,
            extra_metrics=extra,
        )

    @torch.inference_mode()
    def sample(self, tensors: dict, n_samples: int = 1) -> dict[str, torch.Tensor]:
        """Posterior predictive counts of every modality, ``(n_samples, n_cells, n_features)``.

        ``z`` is drawn from each cell's joint posterior given its present modalities; every
        modality is drawn, including those the cell lacks (imputed counts).
        """
        inference_inputs = self._get_inference_input(tensors)
        draws = {mod: [] for mod in self.modalities}
        for _ in range(n_samples):
            inference_outputs = self.inference(**inference_inputs, unimodal=False)
            generative_inputs = self._get_generative_input(tensors, inference_outputs)
            px = self.generative(**generative_inputs)[MODULE_KEYS.PX]
            for mod in self.modalities:
                draws[mod].append(px[mod].sample().cpu())
        return {mod: torch.stack(d) for mod, d in draws.items()}
