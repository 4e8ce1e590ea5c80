"""The training defaults of issue 26: epochs from the number of cells, the KL schedule."""

import numpy as np
import pytest
import scvi
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import Callback
from scvi.model._utils import get_max_epochs_heuristic

from mosaicvi import MosaicVI
from mosaicvi.model import _mosaicvi
from mosaicvi.model._mosaicvi import KL_WARMUP_SHARE, MAX_KL_WEIGHT, default_max_epochs

ALL = {"rna": "rna", "atac": "atac", "protein": "protein"}


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=1, max_value=50_000_000))
def test_default_epochs_follow_scvi_tools_rule(n_cells):
    with pytest.warns(UserWarning) if get_max_epochs_heuristic(n_cells) == 1 else _nothing():
        expected = get_max_epochs_heuristic(n_cells)
    assert default_max_epochs(n_cells) == expected


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


class KLWeights(Callback):
    """The plan's KL weight at each training step, the step, and the run's total steps."""

    def __init__(self) -> None:
        self.weights, self.steps, self.objective_weight = [], [], None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.weights.append(float(pl_module.kl_weight))
        self.steps.append(trainer.global_step)
        self.total = trainer.estimated_stepping_batches
        self.objective_weight = pl_module.module.objective_kl_weight


def fit(mdata, **kwargs) -> KLWeights:
    scvi.settings.seed = 0
    MosaicVI.setup_mudata(mdata, modalities=ALL, batch_key="batch")
    model = MosaicVI(mdata, n_latent=4, n_hidden=16)
    recorder = KLWeights()
    model.train(batch_size=64, enable_progress_bar=False, callbacks=[recorder], **kwargs)
    return recorder


def test_kl_weight_warms_up_over_a_share_of_the_steps_to_the_default_weight(trimodal):
    rec = fit(trimodal, max_epochs=8)
    warmup = round(KL_WARMUP_SHARE * rec.total)
    assert len(rec.steps) == rec.total and warmup >= 2
    expected = [min(step / warmup, 1.0) * MAX_KL_WEIGHT for step in rec.steps]
    np.testing.assert_allclose(rec.weights, expected, rtol=1e-6)
    assert max(rec.weights) == pytest.approx(0.25)  # the study's weight, not scvi-tools' 1
    # early stopping's objective is the one training approaches
    assert rec.objective_weight == pytest.approx(0.25)


def test_one_epoch_still_warms_up(trimodal):
    """A single epoch (scvi-tools' rule above 8M cells) warms up over its first steps."""
    rec = fit(trimodal, max_epochs=1)
    assert rec.weights[0] == 0.0 and rec.weights[-1] > 0


def test_max_epochs_none_resolves_to_the_rule(trimodal, monkeypatch):
    monkeypatch.setattr(_mosaicvi, "default_max_epochs", lambda n_cells: 5)
    rec = fit(trimodal)
    assert rec.total == 5 * (len(rec.steps) // 5) and len(rec.steps) % 5 == 0
    assert rec.weights[-1] == pytest.approx(MAX_KL_WEIGHT)


def test_plan_kwargs_override_the_kl_schedule(trimodal):
    plan_kwargs = {"n_epochs_kl_warmup": 400, "max_kl_weight": 1.0}
    rec = fit(trimodal, max_epochs=3, plan_kwargs=plan_kwargs)
    epochs = np.array(rec.steps) // (rec.total // 3)
    np.testing.assert_allclose(rec.weights, epochs / 400, rtol=1e-6)
    assert rec.objective_weight == 1.0
    assert plan_kwargs == {"n_epochs_kl_warmup": 400, "max_kl_weight": 1.0}  # not modified
    rec = fit(trimodal, max_epochs=2, plan_kwargs={"n_steps_kl_warmup": 10_000})
    assert max(rec.weights) < 0.01 * MAX_KL_WEIGHT
    rec = fit(trimodal, max_epochs=4, plan_kwargs={"kl_warmup_share": 0.0})
    assert min(rec.weights) == pytest.approx(MAX_KL_WEIGHT)  # no warm-up
    with pytest.raises(ValueError, match="not both"):
        fit(trimodal, max_epochs=1, plan_kwargs={"kl_warmup_share": 0.5, "n_epochs_kl_warmup": 4})
    with pytest.raises(ValueError, match="kl_warmup_share"):
        fit(trimodal, max_epochs=1, plan_kwargs={"kl_warmup_share": 2})


def test_warm_up_in_steps_alone_is_not_overridden_by_scvi_tools_epochs(trimodal):
    rec = fit(trimodal, max_epochs=2, plan_kwargs={"n_steps_kl_warmup": 2})
    assert rec.weights[0] == 0.0 and rec.weights[-1] == pytest.approx(MAX_KL_WEIGHT)


@pytest.mark.parametrize(
    ("plan_kwargs", "error", "match"),
    [
        ({"kl_warmup_share": None}, ValueError, "kl_warmup_share"),
        ({"kl_warmup_share": True}, ValueError, "kl_warmup_share"),
        ({"max_kl_weight": float("nan")}, ValueError, "max_kl_weight"),
        ({"max_kl_weight": "0.5"}, ValueError, "max_kl_weight"),
        ({"min_kl_weight": -1.0}, ValueError, "min_kl_weight"),
        ({"min_kl_weight": 0.5, "max_kl_weight": 0.2}, ValueError, "above"),
        ([], TypeError, "plan_kwargs"),
    ],
)
def test_bad_kl_schedules_are_refused_before_training(trimodal, plan_kwargs, error, match):
    with pytest.raises(error, match=match):
        fit(trimodal, max_epochs=1, plan_kwargs=plan_kwargs)


def test_numpy_numbers_are_accepted(trimodal):
    rec = fit(trimodal, max_epochs=np.int64(1), plan_kwargs={"kl_warmup_share": np.float32(0.5)})
    assert len(rec.steps) == rec.total


@pytest.mark.parametrize("n_cells", [0, -5, 1.5, True, None])
def test_default_max_epochs_refuses_a_non_count(n_cells):
    with pytest.raises((TypeError, ValueError), match="n_cells"):
        default_max_epochs(n_cells)


def test_subset_weight_without_subset_terms_warns(trimodal):
    MosaicVI.setup_mudata(trimodal, modalities=ALL, batch_key="batch")
    with pytest.warns(UserWarning, match="subset_weight"):
        MosaicVI(trimodal, n_latent=3, n_hidden=8, fusion="moe", subset_weight=2.0)
