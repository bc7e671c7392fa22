"""The adaptive attack on paper 2's differentiators: the targeted, selection-aware rounds of `RejectAwarePGD`
against the untargeted merged-class attack it replaces as the default (`pgd_reject_aware`)."""

from __future__ import annotations

import copy

import pytest
import torch
from toy_models import Gatekeeper

from attacks.errors import ConfigError
from attacks.reject import RejectAwarePGD, fooled, likeliest_others, target_margin
from defenses.differentiator import DifferentiatorStudent
from lightning_modules.training import fit

EPS = 16 / 255


@pytest.fixture(scope="module")
def pipeline(digits, digits_classifier):
    """A differentiator ensemble on the session classifier (the student here), trained on the rotated target digits
    for a few epochs: a real detector with a reject option, in a few seconds."""
    torch.manual_seed(0)
    student = copy.deepcopy(digits_classifier)
    module = DifferentiatorStudent(student, teacher_state=student.state_dict(), trunk_layers=["features"], lr=0.01)
    module.apply_preparation(*module.prepare(digits))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(module, digits.domain("target"), {"max_epochs": 8, "accelerator": "cpu"}, progress=False)
    finally:
        torch.set_num_threads(threads)
    return module.eval().deployed_model()


@pytest.fixture(scope="module")
def clean_correct(pipeline, digits):
    x, y = digits.test_tensors("target", 128)
    with torch.no_grad():
        ok = pipeline(x).argmax(1) == y
    return x[ok], y[ok]


def broken(attack, model, x, y) -> torch.Tensor:
    torch.manual_seed(0)
    with torch.no_grad():
        return fooled(model(attack(model, x, y)), y, model.reject_label)


def test_the_targeted_selection_aware_attack_breaks_more_than_the_untargeted_one(pipeline, clean_correct, one_thread):
    x, y = clean_correct
    old = broken(RejectAwarePGD(EPS, steps=20, targets=0), pipeline, x, y)
    new = broken(RejectAwarePGD(EPS, steps=20, targets=3), pipeline, x, y)
    assert (new | ~old).all(), "its first round is the untargeted attack: it breaks every example that one breaks"
    assert new.sum() >= old.sum() + 0.05 * len(y), f"{int(new.sum())} vs {int(old.sum())} of {len(y)}"


@pytest.mark.parametrize("rule", ["unanimous", "majority"])
def test_the_acceptance_margins_are_all_positive_exactly_when_the_pipeline_answers_the_target(pipeline, digits, rule):
    view = copy.copy(pipeline)
    view.rule = rule
    x = digits.test_tensors("target", 128)[0]
    torch.manual_seed(1)
    x = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)  # noisy inputs: some rejected, some answered otherwise
    with torch.no_grad():
        out = view(x)
        for t in range(10):
            target = torch.full((len(x),), t)
            logits, margins = view.acceptance_margins(x, target)
            assert torch.allclose(logits, out, atol=1e-5), "the same logits as the deployed forward pass"
            assert torch.equal((margins > 0).all(1), out.argmax(1) == t)
    assert (out.argmax(1) == view.reject_label).any() and (out.argmax(1) < 10).any()


def test_the_margins_are_those_of_the_heads_the_target_asks_not_the_current_label(pipeline, digits):
    x = digits.test_tensors("target", 32)[0]
    with torch.no_grad():
        label = pipeline.student(x).argmax(1)
        target = (label + 1) % 10  # never the current label: the two selections differ
        _, margins = pipeline.acceptance_margins(x, target)
        z, act = pipeline.layer_k(x)
        for i in range(len(x)):
            t = int(target[i])
            heads = [pipeline._head(c, x[i : i + 1], act[i : i + 1])[0] for c in pipeline.selection[t].tolist()]
            expected = [float(h[t] - torch.cat([h[:t], h[t + 1 :]]).max()) for h in heads]
            assert margins[i, 1:].tolist() == pytest.approx(sorted(expected, reverse=True), abs=1e-4)
            assert float(margins[i, 0]) == pytest.approx(float(z[i, t] - torch.cat([z[i, :t], z[i, t + 1 :]]).max()))


def test_the_targets_are_the_likeliest_classes_other_than_the_label_and_never_the_reject_logit():
    logits = torch.tensor([[5.0, 1.0, 4.0, 9.0], [0.0, 3.0, 2.0, 1.0]])  # 4 logits, the last one is "reject"
    y = torch.tensor([0, 1])
    assert likeliest_others(logits, y, reject=3, n=2).tolist() == [[2, 1], [2, 0]]
    assert likeliest_others(logits, y, reject=None, n=1).tolist() == [[3], [2]]
    assert target_margin(logits, torch.tensor([3, 2])).flatten().tolist() == [4.0, -1.0]


def test_a_model_without_acceptance_margins_gets_the_target_margin_over_every_logit():
    torch.manual_seed(0)
    x = torch.rand(32, 1, 2, 2) * 0.4  # accepted (fourth pixel <= 0.5)
    model = Gatekeeper()
    y = model(x)[:, :3].argmax(1)
    x_adv = RejectAwarePGD(0.3, steps=10, targets=2, untargeted=False)(model, x, y)
    assert fooled(model(x_adv), y, model.reject_label).all()


@pytest.mark.parametrize(
    "kwargs,match",
    [({"targets": -1}, "targets"), ({"targets": 0, "untargeted": False}, "untargeted"), ({"kappa": 0}, "kappa")],
)
def test_bad_settings_are_one_line(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        RejectAwarePGD(EPS, **kwargs)
