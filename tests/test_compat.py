"""The private scvi-tools API of ``mosaicvi._compat``: each name, signature and behaviour we rely on.

If a scvi-tools release changes one of them, these tests fail here, by name, instead of
mosaicvi failing somewhere inside a getter or ``load``.
"""

import inspect

import pandas as pd
import pytest
import scvi
import torch

from mosaicvi import MosaicVI, _compat
from mosaicvi.data import simulate_mosaic
from mosaicvi.model import MosaicTrainingPlan


def test_registry_keys_name_the_model_and_its_setup_arguments():
    mdata = simulate_mosaic(n_cells=40, n_genes=10, n_regions=10, n_proteins=4)
    modalities = {"rna": "rna", "atac": "atac", "protein": "protein"}
    MosaicVI.setup_mudata(mdata, modalities=modalities)
    registry = MosaicVI(mdata, n_latent=2, n_hidden=8).adata_manager.registry
    assert registry[_compat.MODEL_NAME_KEY] == "MosaicVI"
    assert registry[_compat.SETUP_ARGS_KEY]["modalities"] == modalities


def test_fdr_de_prediction_tags_the_largest_set_within_the_expected_fdr():
    assert list(inspect.signature(_compat.fdr_de_prediction).parameters) == [
        "posterior_probas",
        "fdr",
    ]
    probas = pd.Series([0.5, 0.99, 0.9, 0.97], index=list("abcd"))
    # sorted: 0.99, 0.97, 0.9, 0.5 -> running mean of 1 - p: 0.01, 0.02, 0.047, 0.16
    tagged = _compat.fdr_de_prediction(probas, fdr=0.05)
    assert list(tagged.index) == list("abcd")
    assert tagged.to_dict() == {"a": False, "b": True, "c": True, "d": True}


def test_initialize_model_builds_from_init_params_and_sets_attributes():
    assert list(inspect.signature(_compat.initialize_model).parameters) == [
        "cls",
        "adata",
        "registry",
        "attr_dict",
        "datamodule",
    ]
    mdata = simulate_mosaic(n_cells=40, n_genes=10, n_regions=10, n_proteins=4)
    MosaicVI.setup_mudata(mdata, modalities={"rna": "rna", "atac": "atac", "protein": "protein"})
    model = MosaicVI(mdata, n_latent=3, n_hidden=8)
    attributes = {"init_params_": model.init_params_, "measured_batches_": {"rna": ["x"]}}
    rebuilt = _compat.initialize_model(
        MosaicVI, mdata, model.adata_manager.registry, attributes, None
    )
    assert rebuilt.module.n_latent == 3 and rebuilt.measured_batches_ == {"rna": ["x"]}


def test_parse_device_args_gives_a_torch_device():
    parameters = inspect.signature(_compat.parse_device_args).parameters
    assert {"accelerator", "devices", "return_device", "validate_single_device"} <= set(parameters)
    *_, device = _compat.parse_device_args(
        accelerator="cpu", devices="auto", return_device="torch", validate_single_device=True
    )
    assert device == torch.device("cpu")


def test_training_plan_fuses_adam_through_the_public_custom_optimizer_path():
    mdata = simulate_mosaic(n_cells=40, n_genes=10, n_regions=10, n_proteins=4)
    MosaicVI.setup_mudata(mdata, modalities={"rna": "rna", "atac": "atac", "protein": "protein"})
    module = MosaicVI(mdata, n_latent=2, n_hidden=8).module
    defaults = inspect.signature(scvi.train.TrainingPlan.__init__).parameters
    for name, cls in (("Adam", torch.optim.Adam), ("AdamW", torch.optim.AdamW)):
        plan = MosaicTrainingPlan(module, optimizer=name, weight_decay=0.5)
        optimizer = plan.configure_optimizers()["optimizer"]
        assert type(optimizer) is cls and optimizer.defaults["fused"] is True
        assert optimizer.defaults["lr"] == defaults["lr"].default
        assert optimizer.defaults["eps"] == defaults["eps"].default
        assert optimizer.defaults["weight_decay"] == 0.5
    own = MosaicTrainingPlan(
        module, optimizer="Custom", optimizer_creator=lambda p: torch.optim.SGD(p, lr=0.1)
    )
    assert type(own.configure_optimizers()["optimizer"]) is torch.optim.SGD
    with pytest.raises(ValueError, match="optimizer_creator"):
        MosaicTrainingPlan(module, optimizer="Custom")


def test_the_fused_optimizer_reads_the_plan_when_it_is_made():
    """A learning-rate finder sets ``plan.lr`` and builds the optimizer again."""
    mdata = simulate_mosaic(n_cells=40, n_genes=10, n_regions=10, n_proteins=4)
    MosaicVI.setup_mudata(mdata, modalities={"rna": "rna", "atac": "atac", "protein": "protein"})
    plan = MosaicTrainingPlan(MosaicVI(mdata, n_latent=2, n_hidden=8).module)
    plan.lr, plan.weight_decay = 0.5, 0.25
    optimizer = plan.configure_optimizers()["optimizer"]
    assert optimizer.defaults["lr"] == 0.5 and optimizer.defaults["weight_decay"] == 0.25
