"""The multimodal VAE: modality heads, the fusion of their experts (PoE, MoE, MoPoE), ELBO or MVTCAE."""

from __future__ import annotations

import numbers
import warnings
from typing import Literal

import torch
from scvi.module.base import BaseModuleClass, auto_move_data

from mosaicvi._constants import COMPONENT_KEYS, MODULE_KEYS
from mosaicvi.nn import (
    FUSIONS,
    Covariates,
    Fusion,
    fuse,
    head_class,
    layer_widths,
    non_empty_subsets,
)

from ._inputs import MosaicInputsMixin
from ._objective import MosaicObjectiveMixin
from ._posterior import PosteriorAPIMixin

OBJECTIVES = ("elbo", "mvtcae")


class MosaicVAE(PosteriorAPIMixin, MosaicInputsMixin, MosaicObjectiveMixin, BaseModuleClass):
    """Multimodal VAE over modality heads, with a choice of fusion.

    Each registered modality ``m`` has a head (:class:`~mosaicvi.nn.ModalityHead`, found by
    data type in :data:`~mosaicvi.nn.HEADS`) that holds its expert ``q_m(z | x_m)``, its
    per-cell context, its decoder and likelihood; this class loops over the heads and names
    no modality. The
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

    Every term of a modality a cell lacks is exactly zero. A head with its own per-cell
    latent variables (the protein background) adds their KL, ``kl_<modality>_<name>``.

    Parameters
    ----------
    n_features
        Number of features of each registered data type (a key of
        :data:`~mosaicvi.nn.HEADS`), in the order of the presence mask's columns.
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
    head_options
        Keyword arguments of each data type's head class, by data type, such as its
        ``likelihood`` (see :class:`~mosaicvi.nn.RNAHead`, :class:`~mosaicvi.nn.ATACHead`,
        :class:`~mosaicvi.nn.ProteinHead`); :class:`~mosaicvi.MosaicVI` fills them from its
        arguments.
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
    subset_terms
        ``"poe"`` with the ELBO: ``"all"`` (default) computes every subset term;
        ``"sampled"`` draws, in training, one of a cell's subset terms uniformly and weights
        it by the number of its modalities (an unbiased estimate of their sum, so a step
        decodes each modality of a paired cell twice instead of once per modality plus one).
        Validation and :meth:`~mosaicvi.MosaicVI.get_elbo` compute every one. Other fusions
        and objectives have no subset terms: the option does nothing there.
    subset_weight
        Weight of the subset terms in the objective (1: MVAE's sum; 0: none, the ELBO
        alone). The logged ``subset_*`` terms include the weight; at 0 they are neither
        decoded nor logged.
    encoder_input
        ``"counts"`` (``log1p`` of the counts, as scVI) or ``"normalized"`` (``log1p`` of the
        counts scaled to 10,000 per cell): what the experts read
        (:class:`~mosaicvi.nn.ModalityExpert`).
    feature_masks
        By data type, a boolean ``(n_batch, n_features)`` array: whether each batch measured
        each feature. Unmeasured features of a cell's batch are left out of its likelihood
        and its expert's evidence (:class:`~mosaicvi.nn.ModalityHead`); the decoders predict
        them. ``None`` or a missing data type: every feature measured.
    nan_modalities
        Data types whose counts may hold NaN (single unmeasured entries, found per minibatch).
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
        head_options: dict[str, dict] | None = None,
        subset_reconstruction: Literal["own", "all"] = "all",
        fusion: Fusion = "poe",
        objective: Literal["elbo", "mvtcae"] = "elbo",
        alpha: float = 0.1,
        beta: float = 2.5,
        corruption_rate: float = 0.0,
        subset_terms: Literal["sampled", "all"] = "all",
        subset_weight: float = 1.0,
        encoder_input: Literal["counts", "normalized"] = "counts",
        feature_masks: dict | None = None,
        nan_modalities: list[str] | None = None,
    ) -> None:
        super().__init__()
        if (
            isinstance(subset_weight, bool)
            or not isinstance(subset_weight, numbers.Real)
            or not 0.0 <= subset_weight <= 1e6
        ):
            raise ValueError(
                f"`subset_weight` must be a number in [0, 1e6], got {subset_weight!r}."
            )
        if subset_weight != 1.0 and (fusion != "poe" or objective != "elbo"):
            warnings.warn(
                f"`subset_weight` has no effect with fusion={fusion!r} and "
                f"objective={objective!r}: only 'poe' with 'elbo' has subset terms.",
                UserWarning,
                stacklevel=2,
            )
        if subset_terms not in ("sampled", "all"):
            raise ValueError(f"`subset_terms` must be 'sampled' or 'all', got {subset_terms!r}.")
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
        head_options = head_options or {}
        feature_masks = dict(feature_masks or {})
        nan_modalities = list(nan_modalities or [])
        for arg, names in (
            ("head_options", head_options),
            ("feature_masks", feature_masks),
            ("nan_modalities", nan_modalities),
        ):
            extra = set(names) - set(n_features)
            if extra:
                raise ValueError(f"`{arg}` names data type(s) {sorted(extra)} not registered.")
        widths = layer_widths(n_hidden, n_layers)
        self.subset_reconstruction = subset_reconstruction
        self.subset_terms = subset_terms
        self.subset_weight = float(subset_weight)
        #: KL weight of the logged ``objective`` (the training plan sets its ``max_kl_weight``)
        self.objective_kl_weight = 1.0
        self.fusion = fusion
        self.objective = objective
        self.alpha = alpha
        self.beta = beta
        self.corruption_rate = corruption_rate
        self.encode_covariates = encode_covariates
        self.n_latent = n_latent
        self.n_batch = n_batch
        self.register_buffer("subsets", non_empty_subsets(len(n_features)), persistent=False)
        common = {
            "n_cats_per_cov": list(n_cats_per_cov or []),
            "n_continuous_cov": n_continuous_cov,
            "encode_covariates": encode_covariates,
            "dropout_rate": dropout_rate,
            "corruption_rate": corruption_rate,
            "encoder_input": encoder_input,
        }
        heads = {}
        for mod, n in n_features.items():
            cls, options = head_class(mod).variant(**head_options.get(mod, {}))
            masks = {}
            if feature_masks.get(mod) is not None:
                masks["feature_mask"] = feature_masks[mod]
            if mod in nan_modalities:
                masks["nan_entries"] = True
            heads[mod] = cls(n, n_latent, n_batch, widths, **common, **masks, **options)
        self.heads = torch.nn.ModuleDict(heads)

    @property
    def modalities(self) -> list[str]:
        """The data types of the heads, in the order of the presence mask's columns."""
        return list(self.heads)

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
        covariates: Covariates,
        measured: dict[str, torch.Tensor] | None = None,
        given: list[str] | None = None,
        training_terms: bool = True,
    ) -> dict:
        """Experts of the present modalities, the fused posterior ``qz`` and each head's context.

        Parameters
        ----------
        x
            Counts of each modality, ``(n_cells, n_features)`` (any values where absent).
        presence
            ``(n_cells, n_modalities)``, which cell has which modality.
        covariates
            The cells' batch and covariates.
        measured
            By modality, where some entries are unmeasured, the boolean mask of the measured
            ones (``x`` holds 0 at the others).
        given
            Use only these modalities' experts (default: every registered modality). The
            context follows ``presence``, not ``given``.
        training_terms
            Also return what the loss needs: the experts and the posterior's components
            (for ``"poe"`` with the ELBO, the subset terms' posteriors too), each sampled
            once, under ``"components"``.

        Returns
        -------
        ``qz`` (a ``Normal``, or a :class:`~mosaicvi.nn.GaussianMixture` for the mixture
        fusions), a sample ``z`` of it, ``presence`` (the experts used), ``context`` (each
        head's per-cell context), ``x`` and ``measured`` (the inputs, for the loss), and
        with ``training_terms`` ``components``: a dict (keys ``COMPONENT_KEYS``) with the
        component ``masks``
        ``(n_components, n_cells, n_modalities)``, ``weights`` ``(n_components, n_cells)``,
        ``loc`` / ``var`` / ``z`` ``(n_components, n_cells, n_latent)`` and the experts'
        ``expert_loc`` / ``expert_var`` ``(n_modalities, n_cells, n_latent)``.
        """
        present = presence.to(torch.bool)
        mask = present
        if given is not None:
            keep = torch.tensor([m in given for m in self.heads], device=mask.device)
            mask = mask & keep
        mus, variances, context = [], [], {}
        for j, (mod, head) in enumerate(self.heads.items()):
            mu, var = head.encode(x[mod], mask[:, j], covariates, (measured or {}).get(mod))
            mus.append(mu)
            variances.append(var)
            context[mod] = head.context(x[mod], present[:, j], covariates)
        subset_terms = (
            training_terms
            and self.fusion == "poe"
            and self.objective == "elbo"
            and self.subset_weight > 0
        )
        qz, z, components = fuse(
            torch.stack(mus),
            torch.stack(variances),
            mask,
            self.fusion,
            self.prior_expert,
            subset_terms,
            self.subsets,
            training_terms,
            sample_subset_terms=subset_terms and self.training and self.subset_terms == "sampled",
            subset_weight=self.subset_weight,
        )
        outputs = {
            MODULE_KEYS.QZ: qz,
            MODULE_KEYS.Z: z,
            MODULE_KEYS.PRESENCE: mask,
            MODULE_KEYS.CONTEXT: context,
            # the counts read (unmeasured entries at 0) and their masks, for the loss
            MODULE_KEYS.X: x,
            MODULE_KEYS.MEASURED: measured or {},
        }
        if training_terms:
            outputs[MODULE_KEYS.COMPONENTS] = components
        return outputs

    # -------------------------------------------------------------- generative
    def _component_rows(self, components: dict, j: int) -> torch.Tensor:
        """Flat ``component * n_cells + cell`` indices of the decodes of modality ``j``.

        A component decodes ``j`` for the cells that have ``j`` and give it a positive weight
        (with ``subset_reconstruction="own"``, only when ``j`` is among its experts).
        """
        masks, weights = components[COMPONENT_KEYS.MASKS], components[COMPONENT_KEYS.WEIGHTS]
        present = masks[:, :, j].any(0)  # the components together cover the present experts
        keep = (weights > 0) & present[None]
        if self.subset_reconstruction == "own":
            keep = keep & masks[:, :, j]
        return keep.flatten().nonzero(as_tuple=True)[0]

    @auto_move_data
    def generative(
        self,
        z: torch.Tensor,
        context: dict[str, torch.Tensor],
        covariates: Covariates,
        components: dict | None = None,
        sample_local: bool = True,
    ) -> dict:
        """Decode every modality, from ``z`` or (in training) from every component's sample.

        With ``components`` (as in training), each component's sample decodes each modality
        for the cells that have it (``_component_rows``), all components of a modality
        in one batch; the distributions cover those rows, listed under ``"rows"`` as flat
        ``component * n_cells + cell`` indices. Without, ``z`` decodes every modality for
        every cell (imputation; see :meth:`decode` for one modality).

        Returns
        -------
        ``px`` (count distributions), ``"denoised"`` (denoised estimates), ``"rows"`` and
        ``"local"`` (each head's own latent variables, e.g. the protein background), each a
        dict by modality.
        """
        n_cells = z.shape[0]
        outputs = {key: {} for key in (MODULE_KEYS.PX, MODULE_KEYS.DENOISED, MODULE_KEYS.LOCAL)}
        rows = {}
        for j, (mod, head) in enumerate(self.heads.items()):
            if components is None:
                rows[mod] = None
                out = head.decode(z, context[mod], covariates, sample_local)
            else:
                rows[mod] = self._component_rows(components, j)
                cells = rows[mod] % n_cells
                z_rows = components[COMPONENT_KEYS.Z].flatten(0, 1)[rows[mod]]
                out = head.decode(
                    z_rows, context[mod][cells], covariates.take(cells), sample_local
                )
            outputs[MODULE_KEYS.PX][mod] = out.px
            outputs[MODULE_KEYS.DENOISED][mod] = out.denoised
            outputs[MODULE_KEYS.LOCAL][mod] = out.local
        return {**outputs, MODULE_KEYS.ROWS: rows}
