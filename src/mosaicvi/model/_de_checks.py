"""Argument checks and group selection of the differential analysis (``_differential``)."""

from __future__ import annotations

import inspect
import numbers

import numpy as np
import pandas as pd
from mudata import MuData
from scvi.model.base import DifferentialComputation

from mosaicvi._checks import check_bool, check_int

from ._gate import _check_indices

#: Arguments of :meth:`~scvi.model.base.DifferentialComputation.get_bayes_factors` that the
#: methods set themselves.
_SET_HERE = {
    "self", "idx1", "idx2", "mode", "delta", "batchid1", "batchid2", "use_observed_batches",
    "n_samples_overall",
}  # fmt: skip
#: What to pass instead of some of those (and of scvi-tools' DE arguments of other names).
_INSTEAD = {
    "use_observed_batches": "batch_correction",
    "fdr": "fdr_target",
    "n_samples": "n_samples_overall",
    "idx": "idx1",
}


def _check_real(name: str, value, low: float, high: float, closed: str) -> None:
    """Raise unless ``value`` is a real number in the interval (``closed``: "left", "neither")."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a number, got {value!r}.")
    inside = (low <= value if closed == "left" else low < value) and value < high
    if not inside or not np.isfinite(value):
        left = "[" if closed == "left" else "("
        raise ValueError(f"`{name}` must be in {left}{low}, {high}), got {value!r}.")


def _check_test(mode, delta, fdr_target, n_samples_overall, seed, kwargs) -> dict:
    """The arguments of scvi-tools' test, checked; ``kwargs`` are its optional ones."""
    if mode not in ("vanilla", "change"):
        raise ValueError(f"`mode` must be 'vanilla' or 'change', got {mode!r}.")
    if delta is None:
        raise ValueError(
            "`delta` must be a positive number (the log fold change below which a feature is "
            "not differential); mosaicvi does not estimate it from the data."
        )
    _check_real("delta", delta, 0.0, np.inf, "neither")
    _check_real("fdr_target", fdr_target, 0.0, 1.0, "neither")
    check_int("n_samples_overall", n_samples_overall)
    check_int("seed", seed, minimum=0)
    accepted = set(inspect.signature(DifferentialComputation.get_bayes_factors).parameters)
    accepted -= _SET_HERE
    for name in kwargs:
        if name not in accepted:
            instead = f" (pass `{_INSTEAD[name]}`)" if name in _INSTEAD else ""
            raise TypeError(
                f"Unexpected argument `{name}`{instead}; the arguments passed on to scvi-tools' "
                f"test are {sorted(accepted)}."
            )
    test = {"use_permutation": False, **kwargs}
    check_bool("use_permutation", test["use_permutation"])
    if "m_permutation" in test:
        check_int("m_permutation", test["m_permutation"])
    if test.get("pseudocounts") is not None:
        _check_real("pseudocounts", test["pseudocounts"], 0.0, np.inf, "left")
    if "threshold_counts" in test:
        _check_real("threshold_counts", test["threshold_counts"], 0.0, np.inf, "left")
    if test.get("test_mode", "three") not in ("two", "three"):
        raise ValueError(f"`test_mode` must be 'two' or 'three', got {test['test_mode']!r}.")
    levels = test.get("cred_interval_lvls")
    if levels is not None:
        if np.ndim(levels) != 1 or len(levels) == 0:
            raise TypeError(f"`cred_interval_lvls` must be a list of levels, got {levels!r}.")
        for level in levels:
            _check_real("cred_interval_lvls", level, 0.0, 1.0, "neither")
    change_fn = test.get("change_fn")
    if not (change_fn is None or change_fn == "log-fold" or callable(change_fn)):
        raise ValueError(f"`change_fn` must be 'log-fold' or a function, got {change_fn!r}.")
    if test.get("m1_domain_fn") is not None and not callable(test["m1_domain_fn"]):
        raise TypeError(f"`m1_domain_fn` must be a function, got {test['m1_domain_fn']!r}.")
    return {"mode": mode, "delta": delta, "n_samples_overall": n_samples_overall, **test}


def _comparisons(mdata: MuData, groupby, group1, group2, idx1, idx2) -> list[tuple]:
    """``(label1, label2, mask1, mask2)`` of each comparison; the user's data are not changed."""
    n = mdata.n_obs
    if idx1 is not None:
        if groupby is not None or group1 is not None or group2 is not None:
            raise ValueError(
                "Pass either `groupby` / `group1` / `group2` or `idx1` / `idx2`, not both."
            )
        mask1 = _mask(idx1, n, "idx1")
        mask2 = ~mask1 if idx2 is None else _mask(idx2, n, "idx2")
        return [("idx1", "rest" if idx2 is None else "idx2", mask1, mask2)]
    if idx2 is not None:
        raise ValueError("`idx2` needs `idx1` (the cells of the first group).")
    if groupby is None:
        if group1 is not None or group2 is not None:
            raise ValueError("`group1` / `group2` need `groupby` (the column they are values of).")
        raise ValueError("Pass `groupby` (a column of mdata.obs) or `idx1`.")
    if not isinstance(groupby, str):
        raise TypeError(f"`groupby` must be a column name of mdata.obs, got {groupby!r}.")
    if groupby not in mdata.obs.columns:
        raise KeyError(f"`groupby` column {groupby!r} is not in mdata.obs.")
    column = mdata.obs[groupby]
    known = pd.Index(pd.unique(column.dropna()))
    shown = sorted(known[:20], key=str) + (["..."] if len(known) > 20 else [])

    def check(name, group) -> object:
        if isinstance(group, list | tuple | set | np.ndarray | pd.Index | pd.Series):
            raise TypeError(
                f"`{name}` must be one group of mdata.obs[{groupby!r}], got {group!r}."
            )
        try:
            found = known.get_indexer([group])[0] >= 0
        except TypeError:  # unhashable
            found = False
        if not found:
            raise ValueError(
                f"`{name}`={group!r} ({type(group).__name__}) is not a group of "
                f"mdata.obs[{groupby!r}], whose groups are {shown} "
                f"({known.dtype}; values are compared with their type)."
            )
        return group

    if group2 is not None:
        group2 = check("group2", group2)
    if group1 is None:
        group1 = [g for g in known if group2 is None or g != group2]
        try:
            group1 = sorted(group1)
        except TypeError:
            group1 = sorted(group1, key=str)
        if len(known) < 2:
            raise ValueError(f"mdata.obs[{groupby!r}] has a single group: nothing to compare.")
    else:
        single = isinstance(group1, str) or np.ndim(group1) == 0
        group1 = [check("group1", g) for g in ([group1] if single else list(group1))]
        if not group1:
            raise ValueError("`group1` is empty; pass groups to test, or None for all of them.")
        if len(set(map(str, group1))) != len(group1):
            raise ValueError(f"`group1` names a group twice: {group1}.")
        if group2 is not None and any(g == group2 for g in group1):
            raise ValueError(f"`group1` contains `group2`={group2!r}: a group against itself.")
    values = column.to_numpy()
    out = []
    for g in group1:
        mask1 = values == g
        mask2 = ~mask1 if group2 is None else values == group2
        out.append((str(g), "Rest" if group2 is None else str(group2), mask1, mask2))
    return out


def _mask(idx, n: int, name: str) -> np.ndarray:
    """Boolean mask of the cells ``idx`` (positions or a mask), checked like ``indices``."""
    mask = np.zeros(n, dtype=bool)
    mask[_check_indices(idx, n, name)] = True
    return mask
