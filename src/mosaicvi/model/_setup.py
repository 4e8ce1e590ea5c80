"""``setup_mudata``: the checks of its arguments and the fields that register a MuData."""

from __future__ import annotations

from mudata import MuData

from mosaicvi._checks import check_bool
from mosaicvi._compat import SETUP_ARGS_KEY
from mosaicvi._constants import REGISTRY_KEYS
from mosaicvi.data import (
    CategoricalObsCodesField,
    ContinuousObsField,
    ModalityCountsField,
    ModalityPresenceField,
    MosaicDataManager,
)
from mosaicvi.data._feature_field import FeatureMaskField
from mosaicvi.data._features import unmeasured_features
from mosaicvi.data._validation import check_is_mudata, check_modality
from mosaicvi.nn import HEADS


class MosaicSetupMixin:
    """``setup_mudata`` of :class:`~mosaicvi.MosaicVI` (and, with labels, of MosaicANVI)."""

    @classmethod
    def setup_mudata(
        cls,
        mdata: MuData,
        modalities: dict[str, str],
        layers: dict[str, str | None] | None = None,
        batch_key: str | None = None,
        categorical_covariate_keys: list[str] | None = None,
        continuous_covariate_keys: list[str] | None = None,
        presence_keys: dict[str, str] | None = None,
        feature_masks: dict | None = None,
        infer_feature_masks: bool = True,
        **kwargs,
    ) -> None:
        """Register a (possibly unpadded, mosaic) MuData with MosaicVI.

        The MuData is not modified: no modality is reordered, no column is added, and no count
        matrix is copied or densified. (As for every scvi-tools model, the registry's UUIDs are
        stored in ``mdata.uns``.)

        Parameters
        ----------
        mdata
            MuData with raw counts.
        modalities
            Which modality of ``mdata.mod`` holds each data type, a non-empty subset of
            ``{"rna": ..., "atac": ..., "protein": ...}``, e.g. ``{"rna": "rna", "protein": "adt"}``.
        layers
            Layer of each modality's AnnData holding the raw counts; ``.X`` where not given.
        batch_key
            Column of ``mdata.obs`` with the batch of each cell. ``None``: one batch.
        categorical_covariate_keys
            Columns of ``mdata.obs`` with further categorical covariates.
        continuous_covariate_keys
            Columns of ``mdata.obs`` with continuous covariates.
        presence_keys
            For padded MuData: boolean columns of ``mdata.obs`` saying which cells were measured
            in a modality, e.g. ``{"protein": "has_protein"}``. Without one, a cell has a
            modality when it is an observation of that modality (``mdata.obsm[name]``). Cells
            with zero counts are measured cells: a missing modality is never inferred from
            counts (a batch's missing features may be: ``infer_feature_masks``).
        feature_masks
            Which features each batch measured, for modalities whose panels differ between
            batches (antibody panels, targeted RNA panels, peak sets): by data type, a
            :class:`pandas.DataFrame` of booleans with batches as index and features as
            columns, ``True`` where the batch measured the feature (batches and features it
            does not list: measured); or by data type, a dict from batch to the list of
            features it did not measure. Unmeasured features are left out of the likelihood
            and of the experts' evidence, and imputed (``docs/model.md``). Without it, see
            ``infer_feature_masks``.
        infer_feature_masks
            For modalities without ``feature_masks``: treat a feature with no count in a
            batch of at least 10 measured cells as unmeasured there when the other batches'
            counts predict at least 10 counts in it (as totalVI's protein batch mask, with
            a guard against rare genes and peaks), with a warning per batch. For RNA and
            ATAC only when the batch lacks at least 10% of the features that way (a smaller
            panel; a few such genes are usually biology, e.g. a donor's KIR genotype).
            ``False``: every zero is a measured zero. NaN entries in a count matrix are
            unmeasured entries either way.
        """
        feature_masks = _checked_masks(mdata, modalities, feature_masks, infer_feature_masks)
        setup_method_args = cls._get_setup_method_args(**locals())
        cls._register_mudata(mdata, setup_method_args, [], **kwargs)

    @classmethod
    def _register_mudata(
        cls, mdata: MuData, setup_method_args: dict, extra_fields: list, **kwargs
    ) -> None:
        """Check ``setup_mudata``'s arguments, build the fields (and ``extra_fields``), register."""
        args = setup_method_args[SETUP_ARGS_KEY]
        modalities, layers, presence_keys = (
            args["modalities"],
            args["layers"],
            args["presence_keys"],
        )
        batch_key = args["batch_key"]
        categorical_covariate_keys = args["categorical_covariate_keys"]
        continuous_covariate_keys = args["continuous_covariate_keys"]
        for arg, mapping in (("layers", layers), ("presence_keys", presence_keys)):
            if mapping is not None:
                _check_mapping(arg, mapping, "{'protein': 'has_protein'}")
        if batch_key is not None and not isinstance(batch_key, str):
            raise TypeError(f"`batch_key` must be a column name (a string), got {batch_key!r}.")
        for arg, keys in (
            ("categorical_covariate_keys", categorical_covariate_keys),
            ("continuous_covariate_keys", continuous_covariate_keys),
        ):
            if keys is not None and (
                isinstance(keys, str) or not all(isinstance(k, str) for k in keys)
            ):
                raise TypeError(
                    f"`{arg}` must be a list of column names of mdata.obs, e.g. "
                    f"[{keys!r}], got {keys!r}."
                )
        if not modalities:
            raise ValueError(
                "No modality given: pass `modalities`, e.g. {'rna': 'rna', 'protein': 'protein'}."
            )
        unknown = set(modalities) - set(HEADS)
        if unknown:
            raise ValueError(
                f"Unknown data type(s) {sorted(unknown)} in `modalities`; the keys must be among "
                f"{list(HEADS)} (the data types of mosaicvi.nn.HEADS) and the values names in "
                "mdata.mod."
            )
        for arg, mapping in (("layers", layers), ("presence_keys", presence_keys)):
            extra = set(mapping or {}) - set(modalities)
            if extra:
                raise ValueError(
                    f"`{arg}` names data type(s) {sorted(extra)} not in `modalities`."
                )
        ordered = {mod: modalities[mod] for mod in HEADS if mod in modalities}
        for mod, mod_key in ordered.items():
            check_modality(mdata, mod_key, role=f"'{mod}'")
        if len(set(ordered.values())) != len(ordered):
            raise ValueError("Each data type needs its own modality of the MuData.")
        layers = layers or {}
        fields = [
            ModalityPresenceField(REGISTRY_KEYS.PRESENCE, ordered, presence_keys),
            CategoricalObsCodesField(
                REGISTRY_KEYS.BATCH,
                [batch_key] if batch_key is not None else None,
                summary_key="n_batch",
                allow_default=True,
            ),
            CategoricalObsCodesField(
                REGISTRY_KEYS.CAT_COVS,
                categorical_covariate_keys,
                summary_key="n_extra_categorical_covs",
            ),
            ContinuousObsField(REGISTRY_KEYS.CONT_COVS, continuous_covariate_keys),
            *(
                ModalityCountsField(mod, layers.get(mod), mod_key)
                for mod, mod_key in ordered.items()
            ),
            FeatureMaskField(
                REGISTRY_KEYS.FEATURE_MASKS,
                ordered,
                layers,
                presence_keys,
                batch_key,
                args["feature_masks"],
                infer=args["infer_feature_masks"],
            ),
            *extra_fields,
        ]
        adata_manager = MosaicDataManager(fields=fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(mdata, **kwargs)
        cls.register_manager(adata_manager)

    @classmethod
    def setup_anndata(cls, adata, *args, **kwargs) -> None:
        """Not supported: MosaicVI registers MuData with :meth:`~mosaicvi.MosaicVI.setup_mudata`."""
        raise TypeError(
            "MosaicVI works on MuData with one AnnData per modality: use "
            "`MosaicVI.setup_mudata(mdata, modalities={...})`."
        )


def _checked_masks(mdata, modalities, feature_masks, infer_feature_masks) -> dict:
    """``setup_mudata``'s first checks; returns ``feature_masks`` in the form saved."""
    check_is_mudata(mdata)
    _check_mapping("modalities", modalities, "{'rna': 'rna', 'protein': 'adt'}")
    check_bool("infer_feature_masks", infer_feature_masks)
    return unmeasured_features(feature_masks, modalities)


def _check_mapping(name: str, value, example: str) -> None:
    if not isinstance(value, dict):
        raise TypeError(
            f"`{name}` must be a dict from data type to a name, e.g. {example}, got "
            f"{type(value).__name__} {value!r}."
        )
