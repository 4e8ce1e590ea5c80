"""MuData registration (fields, presence, loading), the demo data set and a simulator."""

from ._dataset import MosaicDataManager, MosaicTorchDataset, PaddedRows
from ._demo import load_pbmc_cite_mosaic
from ._fields import (
    CategoricalObsCodesField,
    ContinuousObsField,
    ModalityCountsField,
    ModalityPresenceField,
)
from ._simulate import simulate_mosaic

__all__ = [
    "CategoricalObsCodesField",
    "ContinuousObsField",
    "ModalityCountsField",
    "ModalityPresenceField",
    "MosaicDataManager",
    "MosaicTorchDataset",
    "PaddedRows",
    "load_pbmc_cite_mosaic",
    "simulate_mosaic",
]
