"""The multimodal VAE: per-modality experts, their fusion (PoE, MoE, MoPoE), ELBO or MVTCAE."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from torch.distributions import Normal

from mosaicvi._constants import MODALITY_REGISTRY_KEYS, MODULE_KEYS, REGISTRY_KEYS
from mosaicvi.nn import (
    FUSIONS,
    ATACDecoder,
    Fusion,
    GaussianMixture,
    ModalityExpert,
    ProteinDecoder,
    RNADecoder,
    fusion_components,
    layer_widths,
    non_empty_subsets,
    product_of_experts,
    weighted_kl,
)

OBJECTIVES = ("elbo", "mvtcae")


class MosaicVAE(BaseModuleClass):
    """Multimodal VAE for any subset of RNA, ATAC and protein, with a choice of fusion.

    Each modality ``m`` has an encoder giving a Gaussian expert ``q_m(z | x_m)``. The
    posterior of a cell combines the experts of the modalities it has (``fusion``):

    - ``"poe"``: their product, with a standard-normal prior expert under the ELBO
      (MVAE, Wu & Goodman 2018) and without it under MVTCAE (Hwang et al. 2021);
    - ``"moe"``: the mixture, with equal weights, of one component per present modality
      (MMVAE, Shi et al. 2019);
    - ``"mopoe"``: the mixture of the products of every non-empty subset of the present
      modalities (MoPoE, Sutter et al. 2021).

    Under the ELBO, each mixture component (prior expert included) is sampled once per step
    (stratified sampling) and decodes every modality the cell has; the KL divergence of a
    mixture from the prior is bounded by the weighted KL of its components, as in MoPoE.
    ``"poe"`` with the ELBO adds, for cells with two or more modalities, one subset term per
    present modality ``m``: the ELBO under ``m``'s expert (times the prior) alone, so that
    the latent given a single modality is trained and usable for imputation (MVAE).

    ``objective="mvtcae"`` minimises the negative of the total-correlation objective

    ``(M - alpha)/M E_q[log p(X|z)] - beta [(1 - alpha) KL(q(z|X) || p(z))
    + alpha/M sum_j KL(q(z|X) || q_j(z|x_j))]``

    per cell, with ``M`` the number of modalities the cell has and the sum over them (a
    modality the cell lacks adds no reconstruction and no KL term). For a mixture posterior
    each KL is its weighted-component bound.

    Every term of a modality a cell lacks is exactly zero.

    Parameters
    ----------
    n_features
        Number of features per registered modality, e.g. ``{"rna": 2000, "protein": 30}``.
    n_batch
        Number of batches.
    n_latent
        Dimension of the latent space.
    n_hidden
        Width of the hidden layers, or a list of widths (e.g. ``[1300, 900]``), from the
        input inwards; decoders use them in reverse order.
    n_layers
        Number of hidden layers for an int ``n_hidden`` (default 2); ``None`` with a list.
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
        What each component of the posterior reconstructs: ``"all"`` the modalities the cell
        has, or only its ``"own"``, the modalities it was inferred from (for ``"poe"`` with
        the ELBO: MVAE's subset terms reconstruct only their modality).
    fusion
        ``"poe"``, ``"moe"`` or ``"mopoe"``.
    objective
        ``"elbo"`` or ``"mvtcae"``.
    alpha, beta
        MVTCAE's weights (``objective="mvtcae"``): ``alpha`` in [0, 1] trades the prior KL
        for the KL to each modality's expert, ``beta`` > 0 scales both.
    corruption_rate
        Denoising training: the probability with which each input count of the encoders is
        set to 0 in training (the likelihood scores the clean counts). 0 disables it.
    """

    def __init__(
        self,
        n_features: dict[str, int],
        n_batch: int = 1,
        n_latent: int = 20,
        n_hidden: int | list[int] = 128,
        n_layers: int | None = None,
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
        fusion: Fusion = "poe",
        objective: Literal["elbo", "mvtcae"] = "elbo",
        alpha: float = 0.1,
        beta: float = 2.5,
        corruption_rate: float = 0.0,
    ) -> None:
        super().__init__()
        if subset_reconstruction not in ("own", "all"):
            raise ValueError(
                f"`subset_reconstruction` must be 'own' or 'all', got {subset_reconstruction!r}."
            )
        if fusion not in FUSIONS:
            raise ValueError(f"`fusion` must be one of {list(FUSIONS)}, got {fusion!r}.")
        if objective not in OBJECTIVES:
            raise ValueError(f"`objective` must be one of {list(OBJECTIVES)}, got {objective!r}.")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"`alpha` must be in [0, 1], got {alpha!r}.")
        if not beta > 0.0:
            raise ValueError(f"`beta` must be positive, got {beta!r}.")
        widths = layer_widths(n_hidden, n_layers)
        self.subset_reconstruction = subset_reconstruction
        self.fusion = fusion
        self.objective = objective
        self.alpha = alpha
        self.beta = beta
        self.corruption_rate = corruption_rate
        self.modalities = list(n_features)
        self.n_latent = n_latent
        self.n_batch = n_batch
        self.register_buffer("subsets", non_empty_subsets(len(self.modalities)), persistent=False)
        cat_list = [n_batch, *(n_cats_per_cov or [])]
        n_dec_input = n_latent + n_continuous_cov
        self.encoders = torch.nn.ModuleDict(
            {
                mod: ModalityExpert(
                    n,
                    n_latent,
                    widths,
                    n_cat_list=cat_list if encode_covariates else None,
                    n_continuous=n_continuous_cov if encode_covariates else 0,
                    dropout_rate=dropout_rate,
                    corruption_rate=corruption_rate,
                )
                for mod, n in n_features.items()
            }
        )
        self.encode_covariates = encode_covariates
        decoders = {}
        common = {"n_cat_list": cat_list, "widths": widths[::-1]}
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
            "components": inference_outputs.get(MODULE_KEYS.COMPONENTS),
            "library": inference_outputs[MODULE_KEYS.LIBRARY],
            "atac_depth": inference_outputs[MODULE_KEYS.ATAC_DEPTH],
            **self._covariates(tensors),
        }

    @staticmethod
    def _cat_list(batch_index: torch.Tensor, cat_covs: torch.Tensor | None) -> tuple:
        cats = () if cat_covs is None else torch.split(cat_covs, 1, dim=1)
        return (batch_index, *cats)

    # --------------------------------------------------------------- inference
    @property
    def prior_expert(self) -> bool:
        """Whether the products include the standard-normal prior expert (not under MVTCAE)."""
        return self.objective == "elbo"

    @auto_move_data
    def inference(
        self,
        x: dict[str, torch.Tensor],
        presence: torch.Tensor,
        batch_index: torch.Tensor,
        cat_covs: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
        given: list[str] | None = None,
        training_terms: bool = True,
    ) -> dict:
        """Experts of the present modalities and the fused posterior ``qz``.

        Parameters
        ----------
        given
            Use only these modalities' experts (default: every registered modality).
        training_terms
            Also return what the loss needs: the experts and the posterior's components
            (for ``"poe"`` with the ELBO, the subset terms' posteriors too), each sampled
            once, under ``"components"``.

        Returns
        -------
        ``qz`` (a ``Normal``, or a :class:`~mosaicvi.nn.GaussianMixture` for the mixture
        fusions), a sample ``z`` of it, ``presence`` (the experts used), the library sizes,
        the ATAC depth factor, and with ``training_terms`` ``components``: a dict with the
        component ``masks`` ``(n_components, n_cells, n_modalities)``, ``weights``
        ``(n_components, n_cells)``, ``loc`` / ``var`` / ``z``
        ``(n_components, n_cells, n_latent)`` and the experts' ``expert_loc`` /
        ``expert_var`` ``(n_modalities, n_cells, n_latent)``.
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
        subset_terms = training_terms and self.fusion == "poe" and self.objective == "elbo"
        masks, weights = fusion_components(mask, self.fusion, subset_terms, self.subsets)
        loc, comp_var = product_of_experts(mu, var, masks, prior_expert=self.prior_expert)
        if self.fusion == "poe":  # the posterior is the first component
            qz = Normal(loc[0], comp_var[0].sqrt())
            z = qz.rsample()
        else:
            qz = GaussianMixture(loc, comp_var.sqrt(), weights)
            z = qz.sample()
        outputs = {MODULE_KEYS.QZ: qz, MODULE_KEYS.Z: z, MODULE_KEYS.PRESENCE: mask}
        if training_terms:
            comp_z = Normal(loc, comp_var.sqrt()).rsample()
            if self.fusion == "poe":
                comp_z[0] = z
            outputs[MODULE_KEYS.COMPONENTS] = {
                "masks": masks,
                "weights": weights,
                "loc": loc,
                "var": comp_var,
                "z": comp_z,
                "expert_loc": mu,
                "expert_var": var,
            }
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
        """Decode ``mod`` from ``z`` for the cells ``rows`` of ``cells`` (all if ``None``)."""
        if rows is not None:
            cells = _take_rows(cells, rows)
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

    def _component_rows(self, components: dict, j: int) -> torch.Tensor:
        """Flat ``component * n_cells + cell`` indices of the decodes of modality ``j``.

        A component decodes ``j`` for the cells that have ``j`` and give it a positive weight
        (with ``subset_reconstruction="own"``, only when ``j`` is among its experts).
        """
        masks, weights = components["masks"], components["weights"]
        present = masks[:, :, j].any(0)  # the components together cover the present experts
        keep = (weights > 0) & present[None]
        if self.subset_reconstruction == "own":
            keep = keep & masks[:, :, j]
        return keep.flatten().nonzero(as_tuple=True)[0]

    @auto_move_data
    def generative(
        self,
        z: torch.Tensor,
        library: dict,
        batch_index: torch.Tensor,
        atac_depth: torch.Tensor | None = None,
        cat_covs: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
        components: dict | None = None,
        sample_background: bool = True,
        modalities: list[str] | None = None,
    ) -> dict:
        """Decode the modalities, from ``z`` or (in training) from every component's sample.

        With ``components`` (as in training), each component's sample decodes each modality
        for the cells that have it (:meth:`_component_rows`), all components of a modality
        in one batch; the distributions cover those rows, listed under ``"rows"`` as flat
        ``component * n_cells + cell`` indices. Without, ``z`` decodes every modality for
        every cell (imputation).

        Returns
        -------
        ``px`` (count distributions), ``"denoised"`` (denoised estimates), ``"rows"``, and
        the protein background posterior (mixture likelihood).
        """
        cells = {
            "library": library,
            "atac_depth": atac_depth,
            "cat_list": self._cat_list(batch_index, cat_covs),
            "cont_covs": cont_covs,
        }
        n_cells = z.shape[0]
        px, denoised, background, px_rows = {}, {}, {}, {}
        for mod in modalities or self.modalities:
            if components is None:
                z_mod, px_rows[mod], cell_rows = z, None, None
            else:
                flat = self._component_rows(components, self.modalities.index(mod))
                z_mod = components["z"].flatten(0, 1)[flat]
                px_rows[mod], cell_rows = flat, flat % n_cells
            px[mod], denoised[mod], background[mod] = self._decode(
                mod, z_mod, cells, cell_rows, sample_background
            )
        return {
            MODULE_KEYS.PX: px,
            MODULE_KEYS.DENOISED: denoised,
            MODULE_KEYS.ROWS: px_rows,
            MODULE_KEYS.PROTEIN_BACKGROUND: background.get("protein"),
        }

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
        """The negative objective per cell, with one reconstruction term per modality.

        Reconstruction terms are weighted sums over the posterior's components (each decoded
        from its own sample); ``kl_z`` is the (bound on the) KL divergence of the posterior
        from the prior; under MVTCAE ``kl_z_experts`` is ``sum_j KL(q(z|X) || q_j)``. Expects
        ``generative`` to have been called with the ``components`` (as ``forward`` does).
        """
        comp = inference_outputs[MODULE_KEYS.COMPONENTS]
        weights = comp["weights"]
        n_components, n_cells = weights.shape
        flat_weights = weights.flatten()
        batch_index = tensors[REGISTRY_KEYS.BATCH]

        def per_cell(values: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
            """Weighted sum over components of per-row ``values`` at flat rows ``flat``."""
            out = weights.new_zeros(n_components * n_cells)
            out = out.index_add(0, flat, values * flat_weights[flat])
            return out.view(n_components, n_cells).sum(0)

        rows = generative_outputs[MODULE_KEYS.ROWS]
        reconstruction = {}
        for mod, dist in generative_outputs[MODULE_KEYS.PX].items():
            x = tensors[MODALITY_REGISTRY_KEYS[mod]][rows[mod] % n_cells]
            reconstruction[mod] = per_cell(-self._log_likelihood(mod, dist, x), rows[mod])
        kl_background = torch.zeros_like(weights[0])
        back = generative_outputs[MODULE_KEYS.PROTEIN_BACKGROUND]
        if back is not None:
            flat = rows["protein"]
            kl = self.decoders["protein"].background_kl(back, batch_index[flat % n_cells])
            kl_background = per_cell(kl, flat)
        kl_z = weighted_kl(comp["loc"], comp["var"], weights)
        total_rec = torch.stack(list(reconstruction.values())).sum(0) + kl_weight * kl_background
        kl_local = {"kl_z": kl_z, "kl_protein_background": kl_background}
        if self.objective == "elbo":
            loss = torch.mean(total_rec + kl_weight * kl_z)
        else:
            present = inference_outputs[MODULE_KEYS.PRESENCE].to(weights.dtype)
            n_present = present.sum(-1)
            kl_experts = sum(
                present[:, j]
                * weighted_kl(
                    comp["loc"], comp["var"], weights, comp["expert_loc"][j], comp["expert_var"][j]
                )
                for j in range(len(self.modalities))
            )
            kl_local["kl_z_experts"] = kl_experts
            alpha = self.alpha
            kl = (1 - alpha) * kl_z + alpha / n_present * kl_experts
            loss = torch.mean(
                (n_present - alpha) / n_present * total_rec + kl_weight * self.beta * kl
            )
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

        ``z`` is drawn from each cell's posterior given its present modalities; every
        modality is drawn, including those the cell lacks (imputed counts).
        """
        inference_inputs = self._get_inference_input(tensors)
        draws = {mod: [] for mod in self.modalities}
        for _ in range(n_samples):
            inference_outputs = self.inference(**inference_inputs, training_terms=False)
            generative_inputs = self._get_generative_input(tensors, inference_outputs)
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
