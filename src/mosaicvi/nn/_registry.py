"""The registry of modality heads: which head class models each data type."""

from __future__ import annotations

import warnings

import numpy as np

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


def head_arguments(kwargs: dict, registered: list[str]) -> tuple[dict[str, dict], dict]:
    """Route a model's keyword arguments to the heads that own them.

    Each head class declares the model arguments it reads (``model_arguments``); an argument
    belongs to one head. Every head checks its arguments (also a head whose modality is not
    registered: a typo fails, a value with no effect warns).

    Returns the checked options of each registered data type's head and the arguments no
    head reads (the module's); ``kwargs`` is not modified.
    """
    rest = dict(kwargs)
    given = {mod: {} for mod in HEADS}
    owner = {}
    for mod, cls in HEADS.items():
        for name in cls.model_arguments:
            if name in owner:
                raise TypeError(
                    f"Heads {owner[name]!r} and {mod!r} both read `{name}` "
                    "(mosaicvi.nn.HEADS): each model argument belongs to one head."
                )
            owner[name] = mod
            if name in rest:
                given[mod][name] = rest.pop(name)
    # checked even if not registered: a typo fails, a value with no effect warns
    checked = {mod: HEADS[mod].head_options(**arguments) for mod, arguments in given.items()}
    for mod, arguments in given.items():
        if mod in registered or not arguments:
            continue
        defaults = HEADS[mod].head_options()
        if any(not _same(value, defaults.get(k)) for k, value in checked[mod].items()):
            warnings.warn(
                f"{sorted(arguments)} have no effect: no {mod} modality is registered.",
                UserWarning,
                stacklevel=3,
            )
    for mod in registered:
        head_class(mod)  # a clear error for a data type without a head
    return {mod: checked[mod] for mod in registered}, rest


def _same(a, b) -> bool:
    """Whether two option values are the same (arrays compared whole)."""
    try:
        return bool(np.all(a == b)) and np.shape(a) == np.shape(b)
    except (TypeError, ValueError):
        return a is b
