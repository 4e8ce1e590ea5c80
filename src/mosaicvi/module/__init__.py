"""Torch modules: the multimodal VAE (inference, generative model, loss)."""

from ._mosaicvae import MosaicVAE

__all__ = ["MosaicVAE"]
