"""Property-based test (issue 15): random small mosaics, every outcome is clean.

Over random presence patterns, batches, dtypes, sparse formats and occasional bad values:
``setup_mudata`` either succeeds or raises a ``ValueError`` / ``KeyError`` / ``TypeError``
(never another exception); when it succeeds, one epoch of training gives finite losses and
a latent for every cell; the user's MuData is unchanged throughout.
"""

import anndata as ad
import mudata as md
import numpy as np
import pandas as pd
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from scipy import sparse

from mosaicvi import MosaicVI

TYPES = ("rna", "atac", "protein")
N_FEATURES = {"rna": 12, "atac": 16, "protein": 5}
FORMATS = ("csr", "csc", "dense")
DTYPES = ("float32", "float64", "int32", "int64", "bool")
FLAWS = (None, None, None, "negative", "nan", "inf", "fraction", "no_cells")


@st.composite
def mosaics(draw):
    """A MuData with 1–3 modalities, each cell measured in a random non-empty subset."""
    types = draw(st.lists(st.sampled_from(TYPES), min_size=1, max_size=3, unique=True))
    n_cells = draw(st.integers(8, 40))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    patterns = rng.integers(1, 2 ** len(types), size=n_cells)  # non-empty subsets
    flaw = draw(st.sampled_from(FLAWS))
    mods = {}
    for j, mod in enumerate(types):
        keep = (patterns >> j) & 1 == 1
        if flaw == "no_cells" and j == 0:
            keep[:] = False
        counts = rng.poisson(2.0, size=(int(keep.sum()), N_FEATURES[mod])).astype(float)
        dtype = draw(st.sampled_from(DTYPES))
        if dtype == "bool":
            counts = counts > 0
        else:
            counts = counts.astype(dtype)
        if (
            flaw in ("negative", "nan", "inf", "fraction")
            and j == 0
            and counts.size
            and dtype != "bool"
        ):
            counts = counts.astype(float)
            # NaN marks an unmeasured entry (set up and trained); the others are refused
            counts.flat[0] = {"negative": -1.0, "nan": np.nan, "inf": np.inf, "fraction": 0.5}[
                flaw
            ]
        fmt = draw(st.sampled_from(FORMATS))
        x = counts if fmt == "dense" else getattr(sparse, f"{fmt}_matrix")(counts)
        mods[mod] = ad.AnnData(
            X=x,
            obs=pd.DataFrame(index=[f"c{i}" for i in np.flatnonzero(keep)]),
            var=pd.DataFrame(index=[f"{mod}{k}" for k in range(N_FEATURES[mod])]),
        )
    mdata = md.MuData(mods)
    n_batches = draw(st.integers(1, 3))
    mdata.obs["batch"] = pd.Categorical(rng.integers(n_batches, size=mdata.n_obs).astype(str))
    return mdata, types


def snapshot(mdata: md.MuData) -> dict:
    def values(x):
        return x.toarray() if sparse.issparse(x) else np.array(x, copy=True)

    return {
        "obs": mdata.obs.copy(),
        "obs_names": list(mdata.obs_names),
        "mods": {
            k: (type(a.X), a.X.dtype, values(a.X), list(a.obs_names), list(a.var_names))
            for k, a in mdata.mod.items()
        },
    }


def assert_unchanged(before: dict, mdata: md.MuData) -> None:
    after = snapshot(mdata)
    pd.testing.assert_frame_equal(after["obs"], before["obs"])
    assert after["obs_names"] == before["obs_names"]
    for k, (kind, dtype, x, obs, var) in before["mods"].items():
        kind2, dtype2, x2, obs2, var2 = after["mods"][k]
        assert (kind2, dtype2, obs2, var2) == (kind, dtype, obs, var)
        np.testing.assert_array_equal(x2, x)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(mosaics())
def test_random_mosaics_set_up_and_train_cleanly(case):
    mdata, types = case
    before = snapshot(mdata)
    try:
        MosaicVI.setup_mudata(mdata, modalities={t: t for t in types}, batch_key="batch")
    except (ValueError, KeyError, TypeError) as error:
        event(f"setup refused: {type(error).__name__}")
        assert str(error)  # a message that says what is wrong
        assert_unchanged(before, mdata)
        return
    event("set up and trained")
    model = MosaicVI(mdata, n_latent=2, n_hidden=8)
    model.train(max_epochs=1, batch_size=16, enable_progress_bar=False)
    losses = model.history["elbo_train"].to_numpy(dtype=float)
    assert losses.size and np.isfinite(losses).all()
    latent = model.get_latent_representation()
    assert latent.shape == (mdata.n_obs, 2) and np.isfinite(latent).all()
    assert_unchanged(before, mdata)
