"""scvi-tools data fields for mosaic MuData that never write into the user's object.

scvi-tools' categorical and joint-covariate fields store encoded copies in ``mdata.obs`` /
``mdata.obsm`` (``_scvi_batch`` …). The fields here keep the encoding in the state registry
instead and hand the data loader per-cell arrays computed on the fly, so ``setup_mudata``
leaves the user's columns untouched. Modality counts are registered with scvi-tools'
:class:`~scvi.data.fields.MuDataLayerField` and validated by :mod:`mosaicvi.data._validation`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import rich.table
from mudata import MuData
from scvi.data.fields import BaseAnnDataField, MuDataLayerField

from mosaicvi._constants import counts_key

from ._presence import check_pairing, modality_rows
from ._validation import (
    _where,
    check_categorical_column,
    check_count_matrix,
    check_numeric_column,
    column_order,
    get_modality_matrix,
)

#: Key of a counts field's feature names in its state registry (scvi-tools' ``LayerField``).
COLUMN_NAMES_KEY = "column_names"
#: Key of whether a counts field's matrix holds NaN, in its state registry.
HAS_NAN_KEY = "has_nan"


class ModalityCountsField(MuDataLayerField):
    """Raw counts of one modality (``mdata.mod[mod_key]``, ``.X`` or a layer).

    The modality's AnnData may hold only the cells measured in it. Counts are validated
    (non-negative integers, or NaN for an unmeasured entry) and never reformatted or copied;
    the state records whether the matrix holds NaN.

    Parameters
    ----------
    data_type
        The data type (``"rna"`` …); the registry key is ``counts_key``
        of it.
    layer
        Layer of the modality's AnnData holding raw counts; ``None`` for ``.X``.
    mod_key
        Name of the modality in ``mdata.mod``.
    """

    def __init__(self, data_type: str, layer: str | None, mod_key: str) -> None:
        self.data_type = data_type
        super().__init__(
            counts_key(data_type),
            layer,
            mod_key=mod_key,
            is_count_data=False,  # checked strictly (with errors) by ``check_count_matrix``
            correct_data_format=False,  # never rewrite the user's matrix
            mod_required=True,
        )

    def register_field(self, mdata: MuData) -> dict:
        has_nan = check_count_matrix(mdata, self.mod_key, self.attr_key)
        state = super().register_field(mdata)
        state[HAS_NAN_KEY] = has_nan  # NaN: unmeasured entries (``mosaicvi.data._features``)
        return state

    def transfer_field(self, state_registry: dict, mdata_target: MuData, **kwargs) -> dict:
        """Register ``mdata_target`` like the source: same features, in any order.

        The features are matched by name (:func:`column_order`); the state keeps the
        registered order, in which the data loader reads the target's columns.
        """
        names = np.asarray(state_registry[COLUMN_NAMES_KEY])
        target = mdata_target.mod[self.mod_key] if self.mod_key in mdata_target.mod else None
        if target is not None:
            column_order(names, target.var_names, _where(self.mod_key, self.attr_key))
        state = self.register_field(mdata_target)
        state[COLUMN_NAMES_KEY] = names
        return state

    def column_order(self, mdata: MuData, state_registry: dict) -> np.ndarray | None:
        """Column of ``mdata``'s matrix holding each registered feature; ``None``: the same."""
        return column_order(
            state_registry[COLUMN_NAMES_KEY],
            mdata.mod[self.mod_key].var_names,
            _where(self.mod_key, self.attr_key),
        )

    def matrix(self, mdata: MuData):
        """The modality's count matrix, as stored (sparse or dense, unpadded)."""
        return get_modality_matrix(mdata, self.mod_key, self.attr_key)


class ModalityPresenceField(BaseAnnDataField):
    """Which cell has which modality, read from MuData itself.

    A cell has a modality when it is one of the modality's observations
    (``mdata.obsm[mod]``) and, if a presence column is given for that modality, that boolean
    column of ``mdata.obs`` is ``True`` (for padded MuData). All-zero rows are *not* treated
    as missing.

    Setting up a model's own data needs cells in every modality. Data registered from a
    model's registry (a getter given new data, ``load``, a query of
    :meth:`~mosaicvi.MosaicVI.load_query_data`) may lack a modality altogether, such as an
    RNA-only query of a CITE-seq reference; every cell still needs one modality.

    Parameters
    ----------
    registry_key
        Key of the presence mask in the data registry.
    modalities
        Mapping from modality type (``"rna"``, ``"atac"``, ``"protein"``) to the name of the
        modality in ``mdata.mod``, in the order of the mask's columns.
    presence_keys
        Optional mapping from modality type to a boolean column of ``mdata.obs``.
    """

    MODALITIES_KEY = "modalities"
    MOD_KEYS_KEY = "mod_keys"
    PRESENCE_KEYS_KEY = "presence_keys"
    N_CELLS_KEY = "n_cells_per_modality"

    def __init__(
        self,
        registry_key: str,
        modalities: dict[str, str],
        presence_keys: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        self._registry_key = registry_key
        self.modalities = dict(modalities)
        self.presence_keys = dict(presence_keys or {})
        #: whether a modality may have no cell (data registered from a model's registry)
        self.allow_unmeasured = False

    @property
    def registry_key(self) -> str:
        return self._registry_key

    @property
    def attr_name(self) -> str:
        return "obsm"

    @property
    def attr_key(self) -> str | None:
        return None

    @property
    def is_empty(self) -> bool:
        return False

    def row_indices(self, mdata: MuData) -> dict[str, np.ndarray]:
        """Row of each cell in each modality's AnnData, ``-1`` where the cell lacks it."""
        return {
            mod: modality_rows(mdata, mod_key, self.presence_keys.get(mod))
            for mod, mod_key in self.modalities.items()
        }

    def validate_field(self, mdata: MuData) -> None:
        self._validated_counts(mdata)

    def _validated_counts(self, mdata: MuData) -> dict[str, int]:
        """Number of cells with each modality; raises unless every modality and cell has data."""
        if not mdata.obs_names.is_unique:
            raise ValueError(
                "The MuData's cell names (mdata.obs_names) are not unique; MuData pairs "
                "modalities by cell name. Make barcodes unique per sample before building it."
            )
        rows = self.row_indices(mdata)
        check_pairing(
            mdata,
            list(self.modalities.values()),
            {self.modalities[mod]: r for mod, r in rows.items()},
        )
        return self.validate_rows(mdata, rows)

    def presence_mask(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        """Boolean ``(n_cells, n_modalities)`` mask from ``row_indices``' rows."""
        return np.stack([rows[mod] >= 0 for mod in self.modalities], axis=1)

    def validate_rows(self, mdata: MuData, rows: dict[str, np.ndarray]) -> dict[str, int]:
        """Number of cells with each modality; raises unless every modality and cell has data."""
        mask = self.presence_mask(rows)
        for mod, n in zip(self.modalities, mask.sum(0)):
            if n == 0 and not self.allow_unmeasured:
                raise ValueError(
                    f"No cell has modality '{mod}' (mdata.mod['{self.modalities[mod]}']); "
                    "drop it from `modalities`."
                )
        empty = ~mask.any(axis=1)
        if empty.any():
            names = ", ".join(map(str, mdata.obs_names[empty][:5]))
            raise ValueError(
                f"{int(empty.sum())} cell(s) of the MuData have none of the registered "
                f"modalities {list(self.modalities.values())} (e.g. {names}). Every cell needs "
                "at least one measured modality: subset the MuData to cells with data, or check "
                "the presence columns."
            )
        return {mod: int(n) for mod, n in zip(self.modalities, mask.sum(0))}

    def register_field(self, mdata: MuData) -> dict:
        return {
            self.MODALITIES_KEY: list(self.modalities),
            self.MOD_KEYS_KEY: dict(self.modalities),
            self.PRESENCE_KEYS_KEY: dict(self.presence_keys),
            self.N_CELLS_KEY: self._validated_counts(mdata),
        }

    def transfer_field(self, state_registry: dict, mdata_target: MuData, **kwargs) -> dict:
        self.allow_unmeasured = True
        return self.register_field(mdata_target)

    def get_summary_stats(self, state_registry: dict) -> dict:
        return {"n_modalities": len(state_registry[self.MODALITIES_KEY])}

    def view_state_registry(self, state_registry: dict) -> rich.table.Table | None:
        t = rich.table.Table(title="Modality presence")
        t.add_column("Modality")
        t.add_column("Source")
        t.add_column("Cells")
        for mod in state_registry[self.MODALITIES_KEY]:
            mod_key = state_registry[self.MOD_KEYS_KEY][mod]
            key = state_registry[self.PRESENCE_KEYS_KEY].get(mod)
            src = f"mdata.obsm['{mod_key}']" + (f" & mdata.obs['{key}']" if key else "")
            t.add_row(mod, src, str(state_registry[self.N_CELLS_KEY][mod]))
        return t


class _ObsColumnsField(BaseAnnDataField):
    """Base of the fields that read columns of ``mdata.obs`` without writing to it."""

    def __init__(self, registry_key: str, columns: list[str] | None) -> None:
        super().__init__()
        self._registry_key = registry_key
        self.columns = list(columns) if columns else []

    @property
    def registry_key(self) -> str:
        return self._registry_key

    @property
    def attr_name(self) -> str:
        return "obs"

    @property
    def attr_key(self) -> str | None:
        return ",".join(self.columns) if self.columns else None

    @property
    def is_empty(self) -> bool:
        return not self.columns

    def view_state_registry(self, state_registry: dict) -> rich.table.Table | None:
        return None


class CategoricalObsCodesField(_ObsColumnsField):
    """Categorical columns of ``mdata.obs`` (batch, categorical covariates), encoded on the fly.

    The categories of each column are stored in the state registry; the data loader receives
    integer codes. With ``allow_default=True`` and no column, every cell gets code 0 (a single
    batch).

    Parameters
    ----------
    registry_key
        Key of the codes in the data registry.
    columns
        Columns of ``mdata.obs``.
    summary_key
        Name of the summary statistic: the number of categories when there is one column
        (``n_batch``), the number of columns otherwise (``n_extra_categorical_covs``).
    allow_default
        Whether an empty ``columns`` means one category for every cell (as for batch).
    """

    MAPPINGS_KEY = "mappings"
    N_CATS_PER_KEY = "n_cats_per_key"
    FIELD_KEYS_KEY = "field_keys"

    def __init__(
        self,
        registry_key: str,
        columns: list[str] | None,
        summary_key: str,
        allow_default: bool = False,
    ) -> None:
        super().__init__(registry_key, columns)
        self.summary_key = summary_key
        self.allow_default = allow_default

    @property
    def is_empty(self) -> bool:
        return not self.columns and not self.allow_default

    def validate_field(self, mdata: MuData) -> None:
        for col in self.columns:
            check_categorical_column(mdata, col, role=self.registry_key)

    def register_field(self, mdata: MuData) -> dict:
        self.validate_field(mdata)
        mappings = {}
        for col in self.columns:
            values = mdata.obs[col]
            if isinstance(values.dtype, pd.CategoricalDtype):
                cats = values.cat.remove_unused_categories().cat.categories
            else:
                cats = pd.Index(np.unique(values.astype(str)))
            mappings[col] = np.asarray(cats.astype(str))
        return self._state(mappings)

    def transfer_field(
        self,
        state_registry: dict,
        mdata_target: MuData,
        extend_categories: bool = False,
        **kwargs,
    ) -> dict:
        self.validate_field(mdata_target)
        mappings = {}
        for col in state_registry[self.FIELD_KEYS_KEY]:
            cats = state_registry[self.MAPPINGS_KEY][col]
            new = pd.Index(np.unique(mdata_target.obs[col].astype(str))).difference(cats)
            if len(new) and not extend_categories:
                raise ValueError(
                    f"mdata.obs['{col}'] holds categories the model was not set up with: "
                    f"{list(new[:5])}. Known categories: {list(cats)}."
                )
            mappings[col] = np.concatenate([cats, np.asarray(new, dtype=str)])
        return self._state(mappings)

    def _state(self, mappings: dict[str, np.ndarray]) -> dict:
        return {
            self.FIELD_KEYS_KEY: list(mappings),
            self.MAPPINGS_KEY: mappings,
            self.N_CATS_PER_KEY: [len(c) for c in mappings.values()] or [1],
        }

    def get_summary_stats(self, state_registry: dict) -> dict:
        if self.allow_default:
            return {self.summary_key: state_registry.get(self.N_CATS_PER_KEY, [1])[0]}
        return {self.summary_key: len(state_registry.get(self.FIELD_KEYS_KEY, []))}

    def cell_data(self, mdata: MuData, state_registry: dict) -> np.ndarray:
        """Integer codes, ``(n_obs, n_columns)`` (``(n_obs, 1)`` of zeros for the default)."""
        columns = state_registry.get(self.FIELD_KEYS_KEY, [])
        if not columns:
            return np.zeros((mdata.n_obs, 1), dtype=np.int64)
        mappings = state_registry[self.MAPPINGS_KEY]
        codes = []
        for col in columns:
            check_categorical_column(mdata, col, role=self.registry_key)
            values = mdata.obs[col].astype(str)
            code = pd.Categorical(values, categories=mappings[col]).codes
            if (code < 0).any():
                unknown = pd.unique(values[code < 0])
                raise ValueError(
                    f"mdata.obs['{col}'] holds categories the model was not set up with: "
                    f"{list(unknown[:5])} (known: {list(mappings[col][:10])}). A model cannot "
                    "use a batch or category it has not learned: relabel these cells, or set up "
                    "and train a model that includes them."
                )
            codes.append(code)
        return np.stack(codes, axis=1).astype(np.int64)


class ContinuousObsField(_ObsColumnsField):
    """Continuous covariates: numeric columns of ``mdata.obs``."""

    def validate_field(self, mdata: MuData) -> None:
        for col in self.columns:
            check_numeric_column(mdata, col)

    def register_field(self, mdata: MuData) -> dict:
        self.validate_field(mdata)
        return {"columns": np.asarray(self.columns)}

    def transfer_field(self, state_registry: dict, mdata_target: MuData, **kwargs) -> dict:
        return self.register_field(mdata_target)

    def get_summary_stats(self, state_registry: dict) -> dict:
        return {"n_extra_continuous_covs": len(state_registry.get("columns", []))}

    def cell_data(self, mdata: MuData, state_registry: dict) -> np.ndarray:
        """Covariate values, ``(n_obs, n_columns)``."""
        cols = list(state_registry["columns"])
        return mdata.obs[cols].to_numpy(dtype=np.float32)
