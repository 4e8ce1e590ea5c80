"""Neural-network building blocks: modality heads (experts, decoders, likelihoods), fusion."""

from ._atac import ATACHead, PeakBernoulli
from ._encoder import ModalityExpert
from ._fusion import (
    FUSIONS,
    Fusion,
    GaussianMixture,
    fuse,
    fusion_components,
    non_empty_subsets,
    product_of_experts,
    weighted_kl,
)
from ._head import Covariates, HeadOutput, ModalityHead
from ._layers import StackedLayers, corrupt_counts, layer_widths
from ._protein import ProteinHead, protein_background_prior
from ._registry import HEADS, head_class
from ._rna import RNAHead

__all__ = [
    "FUSIONS",
    "HEADS",
    "ATACHead",
    "Covariates",
    "Fusion",
    "GaussianMixture",
    "HeadOutput",
    "ModalityExpert",
    "ModalityHead",
    "PeakBernoulli",
    "ProteinHead",
    "RNAHead",
    "StackedLayers",
    "corrupt_counts",
    "fuse",
    "fusion_components",
    "head_class",
    "layer_widths",
    "non_empty_subsets",
    "product_of_experts",
    "protein_background_prior",
    "weighted_kl",
]
