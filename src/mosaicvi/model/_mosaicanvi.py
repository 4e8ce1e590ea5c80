"""MosaicANVI: MosaicVI with cell-type labels (semi-supervised, scANVI's classification term)."""

from __future__ import annotations

import logging
import numbers
from copy import deepcopy

from mudata import MuData

from mosaicvi._checks import check_bool
from mosaicvi._compat import SETUP_ARGS_KEY
from mosaicvi._constants import REGISTRY_KEYS, counts_key
from mosaicvi.data._labels import LabelsField
from mosaicvi.data._validation import check_is_mudata
from mosaicvi.module._mosaicanvae import MosaicANVAE
from mosaicvi.nn import HEADS

from ._label_training import MosaicLabelTrainingMixin
from ._labels import MosaicLabelMixin
from ._mosaicvi import MosaicVI
from ._setup import _checked_masks

logger = logging.getLogger(__name__)


class MosaicANVI(MosaicLabelTrainingMixin, MosaicLabelMixin, MosaicVI):
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
        feature_masks = _checked_masks(mdata, modalities, feature_masks, infer_feature_masks)
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
        heads_arguments = {n for cls in HEADS.values() for n in cls.model_arguments}
        clash = sorted(set(model_kwargs) & (set(architecture) | heads_arguments))
        if clash:
            raise ValueError(
                f"{clash} come from the MosaicVI model "
                f"({ {k: architecture.get(k, 'default') for k in clash} }); "
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
        model._weights_of_unknown_history(getattr(mosaicvi_model, "_fitted_cells", None))
        model.module.eval()
        model.was_pretrained = True
        return model
