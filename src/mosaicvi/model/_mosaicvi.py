"""MosaicVI: the user-facing model for mosaic RNA / ATAC / protein MuData."""

from __future__ import annotations

import logging
import warnings
from typing import Literal

import numpy as np
from mudata import MuData
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin, VAEMixin

from mosaicvi._checks import check_bool, check_int
from mosaicvi._constants import REGISTRY_KEYS, counts_key
from mosaicvi.data import (
    MosaicDataSplitter,
)
from mosaicvi.module import MosaicVAE
from mosaicvi.nn import head_class, layer_widths
from mosaicvi.nn._registry import head_arguments

from ._decoding import MosaicDecodingMixin
from ._differential import MosaicDifferentialMixin
from ._gate import MosaicGateMixin
from ._getters import MosaicGetterMixin
from ._interval_calibration import MosaicIntervalCalibrationMixin
from ._intervals import MosaicIntervalMixin
from ._predictive import MosaicPredictiveMixin
from ._query import MosaicQueryMixin
from ._query_weights import FrozenQueryCallback
from ._saveload import MosaicSaveLoadMixin
from ._setup import MosaicSetupMixin
from ._trainingplan import MosaicTrainingPlan

logger = logging.getLogger(__name__)

#: Training defaults chosen by the quality study (``benchmarks/quality.py``,
#: ``docs/quality.md``): the KL weight rises linearly over this share of the epochs ...
KL_WARMUP_SHARE = 0.25
#: ... up to this weight (scvi-tools: over 400 epochs whatever their number, up to 1).
MAX_KL_WEIGHT = 0.25


def default_max_epochs(n_cells: int) -> int:
    """``max_epochs`` of :meth:`~mosaicvi.MosaicVI.train` left at ``None``, from the number of cells.

    scvi-tools' rule (:func:`scvi.model.get_max_epochs_heuristic`'s formula): 400 epochs up
    to 20,000 cells, then ``400 * 20,000 / n_cells`` (at least 1), about 62,500 minibatches
    of 128 cells.
    """
    check_int("n_cells", n_cells, minimum=1)
    return max(1, min(400, round(20_000 / n_cells * 400)))


class MosaicVI(
    MosaicSetupMixin,
    MosaicSaveLoadMixin,
    MosaicQueryMixin,
    MosaicDifferentialMixin,
    MosaicIntervalCalibrationMixin,
    MosaicIntervalMixin,
    MosaicPredictiveMixin,
    MosaicGetterMixin,
    MosaicDecodingMixin,
    MosaicGateMixin,
    VAEMixin,
    UnsupervisedTrainingMixin,
    BaseModelClass,
):
    """Integration and imputation of mosaic RNA, ATAC and protein data with a Product of Experts.

    One encoder per modality gives a Gaussian expert; by default the experts of the modalities
    a cell has are multiplied with a standard-normal prior expert into its joint posterior
    (``fusion="poe"``), trained with the ELBO plus MVAE subset terms. Mixture fusions and the
    MVTCAE objective are options (see :class:`~mosaicvi.module.MosaicVAE` and the ablation in
    the benchmarks page). Decoders use count likelihoods fit for each modality. Cells may have
    any non-empty subset of the registered modalities, and the MuData need not be padded.

    Parameters
    ----------
    mdata
        MuData registered with :meth:`~mosaicvi.MosaicVI.setup_mudata`.
    n_latent
        Dimension of the latent space.
    n_hidden
        Width of the hidden layers, or a list of widths for stacked layers of different
        sizes (e.g. ``[1300, 900]``, Maui-style), from the input inwards; the decoders mirror
        them.
    n_layers
        Number of hidden layers in encoders and decoders for an int ``n_hidden``
        (``None``: 2). Leave ``None`` with a list.
    dropout_rate
        Dropout rate of the encoders.
    gene_likelihood
        RNA likelihood: ``"nb"`` (default), ``"zinb"`` or ``"poisson"``. This and the next
        five arguments are keyword arguments read by the head of their data type (its class's
        ``model_arguments``, :class:`~mosaicvi.nn.ModalityHead`), which owns their defaults
        and checks; a new head declares its own.
    dispersion
        RNA dispersion: ``"gene"`` (default) or ``"gene-batch"``.
    atac_likelihood
        ATAC likelihood: ``"bernoulli"`` (default; PeakVI, region and cell factors) or
        ``"poisson"``.
    atac_closed_cells
        With the Bernoulli ATAC likelihood, training scores every cell's open regions
        exactly and the closed regions' term for this share of a minibatch's cells (drawn
        at random, weighted by the inverse share: unbiased; see
        :class:`~mosaicvi.nn.SampledPeakBernoulli`), so that a step decodes every region for
        a quarter of the cells only. ``"auto"`` (default): 0.25 for the Bernoulli
        likelihood with at least 1,000 regions (every cell below, where a full-width decode
        is cheap), nothing for the Poisson one (which has no sampled estimator). ``None``
        or 1 scores every cell's every region (the exact likelihood, as validation and the
        getters always do).
    atac_closed_samples
        Instead of ``atac_closed_cells``: the closed term of every cell from this many
        regions drawn per minibatch, in proportion to how often each is open, with
        importance weights (unbiased); a step's cost then follows the open regions. At equal
        epochs it learned less than the default on SNARE-seq (``docs/benchmarks.md``).
    protein_likelihood
        Protein likelihood: ``"mixture"`` (default; totalVI background + foreground) or
        ``"nb"``.
        The mixture separates foreground from background (the denoised protein); ``"nb"``
        imputed raw protein counts from RNA more accurately in our benchmark
        (``benchmarks/protein_imputation.py``, see ``docs/model.md``).
    encode_covariates
        Whether the encoders also see batch and covariates.
    fusion
        How the experts of a cell's modalities are combined: ``"poe"`` (product of experts),
        ``"moe"`` (mixture of experts, MMVAE) or ``"mopoe"`` (mixture of the products of every
        subset, MoPoE).
    objective
        ``"elbo"`` (the ELBO; with ``"poe"``, plus the MVAE subset terms) or ``"mvtcae"`` (the
        total-correlation objective of MVTCAE, with ``alpha`` and ``beta``).
    alpha, beta
        MVTCAE's weights (``objective="mvtcae"`` only).
    corruption_rate
        Denoising training: probability with which each input count of the encoders is set
        to 0 during training; the decoders reconstruct the clean counts.
    **module_kwargs
        Passed to :class:`~mosaicvi.module.MosaicVAE`, e.g. ``subset_terms="sampled"`` to
        draw one subset term per cell in training instead of computing every one (at equal
        epochs it cost the protein-only PBMC donor some label-transfer accuracy; see
        ``docs/model.md``), ``subset_weight`` (the subset terms' weight, 1 by default) or
        ``encoder_input="normalized"`` (experts read library-normalised counts); both were
        measured in ``docs/quality.md``.

    Examples
    --------
    >>> import mosaicvi
    >>> mdata = mosaicvi.data.load_pbmc_cite_mosaic()
    >>> mosaicvi.MosaicVI.setup_mudata(
    ...     mdata, modalities={"rna": "rna", "protein": "protein"}, batch_key="batch"
    ... )
    >>> model = mosaicvi.MosaicVI(mdata)
    >>> model.train()
    >>> mdata.obsm["X_mosaicvi"] = model.get_latent_representation()
    """

    _module_cls = MosaicVAE
    _training_plan_cls = MosaicTrainingPlan
    _data_splitter_cls = MosaicDataSplitter

    def __init__(
        self,
        mdata: MuData,
        n_latent: int = 20,
        n_hidden: int | list[int] = 128,
        n_layers: int | None = None,
        dropout_rate: float = 0.1,
        *,
        encode_covariates: bool = False,
        fusion: Literal["poe", "moe", "mopoe"] = "poe",
        objective: Literal["elbo", "mvtcae"] = "elbo",
        alpha: float = 0.1,
        beta: float = 2.5,
        corruption_rate: float = 0.0,
        **module_kwargs,
    ) -> None:
        check_int("n_latent", n_latent, minimum=1)
        widths = layer_widths(n_hidden, n_layers)  # checks n_hidden and n_layers
        if not 0 <= dropout_rate < 1:
            raise ValueError(f"`dropout_rate` must be in [0, 1), got {dropout_rate!r}.")
        super().__init__(mdata)
        manager = self.adata_manager
        modalities = manager.modalities
        n_batch = self.summary_stats.n_batch
        n_features = {
            mod: manager.get_state_registry(counts_key(mod))["n_vars"] for mod in modalities
        }
        n_cats_per_cov = manager.get_state_registry(REGISTRY_KEYS.CAT_COVS).get(
            "n_cats_per_key", []
        )
        # each head reads its own arguments (its ``model_arguments``); the rest go to the
        # module (``module_kwargs`` itself stays whole: it is saved with the model)
        options_of, rest = head_arguments(module_kwargs, modalities)
        head_options = {}
        feature_masks = manager.feature_masks()
        for mod in modalities:
            options = options_of[mod]
            cls, own = head_class(mod).variant(**options)
            if mod in feature_masks:
                own = {**own, "feature_mask": feature_masks[mod]}
            data = cls.data_options(*manager.measured_counts(mod), n_batch, **own)
            head_options[mod] = {**options, **data}
        self.module = self._module_cls(
            n_features=n_features,
            n_batch=n_batch,
            n_latent=n_latent,
            n_hidden=n_hidden,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            n_cats_per_cov=list(n_cats_per_cov),
            n_continuous_cov=self.summary_stats.get("n_extra_continuous_covs", 0),
            encode_covariates=encode_covariates,
            head_options=head_options,
            fusion=fusion,
            objective=objective,
            alpha=alpha,
            beta=beta,
            corruption_rate=corruption_rate,
            feature_masks=feature_masks,
            nan_modalities=manager.nan_modalities(),
            **rest,
        )
        #: batches with cells measured in each modality (saved with the model): decoders have
        #: learned a batch's effect on a modality only if that batch measured it
        categories = manager.batch_categories()
        codes, mask = manager.batch_codes(), manager.presence()
        self.measured_batches_ = {
            mod: [categories[c] for c in np.unique(codes[mask[:, j]])]
            for j, mod in enumerate(modalities)
        }
        #: offsets of calibrated predictive intervals (``calibrate_intervals``), saved too
        self.interval_calibration_ = {}
        cells = manager.get_state_registry(REGISTRY_KEYS.PRESENCE)["n_cells_per_modality"]
        objective_text = objective
        if objective == "mvtcae":
            objective_text += f" (alpha {alpha}, beta {beta})"
        parts = [
            "modalities " + ", ".join(f"{m} ({cells[m]} cells)" for m in modalities),
            f"n_latent {n_latent}",
            f"hidden layers {widths}",
            f"fusion {fusion}",
            f"objective {objective_text}",
            *([f"input corruption {corruption_rate}"] if corruption_rate else []),
            f"{self.summary_stats.n_batch} batch(es)",
            "likelihoods "
            + ", ".join(
                f"{m}: {options_of[m]['likelihood']}"
                for m in modalities
                if "likelihood" in options_of[m]
            ),
        ]
        self._model_summary_string = "MosaicVI: " + "; ".join(parts)
        self.init_params_ = self._get_init_params(locals())
        # getters on an untrained model (scvi-tools' get_elbo among them) use the exact
        # likelihood; the training plan puts the module in training mode when fit starts
        self.module.eval()

    def train(
        self,
        max_epochs: int | None = None,
        *,
        data_on_device: bool = False,
        chunk_size: int | None = None,
        datasplitter_kwargs: dict | None = None,
        **kwargs,
    ):
        """Train the model: :meth:`scvi.model.base.UnsupervisedTrainingMixin.train` plus two options.

        By default the KL weight rises linearly over the first quarter of the run's
        minibatches to 0.25 (``KL_WARMUP_SHARE``, ``MAX_KL_WEIGHT`` in ``mosaicvi.model``;
        :class:`~mosaicvi.model.MosaicTrainingPlan`'s ``kl_warmup_share``), the quality
        study's choice (``docs/quality.md``); scvi-tools warms it up over 400 epochs to 1
        whatever ``max_epochs``. ``plan_kwargs`` overrides either (``kl_warmup_share``,
        ``n_epochs_kl_warmup`` or ``n_steps_kl_warmup``, ``max_kl_weight``;
        ``{"n_epochs_kl_warmup": 400, "max_kl_weight": 1.0}`` is scvi-tools' schedule). The
        schedule is not stored with the model: a query of
        :meth:`~mosaicvi.MosaicVI.load_query_data`, or a model trained again, gets the
        default unless ``plan_kwargs`` repeats the reference's.

        Parameters
        ----------
        max_epochs
            Passes through the data; by default scvi-tools' rule from the number of cells
            (:func:`~mosaicvi.model.default_max_epochs`).
        data_on_device
            Copy the count matrices (sparse ones as CSR arrays) and per-cell arrays to the
            training device once and gather each minibatch there, instead of reading it on the
            host and copying it every step. For data that fit in the device's memory; the
            matrices must be in memory (not backed). Same minibatches from the same seed.
        chunk_size
            Shuffle chunks of this many consecutive cells instead of single cells, so that a
            minibatch read from a backed h5mu is a few runs of rows
            (:class:`~mosaicvi.data.ChunkedBatchSampler`). ``None``: 64 when a count matrix
            is backed, single cells otherwise; ``0``: single cells.
        datasplitter_kwargs
            More arguments of :class:`~mosaicvi.data.MosaicDataSplitter`.
        **kwargs
            :meth:`~scvi.model.base.UnsupervisedTrainingMixin.train`'s other arguments
            (``accelerator``, ``devices``, ``batch_size``, ``plan_kwargs``, ``precision``, ...).
            A query model of :meth:`~mosaicvi.MosaicVI.load_query_data` trains with ``weight_decay=0`` unless
            ``plan_kwargs`` sets it; its frozen weights stay the reference's whatever
            ``plan_kwargs`` says (their values are written back after each step).
        """
        if max_epochs is None:
            max_epochs = default_max_epochs(self.adata.n_obs)
        check_int("max_epochs", max_epochs, minimum=1)
        max_epochs = int(max_epochs)  # a numpy integer fails inside Lightning
        plan_kwargs = kwargs.pop("plan_kwargs", None)
        plan_kwargs = {} if plan_kwargs is None else plan_kwargs
        if not isinstance(plan_kwargs, dict):
            raise TypeError(f"`plan_kwargs` must be a dict, got {plan_kwargs!r}.")
        plan_kwargs = dict(plan_kwargs)  # the caller's dict is not modified
        # the KL warm-up over a share of this run's minibatches, up to the study's weight
        if "kl_warmup_share" in plan_kwargs and plan_kwargs["kl_warmup_share"] is None:
            raise ValueError(
                "`kl_warmup_share` must be a number in [0, 1] (0: no warm-up), got None."
            )
        if {"n_epochs_kl_warmup", "n_steps_kl_warmup", "kl_warmup_share"}.isdisjoint(plan_kwargs):
            plan_kwargs["kl_warmup_share"] = KL_WARMUP_SHARE
        elif "n_steps_kl_warmup" in plan_kwargs:  # scvi-tools' 400 epochs would take precedence
            plan_kwargs.setdefault("n_epochs_kl_warmup", None)
        plan_kwargs.setdefault("max_kl_weight", MAX_KL_WEIGHT)
        if getattr(self, "_query_frozen", False):
            plan_kwargs.setdefault("weight_decay", 0.0)
            # the frozen entries are written back after each step, whatever the optimizer does
            callbacks = list(kwargs.pop("callbacks", None) or [])
            kwargs["callbacks"] = [*callbacks, FrozenQueryCallback(self._query_guards)]
        # monitor the objective (at the final KL weight), not the ELBO alone: under "poe" the
        # subset terms train the single-modality experts that `given=` and imputation use
        kwargs.setdefault("early_stopping_monitor", "objective_validation")
        plan_kwargs.setdefault("lr_scheduler_metric", "objective_validation")
        kwargs["plan_kwargs"] = plan_kwargs
        if chunk_size is not None:
            check_int("chunk_size", chunk_size, minimum=0)
        check_bool("data_on_device", data_on_device)
        train_size = kwargs.get("train_size")
        no_validation = train_size is not None and train_size >= 1.0
        for option, wanted in (
            ("early_stopping=True", kwargs.get("early_stopping")),
            (
                'plan_kwargs={"reduce_lr_on_plateau": True}',
                plan_kwargs.get("reduce_lr_on_plateau"),
            ),
        ):
            if wanted and no_validation:
                raise ValueError(
                    f"`{option}` monitors the validation objective: it needs a validation set "
                    "(`train_size` below 1)."
                )
        if getattr(self, "interval_calibration_", None):
            warnings.warn(
                "Training changes the model: the interval calibration fit before "
                f"({sorted(self.interval_calibration_)}) is dropped. Run `calibrate_intervals` "
                "again after training.",
                UserWarning,
                stacklevel=2,
            )
            self.interval_calibration_ = {}
        self._read_nan(self.adata_manager.check_data())
        datasplitter_kwargs = {
            "data_on_device": data_on_device,
            "chunk_size": chunk_size,
            **(datasplitter_kwargs or {}),
        }
        try:
            result = super().train(
                max_epochs=max_epochs, datasplitter_kwargs=datasplitter_kwargs, **kwargs
            )
        except BaseException:  # an error or an interrupt (SystemExit) part-way
            self._remember_split(failed=True)
            raise
        finally:  # also after a failed run: getters use the exact (evaluation) path
            self.module.eval()
        self._remember_split()
        return result

    @property
    def registered_modalities(self) -> list[str]:
        """The data types this model was set up with, in canonical order."""
        return self.adata_manager.modalities
