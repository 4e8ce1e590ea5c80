"""``save`` / ``load`` of MosaicVI with model files that cannot run code (see :mod:`._io`)."""

from __future__ import annotations

import os

import mudata
import numpy as np
from scvi.data import AnnDataManager

from mosaicvi._compat import (
    MODEL_NAME_KEY,
    SETUP_ARGS_KEY,
    initialize_model,
    parse_device_args,
)
from mosaicvi.data import ModalityCountsField

from ._io import read_model_files, read_model_meta, write_model_files


class MosaicSaveLoadMixin:
    """scvi-tools' ``save`` / ``load`` API, written as safetensors + JSON instead of a pickle."""

    def save(
        self,
        dir_path: str | os.PathLike,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **anndata_write_kwargs,
    ) -> None:
        """Save the model to ``dir_path``: weights, settings and feature names, no code.

        Writes ``model.safetensors`` (the module's tensors), ``model.json`` (init parameters,
        data registry, training history, measured batches, feature names of each modality,
        SHA-256 checksums) and, with ``save_anndata=True``, ``mdata.h5mu``. See
        ``docs/reliability.md``.

        Parameters
        ----------
        dir_path
            Directory to write (created).
        prefix
            Prefix of the file names.
        overwrite
            Overwrite the files of an existing directory.
        save_anndata
            Also write the model's MuData.
        **anndata_write_kwargs
            Passed to :meth:`mudata.MuData.write`.
        """
        attributes = {
            name: value for name, value in self._get_user_attributes() if name.endswith("_")
        }
        write_model_files(
            dir_path,
            attributes,
            self.get_var_names(),
            self.module.state_dict(),
            prefix=prefix,
            overwrite=overwrite,
            mdata=self.adata if save_anndata else None,
            **anndata_write_kwargs,
        )

    @classmethod
    def load(
        cls,
        dir_path: str | os.PathLike,
        adata: mudata.MuData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
    ):
        """Load a model saved by :meth:`~mosaicvi.MosaicVI.save`; nothing in the files is executed.

        Every file's checksum is verified first: a file edited after saving is refused with
        :class:`~mosaicvi.model.ModelFileError`, and so is a model in scvi-tools' pickle
        format (:func:`~mosaicvi.model.convert_legacy_model` converts one from a trusted
        source).

        Parameters
        ----------
        dir_path
            Directory written by :meth:`~mosaicvi.MosaicVI.save`.
        adata
            MuData to attach, set up like the model's; ``None`` reads the MuData saved with
            ``save_anndata=True``.
        accelerator, device
            Where to put the model (scvi-tools' meaning).
        prefix
            Prefix of the file names.
        """
        _, _, torch_device = parse_device_args(
            accelerator=accelerator,
            devices=device,
            return_device="torch",
            validate_single_device=True,
        )
        attributes, _, state_dict, mdata_path = read_model_files(
            dir_path, prefix, map_location=torch_device
        )
        if adata is None:
            if mdata_path is None:
                raise ValueError(
                    f"{dir_path} was saved without its data: pass `adata=` (a MuData set up "
                    "like the model's), or save with `save_anndata=True`."
                )
            adata = mudata.read_h5mu(mdata_path)
        registry = attributes.pop("registry_")
        if registry.get(MODEL_NAME_KEY) != cls.__name__:
            raise ValueError(
                f"{dir_path} holds a {registry.get(MODEL_NAME_KEY)} model, not {cls.__name__}."
            )
        # features are matched by name when the data are set up from the registry: the same set
        # in another order is read in the model's order, any other difference is an error
        cls.setup_mudata(adata, source_registry=registry, **registry[SETUP_ARGS_KEY])
        model = initialize_model(cls, adata, registry, attributes, None)
        model.module.on_load(model)
        model.module.load_state_dict(state_dict)
        model.to_device(torch_device)
        model.module.eval()
        model._validate_anndata(adata)
        model._weights_of_unknown_history()
        return model

    def get_var_names(self, legacy_mudata_format: bool = False) -> dict[str, np.ndarray]:
        """The features of each registered modality, in the model's order, by modality name.

        These are the features the model was set up with, whatever the order of the attached
        data's columns (read in this order).
        """
        manager = self.adata_manager
        return {
            field.mod_key: np.asarray(
                manager.get_state_registry(field.registry_key)["column_names"]
            )
            for field in manager.fields
            if isinstance(field, ModalityCountsField)
        }

    @classmethod
    def convert_legacy_save(cls, *args, **kwargs) -> None:
        """Not available: scvi-tools' converter unpickles; see :func:`~mosaicvi.model.convert_legacy_model`.

        :func:`~mosaicvi.model.convert_legacy_model` converts a directory written in
        scvi-tools' pickle format from a trusted source, with an explicit opt-in.
        """
        raise TypeError(
            "MosaicVI model files are safetensors + JSON; to convert a directory in scvi-tools' "
            "pickle format from a source you trust, use "
            "mosaicvi.model.convert_legacy_model(path, output_dir, trust_pickled_code=True)."
        )

    @staticmethod
    def load_registry(dir_path: str | os.PathLike, prefix: str | None = None) -> dict:
        """The data registry saved with a model (read from ``model.json``, checked)."""
        return read_model_meta(dir_path, prefix)["attributes"]["registry_"]

    @staticmethod
    def view_setup_args(dir_path: str | os.PathLike, prefix: str | None = None) -> None:
        """Print the arguments the saved model's data were set up with."""
        AnnDataManager.view_setup_method_args(MosaicSaveLoadMixin.load_registry(dir_path, prefix))
