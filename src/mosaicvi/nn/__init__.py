"""Neural-network building blocks: per-modality experts, their fusion, and likelihood heads."""

from ._atac import ATACDecoder
from ._encoder import ModalityExpert
from ._fusion import (
    FUSIONS,
    Fusion,
    GaussianMixture,
    fusion_components,
    non_empty_subsets,
    product_of_experts,
    weighted_kl,
)
from ._layers import StackedLayers, corrupt_counts, layer_widths
from ._protein import ProteinDecoder, protein_background_prior
from ._rna import RNADecoder

__all__ = [
    "FUSIONS",
    "ATACDecoder",
    "Fusion",
    "GaussianMixture",
    "StackedLayers",
    "corrupt_counts",
    "fusion_components",
    "layer_widths",
    "non_empty_subsets",
    "weighted_kl",
    "ModalityExpert",
    "ProteinDecoder",
    "RNADecoder",
    "product_of_experts",
    "protein_background_prior",
]
