"""mosaicvi: Product-of-Experts integration and imputation of mosaic RNA / ATAC / protein data."""

from importlib.metadata import version

from . import data, metrics
from .model import MosaicANVI, MosaicVI

__all__ = ["MosaicANVI", "MosaicVI", "data", "metrics"]
__version__ = version("mosaicvi")
