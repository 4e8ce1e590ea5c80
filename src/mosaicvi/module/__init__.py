"""Torch modules: the multimodal VAE (inference, generative model, loss)."""

from ._mosaicanvae import MosaicANVAE
from ._mosaicvae import OBJECTIVES, MosaicVAE

__all__ = ["OBJECTIVES", "MosaicANVAE", "MosaicVAE"]
