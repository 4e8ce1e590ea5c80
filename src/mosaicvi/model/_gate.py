"""The validation gate of every getter: cells, ``given`` modalities, re-checked data."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from mosaicvi._checks import check_int
from mosaicvi._constants import counts_key
from mosaicvi.data._validation import check_is_mudata


def _check_indices(indices, n_obs: int, name: str = "indices") -> np.ndarray:
    """``indices`` (positions or a boolean mask over the cells) as checked positions.

    ``name`` is the argument's name in the errors.
    """
    if indices is None:
        return np.arange(n_obs)
    array = np.asarray(indices)
    if array.dtype == bool:
        if array.shape != (n_obs,):
            raise ValueError(
                f"A boolean `{name}` mask needs one value per cell ({n_obs}), got shape "
                f"{array.shape}."
            )
        array = np.flatnonzero(array)
    elif array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
        raise TypeError(
            f"`{name}` must be integer positions of cells or a boolean mask over them, got "
            f"{array.dtype} of shape {array.shape}."
        )
    elif n_obs > 2 and array.shape == (n_obs,) and np.isin(array, (0, 1)).all():
        warnings.warn(
            f"`{name}` holds only 0 and 1, one value per cell: it is read as cell positions "
            "0 and 1. For a mask, pass booleans (`.astype(bool)`).",
            UserWarning,
            stacklevel=3,
        )
    if array.size == 0:
        raise ValueError(f"`{name}` selects no cell; pass at least one (or None for all).")
    if array.min() < 0 or array.max() >= n_obs:
        raise IndexError(
            f"`{name}` must be cell positions in [0, {n_obs}), got values from {array.min()} "
            f"to {array.max()}."
        )
    return array.astype(np.int64)


def _cells_by_name(obs_names, names, what: str) -> np.ndarray:
    """Positions in ``obs_names`` of the cells ``names`` (kept by name across trainings).

    ``what`` names those cells in the errors: repeated cell names make a name ambiguous,
    and a name that is gone cannot be found; either way the user passes ``indices``.
    """
    if not obs_names.is_unique:
        raise ValueError(
            f"The model's data have repeated cell names now, so its {what} cannot be found by "
            "name; pass `indices`."
        )
    cells = obs_names.get_indexer(names)
    if (cells < 0).any():
        raise ValueError(f"The model's data no longer hold its {what}; pass `indices`.")
    return cells


class MosaicGateMixin:
    """What every getter runs first (:meth:`_prepare`), and the checks it shares."""

    def _check_given(self, given: Sequence[str] | None) -> list[str] | None:
        if given is None:
            return None
        if isinstance(given, str):
            given = [given]
        unknown = set(given) - set(self.registered_modalities)
        if unknown or not given:
            raise ValueError(
                f"`given` must be a non-empty subset of the registered modalities "
                f"{self.registered_modalities}, got {list(given)}."
            )
        return list(given)

    def _prepare(self, adata, indices, given, batch_size):
        """The validation gate of every getter.

        Returns the data (set up from the model's registry if new) re-checked by
        :meth:`~mosaicvi.data.MosaicDataManager.check_data`, the cells, ``given`` and a
        data loader.
        """
        if adata is not None:
            check_is_mudata(adata)
        if batch_size is not None:
            check_int("batch_size", batch_size)
        mdata = self._validate_anndata(adata)
        manager = self.get_anndata_manager(mdata, required=True)
        self._read_nan(manager.check_data())
        given = self._check_given(given)
        indices = _check_indices(indices, mdata.n_obs)
        if given is not None:
            lacking = ~manager.cells_with(given, indices)
            if lacking.any():
                raise ValueError(
                    f"{int(lacking.sum())} of the requested cells have none of the modalities "
                    f"given={given}, so no latent can be inferred from them. Restrict `indices` "
                    "to cells that have them."
                )
        loader = self._make_data_loader(adata=mdata, indices=indices, batch_size=batch_size)
        return mdata, indices, given, loader

    def _read_nan(self, modalities: list[str]) -> None:
        """Let the heads of ``modalities`` read NaN as unmeasured entries.

        Data given to a getter (or changed in place) may hold NaN where the training data
        did not; a head finds NaN per minibatch only when told to (no cost otherwise).
        """
        for mod in modalities:
            if mod in self.module.heads:
                self.module.heads[mod].nan_entries = True

    def _feature_names(self, mod: str) -> np.ndarray:
        return np.asarray(self.adata_manager.get_state_registry(counts_key(mod))["column_names"])

    def _require(self, mod: str) -> None:
        if mod not in self.registered_modalities:
            raise ValueError(
                f"This model was not set up with '{mod}'; registered: {self.registered_modalities}."
            )
