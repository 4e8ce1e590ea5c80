"""Checks on the arguments of mosaicvi's functions and methods (not on the data)."""

from __future__ import annotations

import numpy as np


def check_int(name: str, value, minimum: int = 1) -> None:
    """Raise unless the argument ``name`` is an integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"`{name}` must be an integer, got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be at least {minimum}, got {value!r}.")


def check_bool(name: str, value) -> None:
    """Raise unless the argument ``name`` is ``True`` or ``False`` (NumPy's bool too)."""
    if not isinstance(value, bool | np.bool_):
        raise TypeError(f"`{name}` must be True or False, got {value!r}.")
