"""Neural-network building blocks: modality heads (experts, decoders, likelihoods), fusion."""

from ._atac import ATACHead, PeakBernoulli, SampledPeakBernoulli
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
from ._sparse import dense, map_values, row_sums, take_rows

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
    "SampledPeakBernoulli",
    "StackedLayers",
    "corrupt_counts",
    "dense",
    "fuse",
    "fusion_components",
    "head_class",
    "layer_widths",
    "map_values",
    "non_empty_subsets",
    "product_of_experts",
    "protein_background_prior",
    "row_sums",
    "take_rows",
    "weighted_kl",
]
