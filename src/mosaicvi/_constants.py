"""Names used across mosaicvi: modalities, registry keys and module keys, in one place."""

from typing import NamedTuple

#: The data types mosaicvi models out of the box, in canonical order (a head each, see
#: :data:`mosaicvi.nn.HEADS`).
MODALITIES: tuple[str, ...] = ("rna", "atac", "protein")


class _RegistryKeys(NamedTuple):
    """Keys of the data registry (what the data loader yields).

    The counts of a modality are under ``counts_key`` of its data type.
    """

    PRESENCE: str = "presence"
    BATCH: str = "batch"
    CAT_COVS: str = "extra_categorical_covs"
    CONT_COVS: str = "extra_continuous_covs"
    #: which features each batch measured (registry state only, not loader data)
    FEATURE_MASKS: str = "feature_masks"
    #: cell-type labels of :class:`~mosaicvi.MosaicANVI` (codes; unlabeled cells last)
    LABELS: str = "labels"


REGISTRY_KEYS = _RegistryKeys()


def counts_key(modality: str) -> str:
    """Registry key of the count matrix of ``modality`` (``"X_rna"`` for ``"rna"``)."""
    return f"X_{modality}"


class _ModuleKeys(NamedTuple):
    """Keys of the dictionaries passed between ``inference``, ``generative`` and ``loss``."""

    # inputs of ``inference`` / ``generative``
    X: str = "x"
    PRESENCE: str = "presence"
    COVARIATES: str = "covariates"
    MEASURED: str = "measured"
    # outputs of ``inference``
    QZ: str = "qz"
    Z: str = "z"
    COMPONENTS: str = "components"
    CONTEXT: str = "context"
    # outputs of ``generative``
    PX: str = "px"
    DENOISED: str = "denoised"
    ROWS: str = "rows"
    LOCAL: str = "local"


MODULE_KEYS = _ModuleKeys()


class _ComponentKeys(NamedTuple):
    """Keys of ``inference(...)["components"]``: the posterior's mixture components."""

    MASKS: str = "masks"
    WEIGHTS: str = "weights"
    LOC: str = "loc"
    VAR: str = "var"
    Z: str = "z"
    EXPERT_LOC: str = "expert_loc"
    EXPERT_VAR: str = "expert_var"


COMPONENT_KEYS = _ComponentKeys()

#: Default key of the joint latent in ``mdata.obsm``.
LATENT_OBSM_KEY = "X_mosaicvi"
