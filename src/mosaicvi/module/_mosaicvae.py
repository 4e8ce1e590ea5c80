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
    normal prior expert. The objective is the joint ELBO plus, for cells with two or more
    modalities, one subset term per present modality ``m``: the ELBO under the posterior from
    ``m``'s expert alone (MVAE, Wu & Goodman 2018), so that the latent given a single modality
    is trained and usable for imputation. (For a cell with one modality the subset term equals
    the joint one and is counted once.) Every term of a modality a cell lacks is exactly zero.

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
            "presence": inference_outputs[MODULE_KEYS.PRESENCE],
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
        cells: dict,
        rows: torch.Tensor | None,
        sample_background: bool,
    ) -> tuple:
        """Decode ``mod`` from ``z`` for the cells ``rows`` (all cells if ``None``)."""
        if rows is not None:
            z, cells = z[rows], _take_rows(cells, rows)
        cont = cells["cont_covs"]
        z_in = z if cont is None else torch.cat([z, cont], dim=-1)
        cat_list = cells["cat_list"]
        if mod == "rna":
            rna = self.decoders["rna"](z_in, cells["library"]["rna"], cat_list[0], cat_list[1:])
            return (*rna, None)
        if mod == "atac":
            atac = self.decoders["atac"](
                z_in, cells["atac_depth"], cells["library"].get("atac"), cat_list
            )
            return (*atac, None)
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
        presence: torch.Tensor | None = None,
        sample_background: bool = True,
        modalities: list[str] | None = None,
    ) -> dict:
        """Decode the modalities from ``z`` (and from each ``z_unimodal`` for the subset terms).

        With ``presence`` (as in training), a modality is decoded only for the cells that have
        it, and the subset term of ``m`` decodes ``k`` only for cells with ``m``, ``k`` and at
        least two modalities: the distributions then cover those rows, listed under
        ``"rows"`` / ``"rows_unimodal"``. Without ``presence``, every cell is decoded (for
        imputation).

        Returns
        -------
        ``px`` (count distributions), ``"denoised"`` (denoised estimates), the protein
        background posterior (mixture likelihood), and their subset-term counterparts.
        """
        cells = {
            "library": library,
            "atac_depth": atac_depth,
            "cat_list": self._cat_list(batch_index, cat_covs),
            "cont_covs": cont_covs,
        }
        mask = None if presence is None else presence.to(torch.bool)

        def rows(*cols: torch.Tensor) -> torch.Tensor | None:
            if mask is None:
                return None
            keep = cols[0]
            for c in cols[1:]:
                keep = keep & c
            return keep.nonzero(as_tuple=True)[0]

        col = {} if mask is None else {m: mask[:, j] for j, m in enumerate(self.modalities)}
        px, denoised, background, px_rows = {}, {}, {}, {}
        for mod in modalities or self.modalities:
            px_rows[mod] = rows(col[mod]) if col else None
            px[mod], denoised[mod], background[mod] = self._decode(
                mod, z, cells, px_rows[mod], sample_background
            )
        outputs = {
            MODULE_KEYS.PX: px,
            MODULE_KEYS.DENOISED: denoised,
            MODULE_KEYS.ROWS: px_rows,
            MODULE_KEYS.PROTEIN_BACKGROUND: background.get("protein"),
        }
        if z_unimodal is None or mask is None:
            return outputs
        multi = mask.sum(1) >= 2
        px_uni, back_uni, uni_rows = {}, {}, {}
        for m in self.modalities:
            targets = self.modalities if self.subset_reconstruction == "all" else [m]
            px_uni[m], uni_rows[m] = {}, {}
            for k in targets:
                uni_rows[m][k] = rows(col[m], col[k], multi)
                px_uni[m][k], _, back = self._decode(
                    k, z_unimodal[m], cells, uni_rows[m][k], sample_background
                )
                if back is not None:
                    back_uni[m] = back
        outputs[MODULE_KEYS.PX_UNIMODAL] = px_uni
        outputs[MODULE_KEYS.ROWS_UNIMODAL] = uni_rows
        outputs[MODULE_KEYS.PROTEIN_BACKGROUND_UNIMODAL] = back_uni
        return outputs

    # -------------------------------------------------------------------- loss
    def _log_likelihood(self, mod: str, dist, x: torch.Tensor) -> torch.Tensor:
        if mod == "atac":
            return self.decoders["atac"].log_likelihood(dist, x)
        return dist.log_prob(x).sum(-1)

    def loss(
        self,
        tensors: dict,
        inference_outputs: dict,
        generative_outputs: dict,
        kl_weight: float = 1.0,
    ) -> LossOutput:
        """Negative joint ELBO plus the subset terms, per cell and per modality.

        Expects ``generative`` to have been called with ``presence`` (as ``forward`` does),
        so that each distribution covers only the rows listed with it.
        """
        mask = inference_outputs[MODULE_KEYS.PRESENCE].to(torch.float32)
        n_cells = mask.shape[0]
        multi = (mask.sum(1) >= 2).to(mask.dtype)
        batch_index = tensors[REGISTRY_KEYS.BATCH]
        x = {mod: tensors[MODALITY_REGISTRY_KEYS[mod]] for mod in self.modalities}
        standard = Normal(0.0, 1.0)

        def per_cell(values: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            return mask.new_zeros(n_cells).index_add(0, rows, values)

        rows = generative_outputs[MODULE_KEYS.ROWS]
        reconstruction = {
            mod: per_cell(-self._log_likelihood(mod, dist, x[mod][rows[mod]]), rows[mod])
            for mod, dist in generative_outputs[MODULE_KEYS.PX].items()
        }
        kl_uni, kl_background = torch.zeros_like(multi), torch.zeros_like(multi)
        back = generative_outputs[MODULE_KEYS.PROTEIN_BACKGROUND]
        if back is not None:
            background_kl = self.decoders["protein"].background_kl
            protein_rows = rows["protein"]
            kl_background = per_cell(background_kl(back, batch_index[protein_rows]), protein_rows)
        px_uni = generative_outputs.get(MODULE_KEYS.PX_UNIMODAL) or {}
        qz_uni = inference_outputs.get(MODULE_KEYS.QZ_UNIMODAL)
        for j, m in enumerate(self.modalities):
            if m not in px_uni:
                continue
            # subset term of modality m: cells with m and at least one other modality
            kl = kl_divergence(qz_uni[m], standard).sum(-1)
            kl_uni = kl_uni + kl * mask[:, j] * multi
            for k, dist in px_uni[m].items():
                k_rows = generative_outputs[MODULE_KEYS.ROWS_UNIMODAL][m][k]
                ll = self._log_likelihood(k, dist, x[k][k_rows])
                reconstruction[k] = reconstruction[k] - per_cell(ll, k_rows)
            back_m = generative_outputs[MODULE_KEYS.PROTEIN_BACKGROUND_UNIMODAL].get(m)
            if back_m is not None:
                p_rows = generative_outputs[MODULE_KEYS.ROWS_UNIMODAL][m]["protein"]
                kl_background = kl_background + per_cell(
                    background_kl(back_m, batch_index[p_rows]), p_rows
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
            generative_inputs["presence"] = None  # draw every modality for every cell
            px = self.generative(**generative_inputs)[MODULE_KEYS.PX]
            for mod in self.modalities:
                draws[mod].append(px[mod].sample().cpu())
        return {mod: torch.stack(d) for mod, d in draws.items()}


def _take_rows(cells: dict, rows: torch.Tensor) -> dict:
    """The per-cell inputs of the decoders (tensors, tuples or dicts of them) at ``rows``."""
    taken = {}
    for key, value in cells.items():
        if value is None:
            taken[key] = None
        elif isinstance(value, dict):
            taken[key] = {k: v[rows] for k, v in value.items()}
        elif isinstance(value, tuple):
            taken[key] = tuple(v[rows] for v in value)
        else:
            taken[key] = value[rows]
    return taken
