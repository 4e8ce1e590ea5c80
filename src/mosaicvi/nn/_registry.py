"""The registry of modality heads: which head class models each data type."""

from __future__ import annotations

from ._atac import ATACHead
from ._head import ModalityHead
from ._protein import ProteinHead
from ._rna import RNAHead

#: Head class of each data type, in canonical order. A new modality is a
#: :class:`~mosaicvi.nn.ModalityHead` subclass added here under its data type (the key of
#: ``modalities`` in :meth:`~mosaicvi.MosaicVI.setup_mudata`).
HEADS: dict[str, type[ModalityHead]] = {"rna": RNAHead, "atac": ATACHead, "protein": ProteinHead}


def head_class(data_type: str) -> type[ModalityHead]:
    """The head class registered for ``data_type``; a clear error if there is none."""
    if data_type not in HEADS:
        raise ValueError(
            f"No modality head for data type {data_type!r}; registered data types: "
            f"{list(HEADS)} (mosaicvi.nn.HEADS)."
        )
    return HEADS[data_type]
