"""The cell-type labels of :class:`~mosaicvi.MosaicANVI`: a column of ``mdata.obs`` with unlabeled cells."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from mudata import MuData

from ._fields import CategoricalObsCodesField
from ._validation import check_categorical_column

logger = logging.getLogger(__name__)

#: Key of the unlabeled category in the labels field's state registry.
UNLABELED_KEY = "unlabeled_category"


class LabelsField(CategoricalObsCodesField):
    """A label column of ``mdata.obs`` whose ``unlabeled_category`` marks the unlabeled cells.

    Like scvi-tools' ``LabelsWithUnlabeledObsField``, the categories are stored in the state
    registry with the unlabeled category last, so that a labeled cell's code is its class
    index (``0 .. n_labels - 1``) and an unlabeled cell's is ``n_labels``; nothing is written
    into ``mdata.obs``.

    Registration needs at least one labeled cell and two label categories. New data (a query,
    data given to a getter) may lack the column (every cell unlabeled) but may not hold a
    label the model does not know.

    Parameters
    ----------
    registry_key
        Key of the codes in the data registry.
    labels_key
        Column of ``mdata.obs``.
    unlabeled_category
        Value of the column marking cells without a label.
    """

    def __init__(self, registry_key: str, labels_key: str, unlabeled_category) -> None:
        super().__init__(registry_key, [labels_key], summary_key="n_labels")
        self.labels_key = labels_key
        self.unlabeled_category = str(unlabeled_category)

    def validate_field(self, mdata: MuData) -> None:
        column = mdata.obs.get(self.labels_key)
        if column is not None and pd.isna(column).any():
            raise ValueError(
                f"mdata.obs['{self.labels_key}'] has {int(pd.isna(column).sum())} missing "
                "value(s). Mark unlabeled cells with the unlabeled category instead, e.g. "
                f"`mdata.obs['{self.labels_key}'] = mdata.obs['{self.labels_key}']"
                f".astype(object).fillna({self.unlabeled_category!r})`."
            )
        check_categorical_column(mdata, self.labels_key, role="`labels_key`")

    def register_field(self, mdata: MuData) -> dict:
        self.validate_field(mdata)
        values = mdata.obs[self.labels_key].astype(str)
        unlabeled = self.unlabeled_category
        categories = pd.Index(np.unique(values)).drop(unlabeled, errors="ignore")
        if len(categories) == 0:
            raise ValueError(
                f"No cell is labeled: every value of mdata.obs['{self.labels_key}'] is the "
                f"unlabeled category {unlabeled!r}. A semi-supervised model needs labeled "
                "cells; for an unsupervised one use MosaicVI."
            )
        if len(categories) < 2:
            raise ValueError(
                f"mdata.obs['{self.labels_key}'] has one label ({categories[0]!r}) besides the "
                f"unlabeled category {unlabeled!r}; a classifier needs at least two."
            )
        if unlabeled not in set(values):
            close = [c for c in categories if _same_marker(c, unlabeled)]
            if close:
                raise ValueError(
                    f"No cell has the unlabeled category {unlabeled!r}, but "
                    f"mdata.obs['{self.labels_key}'] holds {close[0]!r}: pass "
                    f"`unlabeled_category={close[0]!r}` if it marks the unlabeled cells."
                )
            placeholders = [c for c in categories if c.strip().lower() in PLACEHOLDERS]
            if placeholders:
                raise ValueError(
                    f"No cell has the unlabeled category {unlabeled!r}, but "
                    f"mdata.obs['{self.labels_key}'] holds {placeholders[0]!r}, which would be "
                    f"trained as a cell type: pass `unlabeled_category={placeholders[0]!r}` if "
                    "it marks the unlabeled cells (or rename it if it is a type)."
                )
            warnings.warn(
                f"Every cell is labeled: no value of mdata.obs['{self.labels_key}'] is the "
                f"unlabeled category {unlabeled!r} (categories: {list(categories[:10])}). "
                "The model is trained fully supervised; query cells mapped later are "
                "unlabeled. If unlabeled cells are marked otherwise, set `unlabeled_category`.",
                UserWarning,
                stacklevel=2,
            )
        folded = pd.Series(categories).map(_folded)
        twins = folded[folded.duplicated(keep=False)]
        if len(twins):
            same = list(categories[twins.index[:2]])
            warnings.warn(
                f"Labels {same} of mdata.obs['{self.labels_key}'] differ only in case, spaces "
                "or number format: they are trained as different cell types.",
                UserWarning,
                stacklevel=2,
            )
        mapping = np.concatenate([np.asarray(categories, dtype=str), [unlabeled]])
        state = self._state({self.labels_key: mapping})
        state[UNLABELED_KEY] = unlabeled
        return state

    def transfer_field(self, state_registry: dict, mdata_target: MuData, **kwargs) -> dict:
        """Keep the model's categories; refuse labels it does not know (never extended)."""
        if self.labels_key in mdata_target.obs.columns:
            self._codes(mdata_target, state_registry)
        else:
            logger.info("mdata.obs has no '%s' column: every cell is unlabeled.", self.labels_key)
        return {
            **self._state({self.labels_key: state_registry[self.MAPPINGS_KEY][self.labels_key]}),
            UNLABELED_KEY: state_registry[UNLABELED_KEY],
        }

    def get_summary_stats(self, state_registry: dict) -> dict:
        return {self.summary_key: len(state_registry[self.MAPPINGS_KEY][self.labels_key]) - 1}

    def _codes(self, mdata: MuData, state_registry: dict) -> np.ndarray:
        self.validate_field(mdata)
        mapping = state_registry[self.MAPPINGS_KEY][self.labels_key]
        values = mdata.obs[self.labels_key].astype(str)
        codes = pd.Categorical(values, categories=mapping).codes
        if (codes < 0).any():
            unknown = pd.unique(values[codes < 0])
            raise ValueError(
                f"mdata.obs['{self.labels_key}'] holds labels the model does not know: "
                f"{[str(u) for u in unknown[:5]]}. Known labels: {list(mapping[:-1])}; unlabeled cells "
                f"are marked {mapping[-1]!r}. Mark cells of new types as unlabeled (their "
                "predictions are among the known labels, see `predict_sets` for uncertainty)."
            )
        return codes.astype(np.int64)

    def cell_data(self, mdata: MuData, state_registry: dict) -> np.ndarray:
        """Label codes, ``(n_obs, 1)``: class index, or ``n_labels`` for unlabeled cells."""
        if self.labels_key not in mdata.obs.columns:
            n_labels = len(state_registry[self.MAPPINGS_KEY][self.labels_key]) - 1
            return np.full((mdata.n_obs, 1), n_labels, dtype=np.int64)
        return self._codes(mdata, state_registry)[:, None]


#: Values that usually mark unlabeled cells: refused as a cell type when no cell has the
#: given ``unlabeled_category``.
PLACEHOLDERS = {"unknown", "unlabeled", "unlabelled", "unassigned", "nan", "na", "none", ""}


def _folded(value: str) -> str:
    """A label without case, spaces and number format (``"-1.0"`` and ``"-1"`` alike)."""
    text = value.strip().lower()
    try:
        number = float(text)
    except ValueError:
        return text
    return repr(number) if np.isfinite(number) else text


def _same_marker(value: str, unlabeled: str) -> bool:
    return _folded(value) == _folded(unlabeled)


def label_categories(state_registry: dict) -> list[str]:
    """The known labels (without the unlabeled category), in code order."""
    mapping = next(iter(state_registry[LabelsField.MAPPINGS_KEY].values()))
    return [str(c) for c in mapping[:-1]]
