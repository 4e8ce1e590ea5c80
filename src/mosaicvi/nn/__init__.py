"""Neural-network building blocks: per-modality experts, their fusion, and likelihood heads."""

from ._atac import ATACDecoder
from ._encoder import ModalityExpert
from ._fusion import product_of_experts
from ._protein import ProteinDecoder, protein_background_prior
from ._rna import RNADecoder

__all__ = [
    "ATACDecoder",
    "ModalityExpert",
    "ProteinDecoder",
    "RNADecoder",
    "product_of_experts",
    "protein_background_prior",
]
