import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from mosaicvi._constants import REGISTRY_KEYS, counts_key
from mosaicvi.module import MosaicVAE
from mosaicvi.nn import product_of_experts

N_FEATURES = {"rna": 12, "atac": 20, "protein": 6}
KEYS = tuple(counts_key(m) for m in N_FEATURES)


def make_tensors(mask, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = mask.shape[0]
    tensors = {
        counts_key("rna"): torch.poisson(torch.full((n, 12), 3.0), generator=g),
        counts_key("atac"): torch.poisson(torch.full((n, 20), 0.3), generator=g),
        counts_key("protein"): torch.poisson(torch.full((n, 6), 15.0), generator=g),
        REGISTRY_KEYS.PRESENCE: mask.float(),
        REGISTRY_KEYS.BATCH: torch.randint(0, 2, (n, 1), generator=g),
    }
    for j, key in enumerate(KEYS):
        tensors[key][~mask[:, j].bool()] = 0.0  # absent modality: zero rows, as the loader gives
    return tensors


LIKELIHOODS = {
    "gene_likelihood": ("rna", "likelihood"),
    "dispersion": ("rna", "dispersion"),
    "atac_likelihood": ("atac", "likelihood"),
    "protein_likelihood": ("protein", "likelihood"),
}


def module(**kwargs):
    """A small trimodal module; the model's likelihood arguments become head options."""
    torch.manual_seed(0)
    kwargs.setdefault("n_hidden", 16)
    head_options = {}
    for arg, (mod, option) in LIKELIHOODS.items():
        if arg in kwargs:
            head_options.setdefault(mod, {})[option] = kwargs.pop(arg)
    return MosaicVAE(N_FEATURES, n_batch=2, n_latent=4, head_options=head_options, **kwargs)


def loss_of(mod, tensors, seed=1):
    torch.manual_seed(seed)
    _, _, out = mod(tensors)
    return out


MASK = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1], [0, 1, 0]])

#: every fusion x objective, and the subset-reconstruction, stacked and denoising variants
CONFIGS = [
    {"fusion": f, "objective": o} for f in ("poe", "moe", "mopoe") for o in ("elbo", "mvtcae")
] + [
    {"subset_reconstruction": "own"},
    {"fusion": "mopoe", "subset_reconstruction": "own"},
    {"n_hidden": [24, 8], "n_layers": None},
    {"corruption_rate": 0.3},
]
IDS = ["-".join(f"{k}={v}" for k, v in c.items()) or "default" for c in CONFIGS]


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
@pytest.mark.parametrize("protein_likelihood", ["mixture", "nb"])
def test_terms_of_absent_modalities_are_exactly_zero(config, protein_likelihood):
    mod = module(protein_likelihood=protein_likelihood, **config)
    out = loss_of(mod, make_tensors(MASK))
    for j, name in enumerate(N_FEATURES):
        rec = out.reconstruction_loss[name]
        assert torch.all(rec[~MASK[:, j].bool()] == 0)
        assert torch.all(rec[MASK[:, j].bool()] > 0)
    absent_protein = ~MASK[:, 2].bool()
    background = out.kl_local["kl_protein_background"]
    assert torch.all(background[absent_protein] == 0)
    if protein_likelihood == "mixture":
        assert torch.all(background[~absent_protein] > 0)
    assert torch.all(out.kl_local["kl_z"] > 0)
    assert torch.isfinite(out.loss)


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_values_of_absent_modalities_do_not_change_the_loss(config):
    mod = module(**config)
    tensors = make_tensors(MASK)
    reference = loss_of(mod, tensors).loss
    noisy = {k: v.clone() for k, v in tensors.items()}
    for j, key in enumerate(KEYS):
        absent = ~MASK[:, j].bool()
        noisy[key][absent] = torch.poisson(torch.full_like(noisy[key][absent], 50.0))
    assert loss_of(mod, noisy).loss.item() == reference.item()


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_gradients_of_absent_modality_are_exactly_zero(config):
    mod = module(**config)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 1, 0]])  # no cell has protein
    tensors = make_tensors(mask)
    tensors[counts_key("protein")].requires_grad_(True)
    loss_of(mod, tensors).loss.backward()
    assert torch.all(tensors[counts_key("protein")].grad == 0)
    for name, p in mod.heads["protein"].named_parameters():
        assert p.grad is None or torch.all(p.grad == 0), name
    assert any(
        p.grad is not None and p.grad.abs().sum() > 0 for p in mod.heads["rna"].expert.parameters()
    )


@pytest.mark.parametrize("objective", ["elbo", "mvtcae"])
def test_loss_output_has_a_term_per_modality(objective):
    out = loss_of(module(objective=objective), make_tensors(MASK))
    assert set(out.reconstruction_loss) == set(N_FEATURES)
    assert set(out.kl_local) == {"kl_z", "kl_protein_background"}
    extra = {f"reconstruction_loss_{m}" for m in N_FEATURES} | {"objective"}
    if objective == "mvtcae":
        extra |= {"kl_z_experts"}
    else:  # the MVAE subset terms, apart from the ELBO
        extra |= {f"subset_reconstruction_loss_{m}" for m in N_FEATURES} | {"subset_kl"}
    assert set(out.extra_metrics) == extra


@pytest.mark.parametrize("fusion", ["poe", "moe", "mopoe"])
def test_reported_elbo_is_the_joint_term(fusion):
    """``reconstruction_loss`` and ``kl_local`` are the ELBO of each cell's measured modalities
    under ``q(z | X)``: with ``"poe"`` the first component only (the subset terms are extra
    metrics, and the loss is their sum with the ELBO); a mixture posterior is every component."""
    mod = module(fusion=fusion, protein_likelihood="nb")  # no local latent: only kl_z
    mod.eval()
    tensors = make_tensors(MASK)
    mask = MASK.bool()
    with torch.no_grad():
        inference = mod.inference(**mod._get_inference_input(tensors))
        gen_inputs = mod._get_generative_input(tensors, inference)
        out = mod.loss(tensors, inference, mod.generative(**gen_inputs))
        comp = inference["components"]
        n_joint = 1 if fusion == "poe" else comp["weights"].shape[0]
        x = dict(zip(N_FEATURES, (tensors[k] for k in KEYS)))
        elbo_terms = torch.zeros(mask.shape[0])
        for c in range(n_joint):
            px = mod.generative(**{**gen_inputs, "components": None, "z": comp["z"][c]})["px"]
            w = comp["weights"][c]
            for j, k in enumerate(N_FEATURES):
                nll = -mod.heads[k].log_likelihood(px[k], x[k])
                elbo_terms += nll * w * mask[:, j]
            q = Normal(comp["loc"][c], comp["var"][c].sqrt())
            elbo_terms += w * kl_divergence(q, Normal(0.0, 1.0)).sum(-1)
        reported = sum(out.reconstruction_loss.values()) + out.kl_local["kl_z"]
        torch.testing.assert_close(reported, elbo_terms, rtol=1e-5, atol=1e-4)
        if fusion == "poe":  # the objective adds the subset terms; the ELBO alone is lower
            subset = (
                sum(out.extra_metrics[f"subset_reconstruction_loss_{k}"] for k in N_FEATURES)
                + out.extra_metrics["subset_kl"]
            )
            torch.testing.assert_close(out.loss, reported.mean() + subset)
            assert subset > 0
        else:
            torch.testing.assert_close(out.loss, reported.mean())
        torch.testing.assert_close(out.extra_metrics["objective"], out.loss)  # kl_weight 1
        warm = mod.loss(tensors, inference, mod.generative(**gen_inputs), kl_weight=0.5)
        torch.testing.assert_close(warm.extra_metrics["objective"], out.loss)
        assert warm.loss < out.loss


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"gene_likelihood": "zinb", "atac_likelihood": "poisson", "dispersion": "gene-batch"},
        {"fusion": "moe"},
        {"fusion": "mopoe", "objective": "mvtcae"},
        {"n_hidden": [32, 16], "corruption_rate": 0.2},
    ],
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


def experts(mod, tensors):
    inputs = mod._get_inference_input(tensors)
    return mod.inference(**inputs)["components"]


@pytest.mark.parametrize("fusion", ["poe", "moe", "mopoe"])
def test_given_restricts_the_posterior_to_those_experts(fusion):
    mod = module(fusion=fusion)
    mod.eval()
    tensors = make_tensors(MASK)
    inputs = mod._get_inference_input(tensors)
    with torch.no_grad():
        rna_only = mod.inference(**inputs, given=["rna"], training_terms=False)["qz"]
        comp = experts(mod, tensors)
    has_rna = MASK[:, 0].bool()
    # any fusion of the RNA expert alone is the RNA expert times the prior
    loc, _ = product_of_experts(comp["expert_loc"][:1], comp["expert_var"][:1], MASK[:, :1])
    torch.testing.assert_close(rna_only.loc[has_rna], loc[has_rna])
    # cells without RNA get the prior
    torch.testing.assert_close(rna_only.loc[~has_rna], torch.zeros(int((~has_rna).sum()), 4))


def test_sample_draws_every_modality_for_every_cell():
    draws = module().sample(make_tensors(MASK), n_samples=2)
    assert draws["protein"].shape == (2, 6, 6) and draws["atac"].shape == (2, 6, 20)
    assert torch.all(draws["rna"] >= 0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"subset_reconstruction": "some"}, "subset_reconstruction"),
        ({"fusion": "sum"}, "fusion"),
        ({"objective": "iwae"}, "objective"),
        ({"objective": "mvtcae", "alpha": 1.5}, "alpha"),
        ({"objective": "mvtcae", "beta": 0.0}, "beta"),
        ({"corruption_rate": 1.0}, "corruption_rate"),
        ({"n_hidden": [32, 0]}, "n_hidden"),
        ({"n_hidden": [32, 16], "n_layers": 3}, "n_layers"),
        ({"subset_weight": -1.0}, "subset_weight"),
        ({"subset_weight": float("inf")}, "subset_weight"),
        ({"subset_weight": True}, "subset_weight"),
        ({"encoder_input": "tfidf"}, "encoder_input"),
    ],
)
def test_invalid_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        module(**kwargs)


@pytest.mark.parametrize("config", CONFIGS[:6] + CONFIGS[6:8], ids=IDS[:8])
def test_batched_component_decoding_equals_decoding_each_component(config):
    """Training decodes every component's rows in one batch; equal to one decode per component."""
    mod = module(protein_likelihood="nb", **config)  # deterministic decoding (no background)
    mod.eval()
    tensors = make_tensors(MASK.repeat(2, 1))
    mask = tensors[REGISTRY_KEYS.PRESENCE].bool()
    with torch.no_grad():
        inference = mod.inference(**mod._get_inference_input(tensors))
        gen_inputs = mod._get_generative_input(tensors, inference)
        out = mod.loss(tensors, inference, mod.generative(**gen_inputs))

        comp = inference["components"]
        x = dict(zip(N_FEATURES, (tensors[k] for k in KEYS)))
        joint = mod._joint_weights(comp["weights"]) > 0
        for j, k in enumerate(N_FEATURES):
            expected = torch.zeros(mask.shape[0])
            expected_joint = torch.zeros(mask.shape[0])
            for c in range(comp["weights"].shape[0]):
                inputs = {**gen_inputs, "components": None, "z": comp["z"][c]}
                px = mod.generative(**inputs)["px"][k]
                used = mask[:, j]
                if config.get("subset_reconstruction") == "own":
                    used = used & comp["masks"][c, :, j]
                weight = comp["weights"][c] * used
                term = -mod.heads[k].log_likelihood(px, x[k]) * weight
                expected = expected + term
                expected_joint = expected_joint + term * joint[c]
            # the ELBO's term is the joint posterior's; the subset terms are reported apart
            torch.testing.assert_close(out.reconstruction_loss[k], expected_joint)
            subset = out.extra_metrics.get(f"subset_reconstruction_loss_{k}", torch.tensor(0.0))
            torch.testing.assert_close(subset, (expected - expected_joint).mean())


@pytest.mark.parametrize(("alpha", "beta"), [(0.1, 2.5), (0.3, 1.7)])
def test_mvtcae_loss_equals_the_formula(alpha, beta):
    """The loss against a direct computation of MVTCAE's objective on small tensors."""
    mod = module(objective="mvtcae", alpha=alpha, beta=beta, protein_likelihood="nb")
    mod.eval()
    tensors = make_tensors(MASK)
    mask = MASK.bool()
    with torch.no_grad():
        inference = mod.inference(**mod._get_inference_input(tensors))
        out = mod.loss(
            tensors, inference, mod.generative(**mod._get_generative_input(tensors, inference))
        )
        comp = inference["components"]
        mu, var = comp["expert_loc"], comp["expert_var"]
        expected = []
        for i in range(mask.shape[0]):
            present = mask[i].nonzero(as_tuple=True)[0].tolist()
            n_mod = len(present)
            # q(z|X): product of the present experts, without the prior expert
            precision = sum(1 / var[j, i] for j in present)
            q_loc = sum(mu[j, i] / var[j, i] for j in present) / precision
            q = Normal(q_loc, precision.rsqrt())
            z = inference["z"][i : i + 1]
            single = {k: (v[i : i + 1] if torch.is_tensor(v) else v) for k, v in tensors.items()}
            single_inf = mod.inference(**mod._get_inference_input(single), training_terms=False)
            gen = mod.generative(
                **{**mod._get_generative_input(single, single_inf), "z": z, "components": None}
            )
            log_lik = sum(
                mod.heads[m].log_likelihood(gen["px"][m], single[KEYS[j]]).squeeze()
                for j, m in enumerate(N_FEATURES)
                if j in present
            )
            kl_prior = kl_divergence(q, Normal(0.0, 1.0)).sum()
            kl_views = sum(
                kl_divergence(q, Normal(mu[j, i], var[j, i].sqrt())).sum() for j in present
            )
            objective = (n_mod - alpha) / n_mod * log_lik - beta * (
                (1 - alpha) * kl_prior + alpha / n_mod * kl_views
            )
            expected.append(-objective)
    torch.testing.assert_close(out.loss, torch.stack(expected).mean(), rtol=1e-5, atol=1e-4)


def test_mixture_posteriors_sample_each_component_once():
    """MoE has a component per present modality, MoPoE one per subset; each is sampled."""
    tensors = make_tensors(MASK)
    n_present = MASK.sum(1).float()
    for fusion, n_components, n_valid in (
        ("moe", 3, n_present),
        ("mopoe", 7, 2**n_present - 1),
    ):
        mod = module(fusion=fusion)
        comp = experts(mod, tensors)
        assert comp["z"].shape == (n_components, 6, 4)
        torch.testing.assert_close((comp["weights"] > 0).sum(0).float(), n_valid)
        torch.testing.assert_close(comp["weights"].sum(0), torch.ones(6))
        # every sample is distinct: the components are sampled independently
        assert not torch.allclose(comp["z"][0], comp["z"][1])


def test_sampled_subset_terms_train_only_and_validation_is_exact():
    """``subset_terms="sampled"`` decodes fewer rows in training; in evaluation (validation,
    ``get_elbo``) it computes every term, as ``"all"`` does."""
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 0, 0]] * 4).bool()
    tensors = make_tensors(mask)
    sampled, every = module(subset_terms="sampled"), module(subset_terms="all")
    every.load_state_dict(sampled.state_dict())
    for m in (sampled, every):
        m.eval()
    torch.manual_seed(0)
    _, _, loss_sampled = sampled(tensors)
    torch.manual_seed(0)
    _, _, loss_every = every(tensors)
    torch.testing.assert_close(loss_sampled.loss, loss_every.loss)
    sampled.train()
    every.train()
    rows_sampled = sampled(tensors)[1]["rows"]
    rows_every = every(tensors)[1]["rows"]
    for mod in N_FEATURES:  # each modality of a paired cell: twice instead of M + 1 times
        assert len(rows_sampled[mod]) < len(rows_every[mod])
    with pytest.raises(ValueError, match="subset_terms"):
        module(subset_terms="some")


def test_subset_weight_scales_the_subset_terms_and_zero_drops_them():
    """The objective is the joint term plus ``subset_weight`` times the subset terms; at 0
    the subset terms are neither decoded nor logged, and the loss is the ELBO's."""
    tensors = make_tensors(MASK.bool())

    def loss_and_elbo(weight):
        mod = module(subset_weight=weight)
        mod.train()
        out = loss_of(mod, tensors)
        elbo = sum(v.mean() for v in out.reconstruction_loss.values())
        return out, elbo + sum(v.mean() for v in out.kl_local.values())

    joint, elbo = loss_and_elbo(0.0)
    assert not any(k.startswith("subset_") for k in joint.extra_metrics)
    torch.testing.assert_close(joint.loss, elbo)
    (one, elbo_one), (two, elbo_two) = loss_and_elbo(1.0), loss_and_elbo(2.0)
    torch.testing.assert_close(elbo_one, elbo_two)  # the same draws for weights 1 and 2
    part = one.loss - elbo_one
    assert part > 0
    torch.testing.assert_close(two.loss - elbo_two, 2 * part, rtol=1e-4, atol=1e-3)
    assert module(subset_weight=np.float32(0.5)).subset_weight == 0.5
