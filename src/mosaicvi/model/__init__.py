"""User-facing models."""

from ._mosaicvi import MosaicVI
from ._trainingplan import MosaicTrainingPlan

__all__ = ["MosaicTrainingPlan", "MosaicVI"]
