"""The private scvi-tools names mosaicvi imports, gathered in one place.

scvi-tools (1.4) has no public name for these; each may change in a release without notice.
(mosaicvi's models also call the private methods of scvi-tools' ``BaseModelClass`` that every
scvi-tools model uses, such as ``_validate_anndata`` and ``_make_data_loader``; they are
inherited, not imported.)
``tests/test_compat.py`` checks every one against the installed scvi-tools (names,
signatures, and behaviour where it matters), so that an upgrade that changes them fails
loudly there instead of silently inside mosaicvi.

- ``MODEL_NAME_KEY``, ``SETUP_ARGS_KEY``: the keys of a data registry that hold the model's
  class name and the arguments of its ``setup_mudata`` (``scvi.data._constants``).
- :func:`fdr_de_prediction`: scvi-tools' rule for ``is_de_fdr_<target>`` in a differential
  expression table (``scvi.model.base._de_core``).
- :func:`initialize_model`: builds a model from saved init parameters and attributes, as
  ``load`` does (``scvi.model.base._save_load``).
- :func:`parse_device_args`: ``accelerator`` / ``device`` arguments to a torch device
  (``scvi.model._utils``).
"""

from __future__ import annotations

from scvi.data._constants import _MODEL_NAME_KEY as MODEL_NAME_KEY
from scvi.data._constants import _SETUP_ARGS_KEY as SETUP_ARGS_KEY
from scvi.model._utils import parse_device_args
from scvi.model.base._de_core import _fdr_de_prediction as fdr_de_prediction
from scvi.model.base._save_load import _initialize_model as initialize_model

__all__ = [
    "MODEL_NAME_KEY",
    "SETUP_ARGS_KEY",
    "fdr_de_prediction",
    "initialize_model",
    "parse_device_args",
]
