"""Downstream-agnostic attacks: a universal perturbation is one perturbation for every input, in budget, fitted
on the attacker's data only once, better than a random one of the same norm at what it optimizes; the per-sample
SSP; one-line errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from attacks.advencoder import AdvEncoderPAT, AdvEncoderPER, high_frequency
from attacks.base import AttackConstraintError, check_adversarial, patch_side
from attacks.errors import ConfigError
from attacks.universal import L4A, SSP, FeatureUAP, SSPUniversal

EPS = 16 / 255
#: Small fits: a few hundred attacker images, a couple of epochs (each attack's defaults are the authors').
UNIVERSAL = {
    "uap_feature": lambda eps: FeatureUAP(eps, epochs=2),
    "ssp_universal": lambda eps: SSPUniversal(eps, layer="backbone.features.6", epochs=2),
    "l4a_base": lambda eps: L4A(eps, layer="backbone.features.2", epochs=2),
    "l4a_fuse": lambda eps: L4A(eps, variant="fuse", layer="backbone.features.2", layer2="backbone.features.6"),
    "l4a_ugs": lambda eps: L4A(eps, variant="ugs", layer="backbone.features.2", epochs=2),
    "advencoder_per": lambda eps: AdvEncoderPER(eps, epochs=2, batch_size=64, ngf=16),
}


@pytest.fixture(scope="module")
def encoder(digits_classifier):
    return copy.deepcopy(digits_classifier).eval()


@pytest.fixture(scope="module")
def data(digits):
    """The attacker's images (source training split) and the attacked ones (target test split)."""
    attacker = digits.tensors("source", "train", 400)
    return attacker, digits.test_tensors("target", 128)


def fitted(name: str, encoder, attacker, eps: float = EPS):
    attack = UNIVERSAL[name](eps)
    attack.attacker_data = attacker
    return attack


@pytest.mark.parametrize("name", sorted(UNIVERSAL))
def test_a_universal_perturbation_is_one_perturbation_for_every_input_and_in_budget(name, encoder, data):
    attacker, (x, y) = data
    attack = fitted(name, encoder, attacker)
    x_adv = attack(encoder, x, y)
    check_adversarial(x, x_adv, "linf", EPS)
    delta = attack.delta
    assert delta.shape == (1, *x.shape[1:])
    assert float(delta.abs().max()) <= EPS + 1e-7 and float(delta.abs().max()) > EPS / 2
    # where the [0, 1] clamp does not bite, every input moved by exactly the same delta
    inside = ((x + delta) >= 0) & ((x + delta) <= 1)
    assert torch.allclose((x_adv - x)[inside], delta.expand_as(x)[inside], atol=1e-6)
    assert torch.equal(x_adv, (x + delta).clamp(0, 1))
    # the perturbation does not depend on the attacked inputs: other inputs, the same delta
    other = attack(encoder, x.flip(0)[:32], y.flip(0)[:32])
    assert torch.equal(other - x.flip(0)[:32], ((x.flip(0)[:32] + delta).clamp(0, 1) - x.flip(0)[:32]))


def test_the_perturbation_is_fitted_once_and_reused(encoder, data):
    attacker, (x, y) = data
    attack = fitted("uap_feature", encoder, attacker)
    attack(encoder, x[:64], y[:64])
    first, passes = attack.delta.clone(), attack.backward_passes
    assert passes == 2 * len(attacker[0])  # two epochs over the attacker's images, one step per batch
    attack(encoder, x[64:], y[64:])
    assert torch.equal(attack.delta, first) and attack.backward_passes == passes


def test_the_fit_reads_the_attacker_data_not_the_attacked_inputs(encoder, data):
    attacker, (x, y) = data
    a, b = fitted("uap_feature", encoder, attacker), fitted("uap_feature", encoder, attacker)
    a(encoder, x, y)
    b(encoder, x[:8].flip(0), y[:8])
    assert torch.equal(a.delta, b.delta)
    c = fitted("uap_feature", encoder, (attacker[0][:200], attacker[1][:200]))
    c(encoder, x, y)
    assert not torch.equal(a.delta, c.delta)


def test_without_attacker_data_the_attack_refuses(encoder, data):
    _, (x, y) = data
    with pytest.raises(RuntimeError, match="attacker_data"):
        FeatureUAP(EPS)(encoder, x, y)


def random_like(delta: torch.Tensor, eps: float, seed: int) -> torch.Tensor:
    """A random sign perturbation with the L-inf norm of the fitted one (and no smaller L2 norm)."""
    g = torch.Generator().manual_seed(seed)
    return eps * (torch.randint(0, 2, delta.shape, generator=g) * 2 - 1).float()


@torch.no_grad()
def feature_distance(encoder, x, x_adv) -> float:
    return float(1 - F.cosine_similarity(encoder.features(x), encoder.features(x_adv), dim=1).mean())


@torch.no_grad()
def objective(attack, encoder, x, x_adv) -> float:
    """What a universal attack maximizes, on the given inputs (the attack's own `objective`)."""
    clean = attack.clean_activations(encoder, x)
    return float(attack.objective(encoder, x, x_adv, clean))


def test_the_fitted_uap_beats_a_random_perturbation_of_the_same_norm_on_the_feature_distance(encoder, data):
    attacker, (x, y) = data
    attack = fitted("uap_feature", encoder, attacker)
    x_adv = attack(encoder, x, y)
    fitted_distance = feature_distance(encoder, x, x_adv)
    randoms = [feature_distance(encoder, x, (x + random_like(attack.delta, EPS, s)).clamp(0, 1)) for s in range(5)]
    assert fitted_distance > 1.5 * max(randoms), (fitted_distance, randoms)


@pytest.mark.parametrize("name", ["ssp_universal", "l4a_base"])
def test_fitted_perturbations_beat_random_ones_at_their_own_objective(name, encoder, data):
    attacker, (x, y) = data
    attack = fitted(name, encoder, attacker)
    score = objective(attack, encoder, x, attack(encoder, x, y))
    randoms = [objective(attack, encoder, x, (x + random_like(attack.delta, EPS, s)).clamp(0, 1)) for s in range(5)]
    assert score > max(randoms), (score, randoms)


def test_per_sample_ssp_is_in_budget_and_distorts_the_layer_more_than_its_random_start(encoder, data):
    _, (x, y) = data
    x, y = x[:64], y[:64]
    attack = SSP(EPS, layer="backbone.features.6", steps=10)
    x_adv = attack(encoder, x, y)
    check_adversarial(x, x_adv, "linf", EPS)
    assert attack.crafted and attack.threat_model == "agnostic" and attack.surrogate_name == "teacher"
    delta = x_adv - x
    assert not torch.allclose(delta[0], delta[1])  # per sample, not universal
    with torch.no_grad():
        clean = attack.activations(encoder, x)[0]
        start = attack.project(torch.randn_like(x), x)
        after = float(F.mse_loss(attack.activations(encoder, x_adv)[0], clean))
        before = float(F.mse_loss(attack.activations(encoder, start)[0], clean))
    assert after > 1.5 * before


def test_high_frequency_filter_keeps_only_what_is_outside_the_radius():
    flat = torch.full((1, 1, 16, 16), 0.5)
    assert float(high_frequency(flat, 2).abs().max()) < 1e-6  # a constant is all low frequency
    checker = (torch.arange(16).view(-1, 1) + torch.arange(16)).remainder(2).float().view(1, 1, 16, 16)
    assert torch.allclose(high_frequency(checker, 2), checker - 0.5, atol=1e-5)  # the highest frequency stays


def test_config_errors_are_one_line(encoder, data):
    attacker, (x, y) = data
    with pytest.raises(ConfigError, match="needs `layer`"):
        L4A(EPS)
    with pytest.raises(ConfigError, match="valid: base, fuse, ugs"):
        L4A(EPS, layer="backbone.features.2", variant="mix")
    with pytest.raises(ConfigError, match="layer2"):
        L4A(EPS, layer="backbone.features.2", variant="fuse")
    with pytest.raises(ConfigError, match="valid: common, teacher"):
        FeatureUAP(EPS, surrogate="student")
    bad = SSPUniversal(EPS, layer="backbone.nope")
    bad.attacker_data = attacker
    with pytest.raises(ConfigError, match="'backbone.nope' is not a module") as e:
        bad(encoder, x, y)
    assert "\n" not in str(e.value)


def test_the_config_names_everything_that_changes_the_perturbation():
    a, b = FeatureUAP(EPS), FeatureUAP(EPS, step_size=EPS / 10)
    assert a.config() == b.config()  # the default step is eps / 10, written out
    assert FeatureUAP(EPS, epochs=3).config() != a.config()
    assert AdvEncoderPER(EPS).config()["seed"] == 100 and AdvEncoderPER(EPS).config()["alpha"] == 5.0


# ---- AdvEncoder-PAT: one patch, at one place, for every input ----------------------------------------------
PATCH = 0.1  # 5 x 5 px on 16 px digits (the authors' 3 % is 2 x 2 here)


def test_the_patch_is_one_patch_at_one_place_for_every_input_and_in_the_patch_budget(encoder, data):
    attacker, (x, y) = data
    attack = AdvEncoderPAT(PATCH, epochs=2, batch_size=64, ngf=16)
    attack.attacker_data = attacker
    x_adv = attack(encoder, x, y)
    check_adversarial(x, x_adv, "patch", PATCH)
    side = patch_side(PATCH, 16, 16)
    row = col = 16 - 4 - side  # the authors' place: 14 px from the far edges at 64 px, scaled
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[row : row + side, col : col + side] = True
    assert torch.equal(x_adv[..., ~inside], x[..., ~inside])  # nothing outside the patch moves
    patch = x_adv[..., inside]
    assert torch.equal(patch, patch[:1].expand_as(patch))  # the same pixels on every input
    assert not torch.equal(patch[0], x[0][..., inside])
    other = attack(encoder, x[:8].flip(0), y[:8])
    assert torch.equal(other[..., inside], patch[:8])
    with pytest.raises(AttackConstraintError, match="patch budget"):
        check_adversarial(x, x_adv, "patch", 0.03)  # a 5 px patch is not a 2 px one


def test_the_authors_patch_place_and_size_at_64_px():
    mask = AdvEncoderPAT(0.03).mask(torch.zeros(1, 3, 64, 64))[0, 0]
    rows, cols = mask.nonzero(as_tuple=True)
    assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (39, 49, 39, 49)  # threats.md 0.2
    assert int(mask.sum()) == 121
    whole = AdvEncoderPAT(1.0).mask(torch.zeros(1, 1, 16, 16))  # too big for the authors' place: from the corner
    assert bool(whole.all())
    placed = AdvEncoderPAT(0.03, position=[0, 5]).mask(torch.zeros(1, 1, 16, 16))[0, 0]
    assert placed[:2, 5:7].all() and int(placed.sum()) == 4


def test_the_patch_budget_check_is_exact():
    x = torch.full((2, 3, 16, 16), 0.5)
    side = patch_side(0.1, 16, 16)
    x_adv = x.clone()
    x_adv[0, 1, 3, 3], x_adv[0, 2, 3 + side - 1, 3] = 0.0, 1.0  # a span of exactly `side` rows
    check_adversarial(x, x_adv, "patch", 0.1)
    x_adv[1, 0, 0, 0], x_adv[1, 0, 0, side] = 0.0, 0.0  # side + 1 columns
    with pytest.raises(AttackConstraintError, match=f"span {side + 1} px > side {side} px"):
        check_adversarial(x, x_adv, "patch", 0.1)


def test_the_fitted_patch_beats_random_patches_on_the_feature_distance(encoder, data):
    attacker, (x, y) = data
    attack = AdvEncoderPAT(PATCH, epochs=3, batch_size=64, ngf=16)
    attack.attacker_data = attacker
    fitted_distance = feature_distance(encoder, x, attack(encoder, x, y))
    g = torch.Generator().manual_seed(0)
    randoms = [feature_distance(encoder, x, attack.apply(x, torch.rand(1, 1, 16, 16, generator=g))) for _ in range(5)]
    assert fitted_distance > max(randoms), (fitted_distance, randoms)


def test_patch_config_errors_are_one_line():
    with pytest.raises(ConfigError, match=r"area fraction, in \[0, 1\]"):
        AdvEncoderPAT(1.5)
    with pytest.raises(ConfigError, match="position is \\[row, col\\]"):
        AdvEncoderPAT(0.03, position=[1])
    with pytest.raises(ConfigError, match="leaves the 16 x 16 image"):
        AdvEncoderPAT(0.1, position=[14, 0]).mask(torch.zeros(1, 1, 16, 16))
