"""PGD (attacks/pgd.py) on linear float64 models whose gradients are known (tests/attacks/linear_models.py): its
iterates and step size, the random start, early stopping, restarts, pass counts and configuration errors. Every
expected iterate has a closed form computed here with numpy; no trained model, no data set.

Some tests pin exact values found by mutation testing (`make mutate`, tests/mutation/mutate.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from linear_models import D, Linear, flat, images, two_class

from attacks import FGSM, PGD, AttackConstraintError

# ---------------------------------------------------------------------------------------------------------------
# attacks/pgd.py: iterates, step size, random start, early stopping, restarts, pass counts
# ---------------------------------------------------------------------------------------------------------------


def test_pgd_iterates_follow_the_default_step_and_the_projection():
    model, x, y = two_class(b0=5.0), images([0.5]), torch.tensor([0])  # never fooled: the margin 4 exceeds any change
    attack = PGD(0.1, steps=10, random_start=False)
    assert attack.step_size == pytest.approx(0.025)
    x_adv = attack(model, x, y)
    moved = [np.abs(flat(s) - 0.5).max() for s in model.seen]
    assert moved == pytest.approx([min(0.025 * k, 0.1) for k in range(10)])
    assert np.allclose(flat(x_adv), 0.5 + 0.1 * np.sign(D))
    assert (attack.forward_passes, attack.backward_passes) == (10, 10)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_with_an_explicit_step_stops_inside_the_ball(norm):
    model, x, y = two_class(b0=5.0), images([0.5]), torch.tensor([0])
    x_adv = PGD(0.2, norm=norm, steps=3, step_size=0.05, random_start=False)(model, x, y)
    direction = np.sign(D) if norm == "linf" else D / np.linalg.norm(D)
    assert np.allclose(flat(x_adv), 0.5 + 0.15 * direction)


def test_pgd_l2_ends_on_the_sphere():
    model, x, y = two_class(b0=5.0), images([0.5]), torch.tensor([0])
    x_adv = PGD(0.3, norm="l2", steps=4, random_start=False)(model, x, y)
    assert np.allclose(flat(x_adv), 0.5 + 0.3 * D / np.linalg.norm(D))


#: Clean margins logit(0) - logit(1) and the first iterate (step 0.01 shrinks them by 0.06) that is misclassified.
MARGINS = {-0.1: 0, 0.03: 1, 0.15: 3, 0.5: 9, 1.2: None}


@pytest.mark.parametrize("early_stop", [True, False])
def test_early_stop_freezes_each_example_at_its_first_adversarial_iterate(early_stop):
    levels = [(1.5 - m) / 2 for m in MARGINS]  # b0 = 1.5: margin = 1.5 - D.x = 1.5 - 2 * level
    model, x, y = two_class(), images(levels), torch.zeros(len(MARGINS), dtype=torch.long)
    x_adv = PGD(0.1, steps=10, step_size=0.01, random_start=False, early_stop=early_stop)(model, x, y)
    for i, k in enumerate(MARGINS.values()):
        k = 10 if k is None or not early_stop else k
        assert np.allclose(flat(x_adv)[i], levels[i] + 0.01 * k * np.sign(D)), f"example {i}"


def test_restarts_rerun_only_the_examples_still_standing():
    model, y = two_class(b0=5.0), torch.tensor([0, 0])
    attack = PGD(0.1, steps=4, restarts=3, random_start=False)
    attack(model, images([0.5, 0.5]), y)
    # Three restarts of 4 passes on 2 examples, and a check of the final iterate after the first two.
    assert (attack.forward_passes, attack.backward_passes) == (3 * 4 * 2 + 2 * 2, 3 * 4 * 2)
    fooled = PGD(0.1, steps=4, restarts=3, random_start=False)
    x = images([0.8, 0.8])  # margin 1.5 - 1.6 < 0: wrong from the start
    assert torch.equal(fooled(two_class(), x, y), x)
    assert (fooled.forward_passes, fooled.backward_passes) == (2, 2), "no restart after everyone is fooled"
    mixed = PGD(0.1, steps=4, restarts=2, random_start=False)
    mixed(two_class(), images([0.8, 0.2]), y)  # one wrong at once, one never fooled (margin 1.1 > 4 * 0.15)
    assert (mixed.forward_passes, mixed.backward_passes) == (2 + 3 + 1 + 4, 2 + 3 + 4)


def first_iterates(norm: str, eps: float, level: float, n: int = 400) -> np.ndarray:
    torch.manual_seed(0)
    model = two_class(b0=5.0)
    PGD(eps, norm=norm, steps=1, random_start=True)(model, images([level] * n), torch.zeros(n, dtype=torch.long))
    return flat(model.seen[0]) - level


def test_random_start_linf_is_uniform_in_the_box_and_clipped():
    delta = first_iterates("linf", 0.1, 0.5)
    assert np.abs(delta).max() <= 0.1 + 1e-12 and delta.min() < -0.09 and delta.max() > 0.09
    assert abs(delta.mean()) < 0.01 and 0.3 < (np.abs(delta) < 0.05).mean() < 0.7
    assert first_iterates("linf", 0.1, 0.02).min() >= -0.02, "the start is clipped to [0, 1]"


def test_random_start_l2_has_a_random_radius_inside_the_ball():
    radius = np.linalg.norm(first_iterates("l2", 0.2, 0.5), axis=1)
    assert radius.max() <= 0.2 + 1e-12 and radius.min() < 0.02
    assert 0.08 < radius.mean() < 0.12, "uniform radius in [0, eps]: mean eps / 2"
    assert first_iterates("l2", 0.2, 0.02).min() >= -0.02


def test_no_random_start_at_eps_zero():
    model = two_class()
    x = images([0.5])
    assert torch.equal(PGD(0.0, random_start=True)(model, x, torch.tensor([0])), x)
    assert torch.equal(model.seen[0], x)


def test_random_start_radius_is_uniform_on_one_pixel():
    """With one pixel the L2 direction is +-1, so the start's distance is the radius itself: uniform on [0, eps]."""
    torch.manual_seed(0)
    n, model = 2000, Linear([[0.0], [1.0]], [5.0, 0.0])
    PGD(0.2, norm="l2", steps=1)(model, torch.full((n, 1, 1, 1), 0.5, dtype=torch.float64), torch.zeros(n).long())
    radius = np.abs(flat(model.seen[0]) - 0.5).ravel() / 0.2
    assert 0.47 < radius.mean() < 0.53 and 0.07 < (radius > 0.9).mean() < 0.13 and radius.max() <= 1 + 1e-12


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_is_on_by_default_at_any_eps_and_clipped_above(norm):
    model = two_class(b0=5.0)
    PGD(1.0, norm=norm, steps=1)(model, images([0.5]), torch.tensor([0]))
    assert not torch.equal(model.seen[0], images([0.5])), "PGD starts from a random point by default"
    assert (first_iterates(norm, 0.2, 0.98) + 0.98).max() <= 1 + 1e-12, "the start is clipped to [0, 1]"


def test_final_check_stops_restarts_for_examples_fooled_at_the_last_iterate():
    # Margin 0.5 shrinks by 6 * 0.025 = 0.15 per step: still correct at iterates 0-3, wrong after the 4th step.
    model, x, y = two_class(), images([(1.5 - 0.5) / 2]), torch.tensor([0])
    attack = PGD(0.1, steps=4, step_size=0.025, restarts=2, random_start=False)
    x_adv = attack(model, x, y)
    assert np.allclose(flat(x_adv), flat(x) + 0.1 * np.sign(D))
    assert (attack.forward_passes, attack.backward_passes) == (4 + 1, 4), "no second restart: it is fooled"
    # Two examples never fooled, of different classes: the check is per example (row-wise argmax).
    both = PGD(0.1, steps=2, restarts=2, random_start=False)
    both(Linear(np.stack([np.zeros(4), D]), [0.0, -1.0]), images([0.1, 0.9]), torch.tensor([0, 1]))
    assert (both.forward_passes, both.backward_passes) == (2 * 2 + 2 + 2 * 2, 2 * 2 * 2)


def test_pgd_configuration_errors_name_the_problem():
    from attacks.errors import ConfigError

    cases = {
        "^early_stop with eot > 1 would trust one noisy pass; use early_stop=false$": lambda: PGD(
            0.1, eot=2, early_stop=True
        ),
        "unknown loss 'foo'": lambda: PGD(0.1, loss="foo"),
        "steps must be an integer >= 1, got 0": lambda: PGD(0.1, steps=0),
        "restarts must be an integer >= 1, got 0": lambda: PGD(0.1, restarts=0),
        "step_size must be > 0, got 0": lambda: PGD(0.1, step_size=0),
        "epsilon 'abc' is not a number": lambda: PGD("abc"),
        "epsilon must be a finite number >= 0, got -1": lambda: PGD(-1),
        "eot must be an integer >= 1": lambda: FGSM(0.1, eot=0),
    }
    for message, build in cases.items():
        with pytest.raises(ConfigError, match=message):
            build()
    with pytest.raises(ConfigError, match="unknown loss 'foo'"):
        FGSM(0.1, loss="foo")
    with pytest.raises(ConfigError, match="valid: eps, norm, steps, step_size"):
        PGD(0.1).replace(foo=1)
    # The recorded defaults: mutmut cannot change these (its trampoline keeps the original signature, which
    # `inspect` reads), so the two mutants of the defaults survive there; see tests/mutation/equivalent.md.
    assert PGD(0.1).arguments["norm"] == "linf" and FGSM(0.1).arguments["norm"] == "linf"
    with pytest.raises(AttackConstraintError, match="Linear has none"):
        FGSM(0.1, bpda=True)(two_class(), images([0.5]), torch.tensor([0]))
