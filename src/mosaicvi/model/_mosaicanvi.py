"""MosaicANVI: MosaicVI with cell-type labels (semi-supervised, scANVI's classification term)."""

from __future__ import annotations

import logging
import numbers
import warnings
from copy import deepcopy

import numpy as np
from mudata import MuData

from mosaicvi._compat import SETUP_ARGS_KEY
from mosaicvi._constants import REGISTRY_KEYS, counts_key
from mosaicvi.data._features import unmeasured_features
from mosaicvi.data._labels import LabelsField
from mosaicvi.data._validation import check_bool, check_is_mudata
from mosaicvi.module._mosaicanvae import MosaicANVAE

from ._labels import MIN_CALIBRATION_CELLS, MosaicLabelMixin
from ._mosaicvi import MosaicVI, _check_mapping, default_max_epochs

logger = logging.getLogger(__name__)


def pretrained_max_epochs(n_cells: int) -> int:
    """``max_epochs`` of :meth:`~mosaicvi.MosaicANVI.train` left at ``None`` after ``from_mosaicvi_model``.

    An eighth of :func:`~mosaicvi.model.default_max_epochs` (at least 2): 50 epochs up to
    20,000 cells, the budget of ``benchmarks/labels.py`` on PBMC.
    """
    return max(2, round(default_max_epochs(n_cells) / 8))


class MosaicANVI(MosaicLabelMixin, MosaicVI):
    """MosaicVI with cell-type labels: label transfer from any subset of modalities.

    Semi-supervised like scANVI: a classifier ``q(y | z)`` reads the Product-of-Experts
    latent, and its cross-entropy on the labeled cells, times ``classification_ratio``,
    joins MosaicVI's objective (:class:`~mosaicvi.module.MosaicANVAE`). Each labeled cell is
    classified from its joint posterior and, when it has several modalities, from each
    modality's own posterior (the subset terms'), so that cells measured in any one
    modality are predicted from a latent the classifier was trained on. Labeled cells may
    have any subset of the modalities. scANVI's labels in the generative model (a
    label-conditioned prior) are not used: ``docs/model.md`` says why and what was measured.

    :meth:`predict` gives labels or probabilities, :meth:`predict_sets` conformal
    prediction sets. After :meth:`train`, the labeled cells of the validation set (held out
    of training) calibrate both, for each combination of modalities a prediction can read
    (:meth:`calibrate`). Start from a trained MosaicVI with :meth:`from_mosaicvi_model`;
    map a query with :meth:`~mosaicvi.MosaicVI.load_query_data` (its cells unlabeled, new
    batches).

    Parameters
    ----------
    mdata
        MuData registered with :meth:`setup_mudata`.
    classification_ratio
        Weight of the classification term (scANVI's default, 50).
    linear_classifier
        A linear classifier instead of one hidden layer of ``n_hidden`` (an int) units.
    **model_kwargs
        :class:`~mosaicvi.MosaicVI`'s arguments (``n_latent``, ``n_hidden``, likelihoods, ...).

    Examples
    --------
    >>> mosaicvi.MosaicANVI.setup_mudata(
    ...     mdata,
    ...     modalities={"rna": "rna", "protein": "protein"},
    ...     labels_key="celltype",
    ...     unlabeled_category="Unknown",
    ...     batch_key="batch",
    ... )
    >>> model = mosaicvi.MosaicANVI(mdata)
    >>> model.train()
    >>> mdata.obs["predicted"] = model.predict()
    >>> sets = model.predict_sets(level=0.9)
    """

    _module_cls = MosaicANVAE
    _query_kept_attributes = ("label_calibration_",)

    def __init__(
        self,
        mdata: MuData,
        classification_ratio: float = 50.0,
        linear_classifier: bool = False,
        **model_kwargs,
    ) -> None:
        check_bool("linear_classifier", linear_classifier)
        reserved = {"n_labels", "classification_ratio", "classifier_hidden", "classifier_layers"}
        if reserved & set(model_kwargs):
            raise TypeError(f"{sorted(reserved & set(model_kwargs))} are set by MosaicANVI.")
        manager = self._get_most_recent_anndata_manager(mdata)
        if manager is None or REGISTRY_KEYS.LABELS not in manager.data_registry:
            raise ValueError(
                "The MuData was not set up with labels: use "
                "`MosaicANVI.setup_mudata(mdata, modalities=..., labels_key=..., "
                "unlabeled_category=...)`."
            )
        if model_kwargs.get("fusion", "poe") != "poe":
            raise ValueError(
                "MosaicANVI classifies the Product-of-Experts posterior: `fusion` must be "
                f"'poe', got {model_kwargs['fusion']!r}."
            )
        n_hidden = model_kwargs.get("n_hidden", 128)
        width = n_hidden[-1] if isinstance(n_hidden, list | tuple) else n_hidden
        super().__init__(
            mdata,
            n_labels=manager.summary_stats["n_labels"],
            classification_ratio=classification_ratio,
            classifier_hidden=0 if linear_classifier else int(width),
            classifier_layers=0 if linear_classifier else 1,
            **model_kwargs,
        )
        #: temperature and conformal scores per combination of modalities (``calibrate``)
        self.label_calibration_ = {}
        self._model_summary_string = (
            self._model_summary_string.replace("MosaicVI:", "MosaicANVI:", 1)
            + f"; {len(self.label_categories)} labels (classification ratio {classification_ratio})"
        )
        self.init_params_ = self._get_init_params(locals())

    @classmethod
    def setup_mudata(
        cls,
        mdata: MuData,
        modalities: dict[str, str],
        labels_key: str,
        unlabeled_category: str,
        layers: dict[str, str | None] | None = None,
        batch_key: str | None = None,
        categorical_covariate_keys: list[str] | None = None,
        continuous_covariate_keys: list[str] | None = None,
        presence_keys: dict[str, str] | None = None,
        feature_masks: dict | None = None,
        infer_feature_masks: bool = True,
        **kwargs,
    ) -> None:
        """Register a (possibly unpadded, mosaic) MuData with labels.

        :meth:`MosaicVI.setup_mudata <mosaicvi.MosaicVI.setup_mudata>`'s arguments, plus:

        Parameters
        ----------
        labels_key
            Column of ``mdata.obs`` with each cell's label; cells of any subset of the
            modalities may be labeled.
        unlabeled_category
            The value of that column marking unlabeled cells (e.g. ``"Unknown"``). At least
            one cell must be labeled, with at least two labels. If no cell has this value,
            every cell is labeled (a warning; an error when a label differs from it only in
            case or spaces, likely a typo).
        """
        check_is_mudata(mdata)
        _check_mapping("modalities", modalities, "{'rna': 'rna', 'protein': 'adt'}")
        check_bool("infer_feature_masks", infer_feature_masks)
        if not isinstance(labels_key, str):
            raise TypeError(f"`labels_key` must be a column name (a string), got {labels_key!r}.")
        if not isinstance(unlabeled_category, str | numbers.Number) or isinstance(
            unlabeled_category, bool
        ):
            raise TypeError(
                "`unlabeled_category` must be the value marking unlabeled cells (a string such "
                f"as 'Unknown'), got {unlabeled_category!r}."
            )
        unlabeled_category = str(unlabeled_category)
        feature_masks = unmeasured_features(feature_masks, modalities)  # the saved form
        setup_method_args = cls._get_setup_method_args(**locals())
        labels = LabelsField(REGISTRY_KEYS.LABELS, labels_key, unlabeled_category)
        cls._register_mudata(mdata, setup_method_args, [labels], **kwargs)

    @classmethod
    def from_mosaicvi_model(
        cls,
        mosaicvi_model: MosaicVI,
        unlabeled_category: str,
        labels_key: str,
        adata: MuData | None = None,
        **model_kwargs,
    ) -> MosaicANVI:
        """A MosaicANVI initialised with a trained MosaicVI's weights (scANVI's ``from_scvi_model``).

        The data (``adata``, or the MosaicVI's) are set up with the MosaicVI's arguments
        plus the labels; the model takes the MosaicVI's architecture and weights, and a new
        classifier. Train it (e.g. for a few dozen epochs) before predicting.

        Parameters
        ----------
        mosaicvi_model
            A trained :class:`~mosaicvi.MosaicVI`.
        unlabeled_category, labels_key
            As :meth:`setup_mudata` (in the order of scANVI's ``from_scvi_model``).
        adata
            MuData with the same modalities, features and batches as the MosaicVI's; its own
            by default.
        **model_kwargs
            ``classification_ratio``, ``linear_classifier``, ``classify_subsets`` (of
            :class:`~mosaicvi.module.MosaicANVAE`). The architecture is the MosaicVI's: its
            arguments given here are refused.
        """
        if not isinstance(mosaicvi_model, MosaicVI) or isinstance(mosaicvi_model, MosaicANVI):
            raise TypeError(
                f"`mosaicvi_model` must be a MosaicVI model, got {type(mosaicvi_model).__name__}."
            )
        mosaicvi_model._check_if_trained(
            warn=False, message="The MosaicVI model is not trained: train it first."
        )
        own = {"classification_ratio", "linear_classifier", "classify_subsets"}
        init = deepcopy(mosaicvi_model.init_params_)
        vi_kwargs = {k: v for group in init.get("kwargs", {}).values() for k, v in group.items()}
        architecture = {**init["non_kwargs"], **vi_kwargs}
        clash = sorted(set(model_kwargs) & set(architecture))
        if clash:
            raise ValueError(
                f"{clash} come from the MosaicVI model ({ {k: architecture[k] for k in clash} }); "
                f"pass only MosaicANVI's own arguments {sorted(own)}."
            )
        unknown = sorted(set(model_kwargs) - own)
        if unknown:
            raise TypeError(f"Unknown argument(s) {unknown}; MosaicANVI's own are {sorted(own)}.")
        mdata = mosaicvi_model.adata if adata is None else adata
        check_is_mudata(mdata)
        setup_args = dict(mosaicvi_model.adata_manager.registry[SETUP_ARGS_KEY])
        cls.setup_mudata(
            mdata, labels_key=labels_key, unlabeled_category=unlabeled_category, **setup_args
        )
        vi_manager = mosaicvi_model.adata_manager
        manager = cls._get_most_recent_anndata_manager(mdata, required=True)
        if manager.batch_categories() != vi_manager.batch_categories():
            raise ValueError(
                "`adata` must have the MosaicVI model's batches, got "
                f"{manager.batch_categories()} for {vi_manager.batch_categories()}. Map new "
                "batches with `load_query_data` after training the MosaicANVI; predict other "
                "data of the same batches with `predict(adata=...)`."
            )
        for mod in vi_manager.modalities:
            key = counts_key(mod)
            ours = list(manager.get_state_registry(key)["column_names"])
            if ours != list(vi_manager.get_state_registry(key)["column_names"]):
                raise ValueError(
                    f"`adata`'s {mod} features differ from the MosaicVI model's: give data with "
                    "its features (MosaicVI.prepare_query_mudata aligns a query's)."
                )
        model = cls(mdata, **architecture, **model_kwargs)
        state = mosaicvi_model.module.state_dict()
        missing, unexpected = model.module.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("classifier.") for k in missing):
            raise ValueError(
                "The MosaicVI model's weights do not fit this data's set-up (features or "
                f"covariates differ): missing {missing[:5]}, unexpected {unexpected[:5]}."
            )
        model.measured_batches_ = deepcopy(mosaicvi_model.measured_batches_)
        model.module.eval()
        model.was_pretrained = True
        return model

    def train(
        self,
        max_epochs: int | None = None,
        *,
        calibration_batches: list[str] | None = None,
        **kwargs,
    ):
        """Train as :meth:`MosaicVI.train <mosaicvi.MosaicVI.train>`, then calibrate on held-out labels.

        With a validation set (``train_size`` below 1, scvi-tools' default 0.9), its
        labeled cells, held out of training, calibrate the probabilities and prediction
        sets (:meth:`calibrate`; at least 10 are needed, else a warning). Those cells come
        from the labeled batches: the calibration holds for cells like them. For cells of
        other donors or batches (unlabeled donors, queries), pass ``calibration_batches``:
        their labels are held out of the classification term (their cells still train the
        rest of the model, as unlabeled cells do) and calibrate the model afterwards, in the
        situation of a batch whose labels the classifier never saw (``docs/model.md``). A
        query model
        of :meth:`~mosaicvi.MosaicVI.load_query_data` (frozen) keeps the reference's
        classifier and its calibration, and any labels its data carry train nothing. A model
        of :meth:`from_mosaicvi_model` trains at the final KL weight from the first step (no
        second warm-up) unless ``plan_kwargs`` sets one, for
        :func:`~mosaicvi.model.pretrained_max_epochs` epochs unless ``max_epochs`` is given.

        Parameters
        ----------
        max_epochs
            As :meth:`MosaicVI.train <mosaicvi.MosaicVI.train>`.
        calibration_batches
            Labeled batches (names of ``batch_key``'s categories) whose labels are held out
            of training and used to calibrate; ``None``: the validation set's labeled cells.
        **kwargs
            :meth:`MosaicVI.train <mosaicvi.MosaicVI.train>`'s other arguments.
        """
        frozen = getattr(self, "_query_frozen", False)
        held_batches = self._calibration_batches(calibration_batches, frozen)
        if not frozen and not hasattr(self, "reference_batches_"):
            self._check_training_labels(held_batches)
        if self.label_calibration_ and not frozen:
            warnings.warn(
                "Training changes the model (its encoders or classifier): the label "
                "calibration fit before is dropped (a new one is fit on this training's "
                "held-out labeled cells, if any).",
                UserWarning,
                stacklevel=2,
            )
            self.label_calibration_ = {}
        if getattr(self, "was_pretrained", False):  # the MosaicVI's KL warm-up is done
            plan_kwargs = dict(kwargs.pop("plan_kwargs", None) or {})
            if {"n_epochs_kl_warmup", "n_steps_kl_warmup", "kl_warmup_share"}.isdisjoint(
                plan_kwargs
            ):
                plan_kwargs["kl_warmup_share"] = 0.0
            kwargs["plan_kwargs"] = plan_kwargs
        if kwargs.get("early_stopping_monitor") == "validation_loss":
            warnings.warn(
                "`validation_loss` includes the classification term of the validation set's "
                "labeled cells, which then calibrate the model: early stopping on it lets them "
                "choose the model. The default monitor, `objective_validation`, has no label.",
                UserWarning,
                stacklevel=2,
            )
        if max_epochs is None and getattr(self, "was_pretrained", False):
            max_epochs = pretrained_max_epochs(self.adata.n_obs)
        module = self.module
        module.held_out_batches.zero_()
        if held_batches is not None:
            module.held_out_batches[held_batches] = True
        module.holds_out_batches = held_batches is not None
        # a frozen query's labels (if its data carry any) train nothing, and its classifier
        # (batch-norm statistics included) stays the reference's
        module.train_classifier = not frozen
        try:
            result = super().train(max_epochs, **kwargs)
        finally:  # the module's buffer now (Lightning may have moved the module)
            self.module.held_out_batches.zero_()
            self.module.holds_out_batches = False
            self.module.train_classifier = True
        if frozen:
            return result
        # which labeled cells trained the classifier and which were held out (by name, for
        # `calibrate`'s default and its check; not saved: a loaded model has neither)
        obs_names = self.adata.obs_names
        labelled = self._label_codes(self.adata, np.arange(self.adata.n_obs)) < len(
            self.label_categories
        )
        in_held_batch = np.zeros(self.adata.n_obs, bool)
        if held_batches is not None:
            in_held_batch = np.isin(self.adata_manager.batch_codes(), held_batches)
        trained = np.zeros(self.adata.n_obs, bool)
        train_idx = getattr(self, "train_indices", None)
        trained[np.asarray([] if train_idx is None else train_idx, dtype=np.int64)] = True
        # the labels of every training so far trained the classifier: none of them calibrates
        before = getattr(self, "_trained_label_cells", obs_names[:0])
        self._trained_label_cells = before.union(obs_names[trained & labelled & ~in_held_batch])
        val_idx = getattr(self, "validation_indices", None)
        if held_batches is not None:
            held_out = in_held_batch & labelled
        else:
            held_out = np.zeros(self.adata.n_obs, bool)
            held_out[np.asarray([] if val_idx is None else val_idx, dtype=np.int64)] = True
            held_out &= labelled
        seen = held_out & obs_names.isin(self._trained_label_cells)
        if seen.any():
            warnings.warn(
                f"{int(seen.sum())} held-out labeled cells trained the classifier with their "
                "labels in an earlier training: they are left out of the calibration.",
                UserWarning,
                stacklevel=2,
            )
            held_out &= ~seen
        self._held_out_cells = obs_names[held_out]
        if held_out.sum() >= MIN_CALIBRATION_CELLS:
            self.calibrate(indices=np.flatnonzero(held_out))
        else:
            if held_batches is not None:
                where = f"in calibration_batches {calibration_batches}"
            elif val_idx is None and kwargs.get("train_size", 0.9) < 1:
                where = (
                    "(the validation split was made in other processes, as in multi-process "
                    "training: use `calibration_batches`)"
                )
            else:
                where = "in the validation set (a smaller `train_size`, e.g. 0.8, holds out more)"
            warnings.warn(
                f"{int(held_out.sum())} labeled cells were held out of training {where}, fewer "
                f"than {MIN_CALIBRATION_CELLS}: the probabilities are not calibrated and "
                "`predict_sets` needs `calibrate(adata, indices, labels)` with held-out "
                "labeled cells.",
                UserWarning,
                stacklevel=2,
            )
        return result

    def _check_training_labels(self, held_batches: list[int] | None) -> None:
        """Refuse training without labeled cells; warn for modalities no labeled cell has."""
        codes = self._label_codes(self.adata, np.arange(self.adata.n_obs))
        labelled = codes < len(self.label_categories)
        if held_batches is not None:
            labelled &= ~np.isin(self.adata_manager.batch_codes(), held_batches)
        if not labelled.any():
            raise ValueError(
                "No cell of the data is labeled now (was the labels column changed or removed "
                "after setup?): a semi-supervised model needs labeled cells to train on."
            )
        presence = self.adata_manager.presence()
        lacking = [
            m for j, m in enumerate(self.registered_modalities) if not presence[labelled, j].any()
        ]
        if lacking:
            warnings.warn(
                f"No labeled cell is measured in {lacking}: the classifier never sees a latent "
                "inferred from them, so predictions from them alone are guesses.",
                UserWarning,
                stacklevel=3,
            )

    def _calibration_batches(self, batches, frozen: bool) -> list[int] | None:
        """Codes of ``calibration_batches``, checked: known, labeled, not every labeled batch."""
        if batches is None:
            return None
        if frozen:
            raise ValueError(
                "`calibration_batches` does not apply to a frozen query model: its classifier "
                "is the reference's (and so is its calibration)."
            )
        if isinstance(batches, str) or not hasattr(batches, "__iter__"):
            raise TypeError(
                f"`calibration_batches` must be a non-empty list of batch names, got {batches!r}."
            )
        batches = list(batches)
        if not batches:
            raise TypeError("`calibration_batches` must be a non-empty list of batch names.")
        manager = self.adata_manager
        categories = manager.batch_categories()
        unknown = [b for b in batches if str(b) not in categories]
        if unknown:
            raise ValueError(
                f"`calibration_batches` names batches the model does not have: {unknown}; the "
                f"batches are {categories}."
            )
        codes = sorted({categories.index(str(b)) for b in batches})
        labelled = self._label_codes(self.adata, np.arange(self.adata.n_obs)) < len(
            self.label_categories
        )
        batch = manager.batch_codes()
        empty = [categories[c] for c in codes if not labelled[batch == c].any()]
        if empty:
            raise ValueError(f"`calibration_batches` {empty} have no labeled cell.")
        if not (labelled & ~np.isin(batch, codes)).any():
            raise ValueError(
                "`calibration_batches` hold every labeled cell: none would be left to train "
                "the classifier."
            )
        return codes
