"""Reference mapping (scArches) of mosaic queries: any subset of the reference's modalities.

scvi-tools' :class:`~scvi.model.base.ArchesMixin` conventions: the query is set up from the
reference's registry with its new batch (and covariate) categories appended, the reference's
weights are copied, the parameters of the new categories are added, and only those are
trained unless ``unfrozen=True``. Two things differ, for mosaic data:

- the query need not be padded, and may lack modalities of the reference altogether
  (:meth:`~mosaicvi.MosaicVI.prepare_query_mudata` adds each as a modality without cells,
  copying nothing);
- a new category's columns in the layers that see covariates are placed in that covariate's
  block (scvi-tools appends them after the last block, which misplaces a new batch when there
  are categorical covariates) and start at zero, so the mapped model gives the reference's
  cells exactly the reference's latent and decodings.

Reference models are read from their safe files (:mod:`._io`) or taken as instances;
nothing is unpickled.
"""

from __future__ import annotations

import logging
import os
import warnings
from copy import deepcopy

import anndata as ad
import numpy as np
import pandas as pd
import torch
from mudata import MuData
from scipy import sparse

from mosaicvi._checks import check_bool
from mosaicvi._compat import MODEL_NAME_KEY, SETUP_ARGS_KEY, parse_device_args
from mosaicvi._constants import REGISTRY_KEYS
from mosaicvi.data._features import UNMEASURED_UNS_KEY
from mosaicvi.data._manager import batch_categories
from mosaicvi.data._validation import check_is_mudata

from ._io import read_model_files
from ._query_weights import _FrozenEntries, _merge_weights

logger = logging.getLogger(__name__)

#: Below this fraction of the reference's features found in a query modality, warn.
MIN_FEATURE_RATIO = 0.8


def _reference_parts(reference_model, device) -> tuple[dict, dict[str, np.ndarray], dict]:
    """Attributes (with ``registry_`` and ``init_params_``), features and weights of a reference."""
    if isinstance(reference_model, str | os.PathLike):
        attributes, var_names, state_dict, _ = read_model_files(reference_model, None, device)
        if not attributes.get("is_trained_", False):
            raise ValueError(
                f"The reference model saved in {os.fspath(reference_model)!r} was never trained: "
                "train it (and save it again) before mapping a query."
            )
        return attributes, var_names, state_dict
    if not hasattr(reference_model, "module") or not hasattr(reference_model, "registry_"):
        raise TypeError(
            "`reference_model` must be a trained MosaicVI model or the directory it was saved "
            f"to, got {type(reference_model).__name__}."
        )
    if not reference_model.is_trained_:
        raise ValueError("The reference model is not trained: train it before mapping a query.")
    attributes = {
        name: deepcopy(value)
        for name, value in reference_model._get_user_attributes()
        if name.endswith("_")
    }
    state_dict = {k: v.detach().clone() for k, v in reference_model.module.state_dict().items()}
    return attributes, reference_model.get_var_names(), state_dict


def _registered_modalities(registry: dict) -> dict[str, str]:
    """Data type -> modality name of the reference's setup."""
    return dict(registry[SETUP_ARGS_KEY]["modalities"])


def _batch_categories(registry: dict) -> list[str]:
    """The batches of a registry, in code order."""
    return batch_categories(registry["field_registries"][REGISTRY_KEYS.BATCH]["state_registry"])


def _category_sizes(registry: dict) -> list[int]:
    """``[n_batch, *n_cats_per_cov]`` of a registry, as the model builds its layers."""
    fields = registry["field_registries"]
    n_batch = fields[REGISTRY_KEYS.BATCH]["state_registry"]["n_cats_per_key"][0]
    covs = fields[REGISTRY_KEYS.CAT_COVS]["state_registry"].get("n_cats_per_key", [])
    return [int(n_batch), *(int(n) for n in covs)]


def _with_features(adata: ad.AnnData, names: pd.Index, layer: str | None, mod_key: str):
    """A copy of ``adata`` with the features ``names``: missing ones zero, extra ones dropped."""
    if not adata.var_names.is_unique:
        raise ValueError(f"The query's features of '{mod_key}' (var_names) are not unique.")
    matrix = adata.layers[layer] if layer else adata.X
    found = names.isin(adata.var_names)
    ratio = found.mean()
    source = adata.var_names.get_indexer(names[found])
    csr = sparse.csr_matrix(matrix)[:, source]
    position = np.flatnonzero(found)
    expand = sparse.csr_matrix(
        (np.ones(len(position), dtype=np.float32), (np.arange(len(position)), position)),
        shape=(len(position), len(names)),
    )
    out = (csr @ expand).tocsr()
    logger.warning(
        "Query modality '%s': %d of the reference's %d features found; %d masked (zero "
        "columns marked unmeasured: left out of the likelihood and of the encoder, and "
        "imputed), %d dropped (the modality's matrix is copied).",
        mod_key,
        int(found.sum()),
        len(names),
        int((~found).sum()),
        int((~adata.var_names.isin(names)).sum()),
    )
    if not found.any():
        raise ValueError(
            f"The query's '{mod_key}' has none of the reference's {len(names)} features (e.g. "
            f"{list(names[:3])}; the query's: {list(adata.var_names[:3])}): check that both "
            "name their features the same way (gene symbols or IDs), or leave the modality out."
        )
    if ratio < MIN_FEATURE_RATIO:
        warnings.warn(
            f"The query's '{mod_key}' holds only {ratio:.0%} of the reference's features; "
            "mapping may be poor.",
            UserWarning,
            stacklevel=3,
        )
    result = ad.AnnData(
        X=None if layer else out, obs=adata.obs.copy(), var=pd.DataFrame(index=names.astype(str))
    )
    if layer:
        result.layers[layer] = out
    if not found.all():
        result.uns[UNMEASURED_UNS_KEY] = [str(n) for n in names[~found]]
    return result


def _check_query_cells(mdata: MuData) -> None:
    """A query with cells, uniquely named: clear errors before setup's own."""
    if mdata.n_obs == 0:
        raise ValueError(
            "The query has no cells: nothing to map. Pass a MuData with the new cells."
        )
    where, names = "the query", mdata.obs_names
    repeated_in = [m for m, adata in mdata.mod.items() if not adata.obs_names.is_unique]
    if repeated_in:
        where, names = f"modality '{repeated_in[0]}'", mdata.mod[repeated_in[0]].obs_names
    if not names.is_unique:
        repeated = names[names.duplicated()].unique()
        raise ValueError(
            f"The cell names (obs_names) of {where} are not unique: {len(repeated)} repeated, "
            f"e.g. {list(repeated[:3])}. Cells are matched across modalities by name: give "
            "each cell a unique name in every modality (e.g. prefix them with the sample), "
            "then `mdata.update()`."
        )


class MosaicQueryMixin:
    """``prepare_query_mudata`` and ``load_query_data`` (scArches) for mosaic queries."""

    #: attributes of the reference that a query model keeps (fit on the reference's cells)
    _query_kept_attributes: tuple[str, ...] = ()

    @staticmethod
    def prepare_query_mudata(
        mdata: MuData,
        reference_model,
        return_reference_var_names: bool = False,
    ) -> MuData | dict[str, pd.Index]:
        """A query MuData laid out like the reference's, for :meth:`~mosaicvi.MosaicVI.load_query_data`.

        Returns a **new** MuData; ``mdata`` is not modified. Its modalities are those of the
        reference:

        - a modality the query has, with the same features in any order, is the query's own
          AnnData (not copied);
        - one whose features differ is rebuilt with the reference's features: features the
          query lacks are zero columns, listed in the AnnData's
          ``uns["mosaicvi_unmeasured_features"]`` so that
          :meth:`~mosaicvi.MosaicVI.load_query_data` masks them (unmeasured in the query's
          batches: left out of the likelihood and of the encoders, and imputed), and
          features the reference lacks are dropped. This copies that modality's matrix (as
          sparse CSR) and is logged with the number masked; below 80% of the reference's
          features found, it warns;
        - a modality the query lacks is added **without cells** (``0 x n_features``), so
          that the query's cells are modelled as not measured in it (no padding).

        Modalities of the query that the reference does not have are left out.

        Parameters
        ----------
        mdata
            The query, unpadded, with ``mdata.obs`` holding the reference's batch and
            covariate columns.
        reference_model
            A trained :class:`~mosaicvi.MosaicVI` or the directory it was saved to.
        return_reference_var_names
            Return only the reference's features of each modality.
        """
        check_is_mudata(mdata)
        _check_query_cells(mdata)
        attributes, var_names, _ = _reference_parts(reference_model, "cpu")
        var_names = {mod: pd.Index(names) for mod, names in var_names.items()}
        if return_reference_var_names:
            return var_names
        registry = attributes["registry_"]
        layers = registry[SETUP_ARGS_KEY].get("layers") or {}
        modalities = _registered_modalities(registry)
        present = [m for m in modalities.values() if m in mdata.mod]
        if not present:
            raise ValueError(
                f"The query has none of the reference's modalities {list(modalities.values())}; "
                f"its modalities are {list(mdata.mod)}."
            )
        out = {}
        for data_type, mod_key in modalities.items():
            names = var_names[mod_key]
            layer = layers.get(data_type)
            if mod_key not in mdata.mod:
                empty = sparse.csr_matrix((0, len(names)), dtype=np.float32)
                adata = ad.AnnData(
                    X=None if layer else empty, var=pd.DataFrame(index=names.astype(str))
                )
                if layer:
                    adata.layers[layer] = empty
                out[mod_key] = adata
                continue
            adata = mdata.mod[mod_key]
            if set(adata.var_names) == set(names) and adata.var_names.is_unique:
                out[mod_key] = adata
                continue
            out[mod_key] = _with_features(adata, names, layer, mod_key)
        extra = [m for m in mdata.mod if m not in modalities.values()]
        if extra:
            logger.info("Modalities %s are not in the reference and are left out.", extra)
        query = MuData(out)
        query.obs = mdata.obs.loc[query.obs_names].copy()
        return query

    @classmethod
    def load_query_data(
        cls,
        mdata: MuData,
        reference_model,
        unfrozen: bool = False,
        freeze_dropout: bool = False,
        accelerator: str = "auto",
        device: int | str = "auto",
    ):
        """A model for the query cells, from a trained reference (scArches, online update).

        The query is set up from the reference's registry: its batches (and categories of
        covariates) that the reference does not know become new categories. The new model has
        the reference's weights plus parameters for the new categories: their columns in the
        layers that see covariates (zero at first, so the reference's cells keep their latent
        and decodings exactly), and their entries in per-batch tensors (the protein background
        prior, the plug-in library of cells that lack a modality, per-batch dispersions).
        Unless ``unfrozen``, only these new parameters are trained by
        :meth:`~mosaicvi.MosaicVI.train` (with ``weight_decay=0`` unless given in
        ``plan_kwargs``); the frozen entries stay bit-identical to the reference's whatever
        the optimizer options: their gradient is masked and their values are written back
        after each step.

        The encoders see batches only with ``encode_covariates=True``; otherwise a frozen
        query's latent is the reference encoders' and training adapts the decoders to the
        query batches (imputation and the likelihood of the query's counts).

        Call :meth:`~mosaicvi.MosaicVI.train` on the returned model, then the getters; pass
        the reference's MuData as ``adata=`` to place reference and query cells in one space.
        The freezing does not survive :meth:`~mosaicvi.MosaicVI.save` / ``load``.

        Parameters
        ----------
        mdata
            The query: unpadded MuData with the reference's modalities, or a subset of them
            after :meth:`~mosaicvi.MosaicVI.prepare_query_mudata`; features are matched by name.
        reference_model
            A trained :class:`~mosaicvi.MosaicVI` or the directory it was saved to (read
            from its checked safetensors + JSON files).
        unfrozen
            Train every parameter (fine-tune the whole reference on the query).
        freeze_dropout
            Turn dropout off for the query's training.
        accelerator, device
            Where to put the model (scvi-tools' meaning).
        """
        check_is_mudata(mdata)
        _check_query_cells(mdata)
        check_bool("unfrozen", unfrozen)
        check_bool("freeze_dropout", freeze_dropout)
        _, _, torch_device = parse_device_args(
            accelerator=accelerator,
            devices=device,
            return_device="torch",
            validate_single_device=True,
        )
        attributes, _, reference_state = _reference_parts(reference_model, torch_device)
        registry = deepcopy(attributes.pop("registry_"))
        if registry.get(MODEL_NAME_KEY) != cls.__name__:
            raise ValueError(
                f"The reference is a {registry.get(MODEL_NAME_KEY)} model, not {cls.__name__}."
            )
        missing = [m for m in _registered_modalities(registry).values() if m not in mdata.mod]
        if missing:
            raise ValueError(
                f"The query lacks the reference's modalities {missing}. Pass it through "
                f"`{cls.__name__}.prepare_query_mudata(query, reference_model)` first: it adds "
                "each as a modality without cells (nothing is padded or copied)."
            )
        try:
            cls.setup_mudata(
                mdata,
                source_registry=registry,
                extend_categories=True,
                **registry[SETUP_ARGS_KEY],
            )
        except ValueError as error:
            message = str(error)
            if "missing value" in message or (
                "missing" not in message and "not in the model" not in message
            ):
                raise
            raise ValueError(
                f"{error} `{cls.__name__}.prepare_query_mudata(query, reference_model)` adds "
                "missing features (masked as unmeasured) and drops extra ones."
            ) from error

        init = attributes.pop("init_params_")
        kwargs = {k: v for group in init.get("kwargs", {}).values() for k, v in group.items()}
        with warnings.catch_warnings():  # the query's own data options are replaced below
            warnings.simplefilter("ignore", UserWarning)
            model = cls(mdata, **init["non_kwargs"], **kwargs)
        model.to_device(torch_device)
        merged, new_entries = _merge_weights(
            model.module, reference_state, _category_sizes(registry)
        )
        if not new_entries and not unfrozen:
            raise ValueError(
                "The query has no batch or covariate category the reference lacks, so a frozen "
                "mapping has nothing to train. Use the reference's getters with `adata=query`, "
                "or `unfrozen=True` to fine-tune."
            )
        model.module.load_state_dict(merged)
        reference_batches = _batch_categories(registry)
        for head in model.module.heads.values():
            head.pin_plugin(len(reference_batches))

        query_measured = model.measured_batches_
        categories = model.adata_manager.batch_categories()
        reference_measured = attributes.get("measured_batches_", {})
        model.measured_batches_ = {
            mod: [
                b
                for b in categories
                if b in reference_measured.get(mod, []) or b in query_measured.get(mod, [])
            ]
            for mod in query_measured
        }
        model.reference_batches_ = reference_batches
        for name in cls._query_kept_attributes:  # e.g. MosaicANVI's label calibration
            if name in attributes:
                setattr(model, name, attributes[name])
        model._freeze_for_query(new_entries, unfrozen, freeze_dropout)
        model.module.eval()
        model.is_trained_ = False
        model._model_summary_string += (
            f"; mapped onto a reference of {len(model.reference_batches_)} batch(es)"
            + (" (unfrozen)" if unfrozen else f" ({len(new_entries)} tensors with new entries)")
        )
        return model

    def _freeze_for_query(self, new_entries: dict, unfrozen: bool, freeze_dropout: bool) -> None:
        """Train only the new entries (gradients of the others masked to zero)."""
        self._query_hooks = []
        self._query_frozen = not unfrozen
        if freeze_dropout:
            for layer in self.module.modules():
                if isinstance(layer, torch.nn.Dropout):
                    layer.p = 0.0
        if unfrozen:
            return
        self._query_guards = []
        for key, param in self.module.named_parameters():
            mask = new_entries.get(key)
            param.requires_grad = mask is not None
            if mask is not None:
                guard = _FrozenEntries(param, mask)
                self._query_guards.append(guard)
                self._query_hooks.append(param.register_hook(guard))
