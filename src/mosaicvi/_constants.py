"""Names used across mosaicvi: modalities, registry keys and module keys, in one place."""

from typing import Literal, NamedTuple

Modality = Literal["rna", "atac", "protein"]
#: The modalities mosaicvi models, in canonical order.
MODALITIES: tuple[str, ...] = ("rna", "atac", "protein")


class _RegistryKeys(NamedTuple):
    """Keys of the data registry (what the data loader yields)."""

    X_RNA: str = "X_rna"
    X_ATAC: str = "X_atac"
    X_PROTEIN: str = "X_protein"
    PRESENCE: str = "presence"
    BATCH: str = "batch"
    CAT_COVS: str = "extra_categorical_covs"
    CONT_COVS: str = "extra_continuous_covs"


REGISTRY_KEYS = _RegistryKeys()

#: Registry key of the count matrix of each modality.
MODALITY_REGISTRY_KEYS: dict[str, str] = {
    "rna": REGISTRY_KEYS.X_RNA,
    "atac": REGISTRY_KEYS.X_ATAC,
    "protein": REGISTRY_KEYS.X_PROTEIN,
}


class _ModuleKeys(NamedTuple):
    """Keys of the dictionaries passed between ``inference``, ``generative`` and ``loss``."""

    QZ: str = "qz"
    Z: str = "z"
    COMPONENTS: str = "components"
    PRESENCE: str = "presence"
    LIBRARY: str = "library"
    ATAC_DEPTH: str = "atac_depth"
    PX: str = "px"
    DENOISED: str = "denoised"
    ROWS: str = "rows"
    PROTEIN_BACKGROUND: str = "protein_background"


MODULE_KEYS = _ModuleKeys()

#: Default key of the joint latent in ``mdata.obsm``.
LATENT_OBSM_KEY = "X_mosaicvi"
