"""User-facing models."""

from ._mosaicvi import MosaicVI

__all__ = ["MosaicVI"]
