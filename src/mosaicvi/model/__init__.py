"""User-facing models."""

# scvi-tools 1.4.2 calls `rich.pretty.pprint` without importing `rich.pretty` (rich >= 15 no
# longer imports it with `rich`): `view_setup_args` and `view_anndata_setup` crashed.
import rich.pretty  # noqa: F401

from ._io import ModelFileError, convert_legacy_model
from ._label_training import pretrained_max_epochs
from ._mosaicanvi import MosaicANVI
from ._mosaicvi import KL_WARMUP_SHARE, MAX_KL_WEIGHT, MosaicVI, default_max_epochs
from ._trainingplan import MosaicTrainingPlan

__all__ = [
    "KL_WARMUP_SHARE",
    "MAX_KL_WEIGHT",
    "ModelFileError",
    "MosaicANVI",
    "MosaicTrainingPlan",
    "MosaicVI",
    "convert_legacy_model",
    "default_max_epochs",
    "pretrained_max_epochs",
]
