"""Behaviour preserved by the modality-head refactor (issue 13).

``reference/pre_refactor.npz`` was written by ``reference/make_pre_refactor_reference.py`` with
the code before the refactor (commit 10f9293): each configuration's initial parameters, the
per-epoch losses of a 3-epoch fixed-seed run and the latent and imputed values after it.
Today's module gets the same initial parameters (the modules are laid out differently, so
the random initialisation differs: encoders ``encoders.<mod>.*`` became
``heads.<mod>.expert.*`` and decoders ``decoders.<mod>.*`` became ``heads.<mod>.*``) and must
then train and predict exactly as before.

Since sparse minibatches stay sparse (issue 14), denoising corruption draws one random number
per stored count instead of one per matrix entry, so a run with ``corruption_rate > 0`` uses
another random stream; such configurations are checked with dense count matrices, whose
minibatches are corrupted entry by entry as before.

Since issue 24 the defaults sample the ATAC likelihood and the subset terms in training; the
exact path they replaced (``EXACT``) must still train exactly as before. The experts' first
layers store the features' weight apart (``weight_x``, the transpose of the old weight's
first columns), so the old weight is split between the two. Since issue 25 the history's
ELBO is the joint term's; ``objective_history`` adds the other terms back.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from mosaicvi import MosaicVI

HERE = Path(__file__).parent / "reference"
_spec = importlib.util.spec_from_file_location(
    "make_pre_refactor_reference", HERE / "make_pre_refactor_reference.py"
)
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)


#: the training options before issue 24
EXACT = {"atac_closed_cells": None, "subset_terms": "all"}


def split_first_layers(init: dict, module) -> dict:
    """The old full first-layer weights split into ``weight_x`` and the rest."""
    out = dict(init)
    state = module.state_dict()
    for key, value in state.items():
        if key.endswith(".weight_x"):
            rest = key[: -len("_x")]
            full = out.pop(rest)
            n_wide = value.shape[0]
            out[key] = full[:, :n_wide].T.contiguous()
            if rest in state:  # no other columns: no such weight
                out[rest] = full[:, n_wide:].contiguous()
    return out


def new_name(old: str) -> str:
    part, mod, rest = old.split(".", 2)
    return f"heads.{mod}.expert.{rest}" if part == "encoders" else f"heads.{mod}.{rest}"


def objective_history(history) -> dict:
    """The history of the objective's terms, as the code before issue 25 logged them.

    Since issue 25 ``elbo_*``, ``reconstruction_loss_*`` and ``kl_local_*`` are the ELBO of the
    measured modalities (the joint term); the MVAE subset terms and MVTCAE's expert KLs are
    logged apart. Before, they were part of those terms.
    """

    def get(key):
        column = history.get(key)
        return 0.0 if column is None else column.to_numpy(dtype=float).ravel()

    mods = ("rna", "atac", "protein")
    subset_rec = {m: get(f"subset_reconstruction_loss_{m}_train") for m in mods}
    other_kl = get("subset_kl_train") + get("kl_z_experts_train")
    out = {
        "history/elbo_train": get("elbo_train") + sum(subset_rec.values()) + other_kl,
        "history/reconstruction_loss_train": get("reconstruction_loss_train")
        + sum(subset_rec.values()),
        "history/kl_local_train": get("kl_local_train") + other_kl,
    }
    for m in mods:
        out[f"history/reconstruction_loss_{m}_train"] = (
            get(f"reconstruction_loss_{m}_train") + subset_rec[m]
        )
    return out


@pytest.mark.parametrize("name", list(reference.CONFIGS))
def test_short_run_matches_the_code_before_the_heads(name):
    stored = np.load(HERE / "pre_refactor.npz")
    config = reference.CONFIGS[name]
    mdata = reference.reference_mdata()
    if config.get("corruption_rate", 0.0) > 0:
        for adata in mdata.mod.values():
            adata.X = adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X
    reference.setup(mdata, config)
    model = MosaicVI(mdata, n_latent=4, **{"n_hidden": 16, **EXACT, **config})
    prefix = f"{name}/init/"
    init = {
        new_name(key[len(prefix) :]): torch.from_numpy(stored[key])
        for key in stored.files
        if key.startswith(prefix)
    }
    init = split_first_layers(init, model.module)
    missing, unexpected = model.module.load_state_dict(init, strict=False)
    assert unexpected == []
    # only the plug-in context of cells without a modality is new
    assert missing and all(".plugin_" in key for key in missing)
    outputs = reference.run(model, mdata)
    outputs.update(objective_history(model.history))
    assert set(outputs) == {k[len(name) + 1 :] for k in stored.files if "/init/" not in k}
    for key, value in outputs.items():
        np.testing.assert_allclose(
            value, stored[f"{name}/{key}"], rtol=1e-4, atol=1e-5, err_msg=f"{name}: {key}"
        )
