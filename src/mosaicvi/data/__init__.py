"""MuData registration (fields, presence, loading), the demo data set and a simulator."""

from ._backed import RowReader, read_rows
from ._dataset import MosaicTorchDataset, PaddedRows, SparseRows
from ._demo import load_pbmc_cite_mosaic
from ._fields import (
    CategoricalObsCodesField,
    ContinuousObsField,
    ModalityCountsField,
    ModalityPresenceField,
)
from ._manager import MosaicDataManager
from ._sampler import ChunkedBatchSampler, MosaicDataSplitter
from ._simulate import simulate_mosaic

__all__ = [
    "ChunkedBatchSampler",
    "MosaicDataSplitter",
    "RowReader",
    "read_rows",
    "CategoricalObsCodesField",
    "ContinuousObsField",
    "ModalityCountsField",
    "ModalityPresenceField",
    "MosaicDataManager",
    "MosaicTorchDataset",
    "PaddedRows",
    "SparseRows",
    "load_pbmc_cite_mosaic",
    "simulate_mosaic",
]
