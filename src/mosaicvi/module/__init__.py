"""Torch modules: the multimodal VAE (inference, generative model, loss)."""

from ._mosaicvae import OBJECTIVES, MosaicVAE

__all__ = ["OBJECTIVES", "MosaicVAE"]
