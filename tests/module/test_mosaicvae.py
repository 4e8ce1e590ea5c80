import pytest
import torch

from mosaicvi._constants import REGISTRY_KEYS
from mosaicvi.module import MosaicVAE

N_FEATURES = {"rna": 12, "atac": 20, "protein": 6}


def make_tensors(mask, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = mask.shape[0]
    tensors = {
        REGISTRY_KEYS.X_RNA: torch.poisson(torch.full((n, 12), 3.0), generator=g),
        REGISTRY_KEYS.X_ATAC: torch.poisson(torch.full((n, 20), 0.3), generator=g),
        REGISTRY_KEYS.X_PROTEIN: torch.poisson(torch.full((n, 6), 15.0), generator=g),
        REGISTRY_KEYS.PRESENCE: mask.float(),
        REGISTRY_KEYS.BATCH: torch.randint(0, 2, (n, 1), generator=g),
    }
    for j, key in enumerate((REGISTRY_KEYS.X_RNA, REGISTRY_KEYS.X_ATAC, REGISTRY_KEYS.X_PROTEIN)):
        tensors[key][~mask[:, j].bool()] = 0.0  # absent modality: zero rows, as the loader gives
    return tensors


def module(**kwargs):
    torch.manual_seed(0)
    return MosaicVAE(N_FEATURES, n_batch=2, n_latent=4, n_hidden=16, **kwargs)


def loss_of(mod, tensors, seed=1):
    torch.manual_seed(seed)
    _, _, out = mod(tensors)
    return out


MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1], [0, 1, 0]])


@pytest.mark.parametrize("subset_reconstruction", ["all", "own"])
@pytest.mark.parametrize("protein_likelihood", ["mixture", "nb"])
def test_terms_of_absent_modalities_are_exactly_zero(subset_reconstruction, protein_likelihood):
    mod = module(
        subset_reconstruction=subset_reconstruction, protein_likelihood=protein_likelihood
    )
    out = loss_of(mod, make_tensors(MASK))
    for j, name in enumerate(N_FEATURES):
        rec = out.reconstruction_loss[name]
        assert torch.all(rec[~MASK[:, j].bool()] == 0)
        assert torch.all(rec[MASK[:, j].bool()] > 0)
    absent_protein = ~MASK[:, 2].bool()
    assert torch.all(out.kl_local["kl_protein_background"][absent_protein] == 0)
    # unimodal KL terms only for cells with >= 2 modalities
    single = MASK.sum(1) == 1
    assert torch.all(out.kl_local["kl_z_unimodal"][single] == 0)
    assert torch.all(out.kl_local["kl_z_unimodal"][~single] > 0)
    assert torch.isfinite(out.loss)


def test_values_of_absent_modalities_do_not_change_the_loss():
    mod = module()
    mod.eval()
    tensors = make_tensors(MASK)
    reference = loss_of(mod, tensors).loss
    noisy = {k: v.clone() for k, v in tensors.items()}
    for j, key in enumerate((REGISTRY_KEYS.X_RNA, REGISTRY_KEYS.X_ATAC, REGISTRY_KEYS.X_PROTEIN)):
        absent = ~MASK[:, j].bool()
        noisy[key][absent] = torch.poisson(torch.full_like(noisy[key][absent], 50.0))
    assert loss_of(mod, noisy).loss.item() == reference.item()


def test_gradients_of_absent_modality_are_exactly_zero():
    mod = module()
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 1, 0]])  # no cell has protein
    tensors = make_tensors(mask)
    tensors[REGISTRY_KEYS.X_PROTEIN].requires_grad_(True)
    loss_of(mod, tensors).loss.backward()
    assert torch.all(tensors[REGISTRY_KEYS.X_PROTEIN].grad == 0)
    for part in (mod.encoders["protein"], mod.decoders["protein"]):
        for name, p in part.named_parameters():
            assert p.grad is None or torch.all(p.grad == 0), name
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in mod.encoders["rna"].parameters()
    )


def test_loss_output_has_a_term_per_modality():
    out = loss_of(module(), make_tensors(MASK))
    assert set(out.reconstruction_loss) == set(N_FEATURES)
    assert set(out.kl_local) == {"kl_z", "kl_z_unimodal", "kl_protein_background"}
    assert set(out.extra_metrics) == {f"reconstruction_loss_{m}" for m in N_FEATURES}


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"gene_likelihood": "zinb", "atac_likelihood": "poisson", "dispersion": "gene-batch"}],
)
def test_loss_goes_down(kwargs):
    mod = module(**kwargs)
    tensors = make_tensors(MASK.repeat(5, 1))
    opt = torch.optim.Adam(mod.parameters(), lr=1e-2)
    losses = []
    for step in range(60):
        opt.zero_grad()
        out = loss_of(mod, tensors, seed=step)
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


def test_given_restricts_the_posterior_to_those_experts():
    mod = module()
    mod.eval()
    tensors = make_tensors(MASK)
    inputs = mod._get_inference_input(tensors)
    with torch.no_grad():
        rna_only = mod.inference(**inputs, given=["rna"], unimodal=False)["qz"]
        unimodal = mod.inference(**inputs)["qz_unimodal"]["rna"]
    has_rna = MASK[:, 0].bool()
    torch.testing.assert_close(rna_only.loc[has_rna], unimodal.loc[has_rna])
    # cells without RNA get the prior
    torch.testing.assert_close(rna_only.loc[~has_rna], torch.zeros(int((~has_rna).sum()), 4))


def test_sample_draws_every_modality_for_every_cell():
    draws = module().sample(make_tensors(MASK), n_samples=2)
    assert draws["protein"].shape == (2, 6, 6) and draws["atac"].shape == (2, 6, 20)
    assert torch.all(draws["rna"] >= 0)


def test_invalid_subset_reconstruction():
    with pytest.raises(ValueError, match="subset_reconstruction"):
        module(subset_reconstruction="some")


def test_row_subset_decoding_equals_masked_full_decoding():
    """Training decodes only the rows each term needs; that equals decoding all and masking."""
    mod = module(protein_likelihood="nb")  # no background sampling: decoding is deterministic
    mod.eval()
    tensors = make_tensors(MASK.repeat(2, 1))
    mask = tensors[REGISTRY_KEYS.PRESENCE].bool()
    with torch.no_grad():
        inference = mod.inference(**mod._get_inference_input(tensors))
        gen_inputs = mod._get_generative_input(tensors, inference)
        out = mod.loss(tensors, inference, mod.generative(**gen_inputs))

        full_inputs = {**gen_inputs, "presence": None, "z_unimodal": None}
        multi = mask.sum(1) >= 2
        names = list(N_FEATURES)
        keys = (REGISTRY_KEYS.X_RNA, REGISTRY_KEYS.X_ATAC, REGISTRY_KEYS.X_PROTEIN)
        x = dict(zip(names, (tensors[k] for k in keys)))
        joint = mod.generative(**full_inputs)["px"]
        for j, k in enumerate(names):
            expected = -mod._log_likelihood(k, joint[k], x[k]) * mask[:, j]
            for i, m in enumerate(names):
                z_m = inference["z_unimodal"][m]
                px_m = mod.generative(**{**full_inputs, "z": z_m})["px"]
                weight = mask[:, i] & mask[:, j] & multi
                expected = expected - mod._log_likelihood(k, px_m[k], x[k]) * weight
            torch.testing.assert_close(out.reconstruction_loss[k], expected)
