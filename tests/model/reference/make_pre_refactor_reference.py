"""Write ``pre_refactor.npz``: short fixed-seed runs of the code before the modality heads.

Run with the code of commit 10f9293 (the last commit before the modality-head refactor), e.g.
``git worktree add /tmp/old 10f9293`` then, from this repository's root,
``PYTHONPATH=/tmp/old/src python tests/model/reference/make_pre_refactor_reference.py``. It records,
for each configuration, the module's initial parameters, the per-epoch training losses of a
3-epoch run and the latent / imputed values after it. ``tests/model/test_pre_refactor.py``
loads the same initial parameters into today's module (parameter names mapped), trains with
the same seed and checks that losses and outputs are unchanged.
"""

from pathlib import Path

import numpy as np
import scvi

from mosaicvi import MosaicVI
from mosaicvi.data import simulate_mosaic

ALL = {"rna": "rna", "atac": "atac", "protein": "protein"}
CONFIGS = {
    "default": {},
    "variant": {
        "fusion": "mopoe",
        "objective": "mvtcae",
        "gene_likelihood": "zinb",
        "dispersion": "gene-batch",
        "atac_likelihood": "poisson",
        "protein_likelihood": "nb",
        "encode_covariates": True,
        "n_hidden": [24, 12],
        "corruption_rate": 0.2,
    },
}
HISTORY = (
    "elbo_train",
    "reconstruction_loss_train",
    "kl_local_train",
    "reconstruction_loss_rna_train",
    "reconstruction_loss_atac_train",
    "reconstruction_loss_protein_train",
)


def reference_mdata():
    mdata = simulate_mosaic(n_cells=280, n_genes=30, n_regions=1200, n_proteins=8, seed=3)
    rng = np.random.default_rng(0)
    mdata.obs["site"] = np.where(rng.random(mdata.n_obs) < 0.5, "a", "b")
    mdata.obs["score"] = rng.normal(size=mdata.n_obs).astype(np.float32)
    return mdata


def setup(mdata, config):
    covariates = {}
    if config.get("encode_covariates"):
        covariates = {
            "categorical_covariate_keys": ["site"],
            "continuous_covariate_keys": ["score"],
        }
    MosaicVI.setup_mudata(mdata, modalities=ALL, batch_key="batch", **covariates)


def run(model, mdata):
    """Train 3 epochs at seed 0 and return what is compared."""
    scvi.settings.seed = 0
    # scvi-tools' KL schedule (400 warm-up epochs up to 1), the default before issue 26
    plan_kwargs = {"n_epochs_kl_warmup": 400, "max_kl_weight": 1.0}
    model.train(max_epochs=3, batch_size=64, enable_progress_bar=False, plan_kwargs=plan_kwargs)
    has_rna = np.flatnonzero(mdata.obsm["rna"].ravel())
    out = {f"history/{k}": model.history[k].to_numpy(dtype=float).ravel() for k in HISTORY}
    out["latent"] = model.get_latent_representation()
    out["latent_given_rna"] = model.get_latent_representation(indices=has_rna, given=["rna"])
    out["protein_given_rna"] = model.get_protein_expression(
        indices=has_rna, given=["rna"], return_numpy=True
    )
    out["rna"] = model.get_normalized_expression(return_numpy=True)
    out["atac"] = model.get_accessibility_estimates(indices=np.arange(40), return_numpy=True)
    return out


def main():
    arrays = {}
    for name, config in CONFIGS.items():
        mdata = reference_mdata()
        setup(mdata, config)
        scvi.settings.seed = 0
        model = MosaicVI(mdata, n_latent=4, **{"n_hidden": 16, **config})
        for key, value in model.module.state_dict().items():
            arrays[f"{name}/init/{key}"] = value.numpy().copy()  # not a view: training updates
        for key, value in run(model, mdata).items():
            arrays[f"{name}/{key}"] = value
    path = Path(__file__).with_name("pre_refactor.npz")
    np.savez_compressed(path, **arrays)
    print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")


if __name__ == "__main__":
    main()
