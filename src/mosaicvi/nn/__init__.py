"""Neural-network building blocks: modality heads (experts, decoders, likelihoods), fusion."""

from ._atac import ATACHead, BernoulliATACHead, PoissonATACHead
from ._atac_likelihood import PeakBernoulli, SampledPeakBernoulli
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
from ._head import ModalityHead
from ._head_types import Covariates, HeadOutput
from ._layers import SplitInputLinear, StackedLayers, corrupt_counts, layer_widths
from ._protein import ProteinHead, protein_background_prior
from ._registry import HEADS, head_class
from ._rna import RNAHead, nb_log_prob_cells
from ._sparse import dense, map_values, row_sums, take_rows

__all__ = [
    "FUSIONS",
    "HEADS",
    "ATACHead",
    "BernoulliATACHead",
    "Covariates",
    "Fusion",
    "GaussianMixture",
    "HeadOutput",
    "ModalityExpert",
    "ModalityHead",
    "PeakBernoulli",
    "PoissonATACHead",
    "ProteinHead",
    "RNAHead",
    "SampledPeakBernoulli",
    "SplitInputLinear",
    "StackedLayers",
    "corrupt_counts",
    "dense",
    "fuse",
    "fusion_components",
    "head_class",
    "layer_widths",
    "map_values",
    "nb_log_prob_cells",
    "non_empty_subsets",
    "product_of_experts",
    "protein_background_prior",
    "row_sums",
    "take_rows",
    "weighted_kl",
]
