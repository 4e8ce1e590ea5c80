"""Model files that are data, not programs: weights in safetensors, everything else in JSON.

scvi-tools saves a model as one ``model.pt`` written by :func:`torch.save` and reads it with
``torch.load(..., weights_only=False)``, which unpickles: a model file someone shares can run
code on the machine that loads it. A MosaicVI model directory instead holds

- ``model.safetensors``: the module's tensors (:mod:`safetensors`, no code);
- ``model.json``: the format name, the model's saved attributes (init parameters, the data
  registry, training history, measured batches), the feature names of every modality, and the
  SHA-256 of every other file of the directory, plus a SHA-256 of its own content;
- ``mdata.h5mu`` with ``save_anndata=True`` (the MuData, read by :func:`mudata.read_h5mu`).

Reading checks the format and every checksum before it parses anything else, so an edited,
truncated or planted file is refused, not loaded. (The checksums catch edits and corruption;
they are not a signature. What keeps a forged file from running code is that nothing here
unpickles: JSON and safetensors hold data only.) Directories in scvi-tools' pickle format are refused with
a message that names :func:`convert_legacy_model`, an explicit opt-in for files from a trusted
source.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save_file as save_tensors

from mosaicvi._compat import MODEL_NAME_KEY

#: version 2 (issue 24): experts' first layers store the features' weight apart (``weight_x``)
FORMAT = "mosaicvi-model-2"
WEIGHTS_FNAME = "model.safetensors"
META_FNAME = "model.json"
MDATA_FNAME = "mdata.h5mu"
#: scvi-tools' pickle file (refused)
LEGACY_FNAME = "model.pt"


class ModelFileError(ValueError):
    """A model directory that cannot be loaded safely: missing, legacy, edited or corrupt."""


# --------------------------------------------------------------------------- JSON encoding
def to_json(value, where: str = "attributes"):
    """``value`` as plain JSON, with tagged objects for arrays, frames, tuples and other keys.

    Raises :class:`TypeError` naming ``where`` for anything else, so that ``save`` fails
    instead of writing a file that cannot be read back.
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        items = [to_json(v, f"{where}[]") for v in value.ravel().tolist()]
        return {"__ndarray__": items, "dtype": value.dtype.str, "shape": list(value.shape)}
    if isinstance(value, pd.DataFrame):
        return {
            "__dataframe__": to_json(value.to_numpy(), where),
            "columns": [to_json(c, where) for c in value.columns],
            "index": to_json(value.index.to_numpy(), where),
            "index_name": value.index.name,
        }
    if isinstance(value, tuple):
        return {"__tuple__": [to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: to_json(v, f"{where}[{k!r}]") for k, v in value.items()}
        return {"__items__": [[to_json(k, where), to_json(v, where)] for k, v in value.items()]}
    raise TypeError(f"Cannot write {where} ({type(value).__name__}) to a model file.")


def from_json(value):
    """Inverse of :func:`to_json` (plain data only: no type named in the file is imported)."""
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__ndarray__" in value:
        dtype = np.dtype(value["dtype"])
        if dtype.hasobject:
            out = np.empty(len(value["__ndarray__"]), dtype=object)
            out[:] = [from_json(v) for v in value["__ndarray__"]]
        else:
            out = np.asarray(value["__ndarray__"], dtype=dtype)
        return out.reshape(value["shape"])
    if "__dataframe__" in value:
        index = pd.Index(from_json(value["index"]), name=value["index_name"])
        return pd.DataFrame(
            from_json(value["__dataframe__"]), index=index, columns=value["columns"]
        )
    if "__tuple__" in value:
        return tuple(from_json(v) for v in value["__tuple__"])
    if "__items__" in value:
        return {from_json(k): from_json(v) for k, v in value["__items__"]}
    return {k: from_json(v) for k, v in value.items()}


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _canonical(meta: dict) -> bytes:
    body = {k: v for k, v in meta.items() if k != "sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _paths(dir_path, prefix: str | None) -> dict[str, Path]:
    prefix = prefix or ""
    names = (META_FNAME, WEIGHTS_FNAME, MDATA_FNAME, LEGACY_FNAME)
    return {name: Path(dir_path) / f"{prefix}{name}" for name in names}


# --------------------------------------------------------------------------- write / read
def write_model_files(
    dir_path,
    attributes: dict,
    var_names: dict[str, np.ndarray],
    state_dict: dict[str, torch.Tensor],
    prefix: str | None = None,
    overwrite: bool = False,
    mdata=None,
    **anndata_write_kwargs,
) -> Path:
    """Write a model directory (see the module docstring); returns the JSON file's path."""
    dir_path = Path(dir_path)
    if dir_path.exists() and not overwrite:
        raise ValueError(f"{dir_path} already exists; pass `overwrite=True` or another path.")
    dir_path.mkdir(parents=True, exist_ok=True)
    paths = _paths(dir_path, prefix)
    meta = {
        "format": FORMAT,
        "attributes": to_json(attributes),
        "var_names": {mod: [str(v) for v in names] for mod, names in var_names.items()},
        "files": {},
    }
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    save_tensors(tensors, paths[WEIGHTS_FNAME])
    meta["files"][WEIGHTS_FNAME] = _sha256(paths[WEIGHTS_FNAME].read_bytes())
    if mdata is not None:
        mdata.write(paths[MDATA_FNAME], **anndata_write_kwargs)
        meta["files"][MDATA_FNAME] = _sha256(paths[MDATA_FNAME].read_bytes())
    meta["sha256"] = _sha256(_canonical(meta))
    paths[META_FNAME].write_text(json.dumps(meta, indent=1))
    paths[LEGACY_FNAME].unlink(missing_ok=True)  # overwrite: no stale pickle left beside it
    return paths[META_FNAME]


def _legacy_message(path: Path) -> str:
    return (
        f"{path} is a model file in scvi-tools' pickle format: loading it can run code stored "
        "in it, so mosaicvi does not. If the file comes from a source you trust, convert it "
        "once with `mosaicvi.model.convert_legacy_model(dir_path, output_dir, "
        "trust_pickled_code=True)` and load `output_dir`."
    )


def read_model_meta(dir_path, prefix: str | None = None) -> dict:
    """The checked content of ``model.json``: attributes decoded, checksums verified."""
    paths = _paths(dir_path, prefix)
    meta_path = paths[META_FNAME]
    if not meta_path.exists():
        if paths[LEGACY_FNAME].exists():
            raise ModelFileError(_legacy_message(paths[LEGACY_FNAME]))
        raise ModelFileError(f"No saved MosaicVI model in {dir_path} ({meta_path.name} missing).")
    try:
        meta = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError(f"{meta_path} is not a MosaicVI model file: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        if found == "mosaicvi-model-1":
            raise ModelFileError(
                f"{meta_path} was saved by an older mosaicvi (format {found!r}), whose network "
                f"is laid out differently; this version reads {FORMAT!r}: train the model again."
            )
        raise ModelFileError(f"{meta_path} has format {found!r}, expected {FORMAT!r}.")
    if meta.get("sha256") != _sha256(_canonical(meta)):
        raise ModelFileError(f"{meta_path} was edited after it was saved (checksum mismatch).")
    files = meta.get("files")
    if not isinstance(files, dict) or WEIGHTS_FNAME not in files or set(files) - set(paths):
        raise ModelFileError(f"{meta_path} lists unexpected files: {files}.")
    for name, digest in files.items():
        path = paths[name]
        if not path.exists():
            raise ModelFileError(f"{path} is missing from the saved model.")
        if _sha256(path.read_bytes()) != digest:
            raise ModelFileError(f"{path} was edited after it was saved (checksum mismatch).")
    meta["attributes"] = from_json(meta["attributes"])
    return meta


def read_model_files(
    dir_path, prefix: str | None = None, map_location: torch.device | str = "cpu"
) -> tuple[dict, dict[str, np.ndarray], dict[str, torch.Tensor], Path | None]:
    """Attributes, var names, state dict and the saved MuData's path (or ``None``), checked."""
    meta = read_model_meta(dir_path, prefix)
    paths = _paths(dir_path, prefix)
    state_dict = load_tensors(paths[WEIGHTS_FNAME].read_bytes())
    state_dict = {k: v.to(map_location) for k, v in state_dict.items()}
    var_names = {mod: np.asarray(names, dtype=object) for mod, names in meta["var_names"].items()}
    mdata_path = paths[MDATA_FNAME] if MDATA_FNAME in meta["files"] else None
    return meta["attributes"], var_names, state_dict, mdata_path


def convert_legacy_model(
    dir_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    prefix: str | None = None,
    overwrite: bool = False,
    *,
    trust_pickled_code: bool = False,
) -> Path:
    """Convert a MosaicVI model saved in scvi-tools' pickle format to the safe format.

    This unpickles ``model.pt``, which runs any code stored in it: do it only for files from a
    source you trust, and say so with ``trust_pickled_code=True``.

    Parameters
    ----------
    dir_path
        Directory with the legacy ``model.pt`` (and ``mdata.h5mu`` if it was saved with data).
    output_dir
        Directory to write the converted model to.
    prefix
        Prefix of the file names, in both directories.
    overwrite
        Overwrite ``output_dir`` if it exists.
    trust_pickled_code
        Must be ``True``: the explicit opt-in to unpickling.

    Returns
    -------
    Path of the converted model's ``model.json``.
    """
    if not trust_pickled_code:
        raise ModelFileError(
            "Converting a pickle-based model file runs the code it contains; pass "
            "`trust_pickled_code=True` only for a file from a source you trust."
        )
    paths = _paths(dir_path, prefix)
    if not paths[LEGACY_FNAME].exists():
        raise ModelFileError(f"No legacy model file {paths[LEGACY_FNAME]}.")
    saved = torch.load(paths[LEGACY_FNAME], map_location="cpu", weights_only=False)
    attributes = saved["attr_dict"]
    if attributes.get("registry_", {}).get(MODEL_NAME_KEY) != "MosaicVI":
        raise ModelFileError(f"{paths[LEGACY_FNAME]} does not hold a MosaicVI model.")
    state_dict = {k: v for k, v in saved["model_state_dict"].items() if k != "pyro_param_store"}
    var_names = saved.get("var_names")
    if not isinstance(var_names, dict):
        raise ModelFileError("Legacy model files with flat var names cannot be converted.")
    out = write_model_files(output_dir, attributes, var_names, state_dict, prefix, overwrite)
    if paths[MDATA_FNAME].exists():
        import mudata

        mdata = mudata.read_h5mu(paths[MDATA_FNAME])
        out = write_model_files(
            output_dir, attributes, var_names, state_dict, prefix, True, mdata=mdata
        )
    return out
