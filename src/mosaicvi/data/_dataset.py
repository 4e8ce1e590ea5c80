"""Data loading from unpadded MuData: each modality's rows are gathered per minibatch.

scvi-tools' :class:`~scvi.data.AnnTorchDataset` indexes every registered matrix with the same
cell indices, which needs every modality padded to all cells. :class:`MosaicTorchDataset`
instead maps each minibatch's MuData cells to their rows in each modality's AnnData, reads only
those rows, and fills zeros where a cell lacks the modality (the presence mask, also yielded,
tells the module to ignore them). Only the minibatch is densified.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse
from scvi.data import AnnDataManager, AnnDataManagerValidationCheck, AnnTorchDataset
from torch.utils.data import Subset

from mosaicvi._constants import REGISTRY_KEYS

from ._fields import (
    CategoricalObsCodesField,
    ContinuousObsField,
    ModalityCountsField,
    ModalityPresenceField,
)


class PaddedRows:
    """Read rows of an unpadded modality matrix by MuData cell index.

    Parameters
    ----------
    matrix
        The modality's matrix (sparse or dense), ``(n_modality_cells, n_features)``.
    rows
        For each MuData cell, its row in ``matrix`` or ``-1``.
    """

    def __init__(self, matrix, rows: np.ndarray) -> None:
        self.matrix = matrix
        self.rows = rows

    def __getitem__(self, indexes) -> np.ndarray:
        rows = self.rows[indexes]
        out = np.zeros((len(rows), self.matrix.shape[1]), dtype=np.float32)
        present = rows >= 0
        if present.any():
            block = self.matrix[rows[present]]
            out[present] = block.toarray() if sparse.issparse(block) else np.asarray(block)
        return out


class MosaicTorchDataset(AnnTorchDataset):
    """Torch dataset over a MuData registered with :class:`MosaicDataManager`."""

    @property
    def data(self) -> dict:
        if not hasattr(self, "_data"):
            manager = self.adata_manager
            mdata = manager.adata
            fields = {f.registry_key: f for f in manager.fields}
            rows = manager.modality_rows()
            data = {}
            for key in self.keys_and_dtypes:
                field = fields[key]
                if isinstance(field, ModalityCountsField):
                    data[key] = PaddedRows(field.matrix(mdata), rows[field.data_type])
                elif isinstance(field, ModalityPresenceField):
                    data[key] = manager.presence()
                elif isinstance(field, CategoricalObsCodesField | ContinuousObsField):
                    data[key] = field.cell_data(mdata, manager.get_state_registry(key))
                else:  # pragma: no cover - every mosaicvi field is handled above
                    raise TypeError(f"No loader for registry key {key!r}.")
            self._data = data
        return self._data

    def __getitem__(self, indexes: int | list[int] | slice) -> dict[str, np.ndarray]:
        if isinstance(indexes, int):
            indexes = [indexes]
        indexes = np.asarray(indexes) if not isinstance(indexes, slice) else indexes
        return {
            key: np.asarray(self.data[key][indexes]).astype(dtype, copy=False)
            for key, dtype in self.keys_and_dtypes.items()
        }


class MosaicDataManager(AnnDataManager):
    """:class:`~scvi.data.AnnDataManager` whose torch dataset reads unpadded MuData.

    scvi-tools' check that every modality holds every cell is turned off: presence is handled
    by :class:`~mosaicvi.data.ModalityPresenceField`.
    """

    def __init__(
        self,
        fields: list | None = None,
        setup_method_args: dict | None = None,
        validation_checks: AnnDataManagerValidationCheck | None = None,
    ) -> None:
        if validation_checks is None:
            validation_checks = AnnDataManagerValidationCheck(check_fully_paired_mudata=False)
        super().__init__(fields, setup_method_args, validation_checks)

    def register_fields(self, adata, source_registry=None, **transfer_kwargs) -> None:
        self._rows = None
        super().register_fields(adata, source_registry, **transfer_kwargs)

    # Facts about the registered MuData, computed once per registration and shared by the
    # data loader, the model and its getters.
    @property
    def modalities(self) -> list[str]:
        """The registered data types, in the order of the presence mask's columns."""
        field = next(f for f in self.fields if isinstance(f, ModalityPresenceField))
        return list(field.modalities)

    def modality_rows(self) -> dict[str, np.ndarray]:
        """Row of each cell in each modality's AnnData (``-1`` where it lacks it), by data type."""
        if getattr(self, "_rows", None) is None:
            field = next(f for f in self.fields if isinstance(f, ModalityPresenceField))
            self._rows = field.row_indices(self.adata)
        return self._rows

    def presence(self, indices: np.ndarray | None = None) -> np.ndarray:
        """Boolean ``(n_cells, n_modalities)`` presence mask of the cells ``indices`` (all)."""
        rows = self.modality_rows()
        mask = np.stack([rows[mod] >= 0 for mod in self.modalities], axis=1)
        return mask if indices is None else mask[indices]

    def batch_codes(self) -> np.ndarray:
        """Batch code of each cell, ``(n_cells,)``."""
        field = next(f for f in self.fields if f.registry_key == REGISTRY_KEYS.BATCH)
        return field.cell_data(self.adata, self.get_state_registry(REGISTRY_KEYS.BATCH))[:, 0]

    def batch_categories(self) -> list[str]:
        """The batch categories, in code order."""
        mappings = self.get_state_registry(REGISTRY_KEYS.BATCH)["mappings"]
        return [str(c) for c in next(iter(mappings.values()), ["0"])]

    def measured_counts(self, modality: str) -> tuple[object, np.ndarray, np.ndarray]:
        """The stored count matrix of ``modality``, its measured cells' rows and batch codes.

        The matrix is the user's, not copied.
        """
        field = next(
            f
            for f in self.fields
            if isinstance(f, ModalityCountsField) and f.data_type == modality
        )
        rows = self.modality_rows()[modality]
        present = rows >= 0
        return field.matrix(self.adata), rows[present], self.batch_codes()[present]

    def create_torch_dataset(
        self,
        indices: Sequence[int] | Sequence[bool] | None = None,
        data_and_attributes: list[str] | dict[str, np.dtype] | None = None,
        load_sparse_tensor: bool = False,
    ) -> MosaicTorchDataset | Subset:
        if load_sparse_tensor:
            raise ValueError("mosaicvi does not support `load_sparse_tensor=True`.")
        dataset = MosaicTorchDataset(self, getitem_tensors=data_and_attributes)
        if indices is not None:
            dataset = Subset(dataset, indices)
        return dataset
