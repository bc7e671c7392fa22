"""A new defense is one short subclass: the README's example, an `AdversarialStudent` and the two-optimizer hook
train through the base loop; every adversarial defense gets its attacks and model selection from the base class."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from attacks.errors import ConfigError
from attacks.fgsm import FGSM
from attacks.pgd import PGD
from defenses.atop import AToP
from defenses.base import AdversarialStudent
from defenses.gen_af import GenAFDualTrack
from defenses.pgd_at import PGDAT
from defenses.tla import TLA
from defenses.trades import TRADES
from lightning_modules.classifier import build_classifier
from lightning_modules.modules import StudentModule
from lightning_modules.training import fit


class MyDefense(StudentModule):
    """The README's example, verbatim in substance."""

    def __init__(self, model, eps: float = 8 / 255, weight: float = 1.0, **kwargs):
        super().__init__(model, **kwargs)
        self.attack, self.weight = PGD(eps, early_stop=False), weight

    def training_loss(self, x, y):
        logits = self.model(x)
        logits_adv = self.model(self.attack(self.model, x, y))
        loss = F.cross_entropy(logits, y) + self.weight * F.cross_entropy(logits_adv, y)
        return loss, logits


class TwoOptimizers(StudentModule):
    """Head and body with their own optimizers, stepped together on one loss (as Gen-AF does)."""

    def __init__(self, model, **kwargs):
        super().__init__(model, **kwargs)
        self.automatic_optimization = False

    def configure_optimizers(self):
        head = list(self.model.head.parameters())
        body = [p for p in self.model.parameters() if all(p is not q for q in head)]
        return [torch.optim.Adam(body, lr=1e-3), torch.optim.Adam(head, lr=1e-2)]


def _student(cls, digits, **kwargs):
    model = build_classifier("small_cnn", 10, 1, digits.mean, digits.std)
    return cls(model, teacher_state=model.state_dict(), mode="finetune", **kwargs)


class _Recording:
    """A stand-in attack that returns a fixed perturbation of its input and records what it was given."""

    def __init__(self):
        self.seen = []

    def __call__(self, model, x, y):
        self.seen.append((x.clone(), y.clone()))
        return (x + 0.05).clamp(0, 1)


def test_readme_defense_trains_through_the_base_loop(digits):
    d = _student(MyDefense, digits, eps=16 / 255, lr=0.01)
    one_epoch = {"max_epochs": 1, "accelerator": "cpu", "limit_train_batches": 2}
    info = fit(d, digits.domain("target"), one_epoch, progress=False)
    assert info["epochs"] == 1 and info["best_value"] is not None


def test_readme_defense_step_is_the_gradient_of_its_loss(digits):
    """One plain SGD step of the base loop moves every trainable weight by -lr * grad of the README loss."""
    d = _student(MyDefense, digits, eps=16 / 255, weight=0.5, lr=0.1, momentum=0.0, weight_decay=0.0, scheduler="none")
    d.attack = _Recording()
    d.train()
    x, y = next(iter(digits.domain("target").train_dataloader()))
    params = {n: p for n, p in d.model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in params.items()}
    x_adv = (x + 0.05).clamp(0, 1)
    loss = F.cross_entropy(d.model(x), y) + 0.5 * F.cross_entropy(d.model(x_adv), y)
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    one_step = {"max_epochs": 1, "accelerator": "cpu", "limit_train_batches": 1, "limit_val_batches": 0}
    fit(d, _OneBatch(x, y), one_step, progress=False)
    (seen_x, seen_y), *_ = d.attack.seen
    assert torch.equal(seen_x, x) and torch.equal(seen_y, y), "the attack crafts on the training batch"
    for n, p in params.items():
        torch.testing.assert_close(p.detach(), before[n] - 0.1 * grads[n], atol=1e-5, rtol=1e-4)


def test_two_optimizers_are_both_stepped(digits):
    d = _student(TwoOptimizers, digits)
    head_before = d.model.head.weight.clone()
    body_before = d.model.backbone.features[0].weight.clone()
    fit(d, digits.domain("target"), {"max_epochs": 1, "accelerator": "cpu", "limit_train_batches": 2}, progress=False)
    assert not torch.equal(d.model.head.weight, head_before)
    assert not torch.equal(d.model.backbone.features[0].weight, body_before)


# ---------------------------------------------------------------------------------------------------------------
# AdversarialStudent: the training attack, the validation attack and the selection metric, set once
# ---------------------------------------------------------------------------------------------------------------


class CleanAndAdversarial(AdversarialStudent):
    """A new adversarial defense is a loss and nothing else: attacks and selection come from the base."""

    def training_loss(self, x, y):
        logits = self.model(x)
        return F.cross_entropy(logits, y) + F.cross_entropy(self.model(self.attack(self.model, x, y)), y), logits


def _pgd(eps, **kwargs):
    return PGD(eps, early_stop=False, **kwargs)


#: Each defense's attacks as they were written by hand in each file before the base class: (defense, arguments,
#: training attack, validation attack, selection metric). The configs hold every constructor argument.
EXPECTED = {
    "pgd_at-defaults": (PGDAT, {}, _pgd(8 / 255), _pgd(8 / 255), "val/robust_acc"),
    "pgd_at-l2": (
        PGDAT,
        {"eps": "1/2", "norm": "L2", "steps": 3, "step_size": 0.2},
        _pgd(0.5, norm="l2", steps=3, step_size=0.2),
        _pgd(0.5, norm="l2", steps=3, step_size=0.2),
        "val/robust_acc",
    ),
    # TRADES: the KL maximization steps eps / 4; its validation PGD keeps PGD's default step.
    "trades-defaults": (TRADES, {}, _pgd(8 / 255, step_size=2 / 255), _pgd(8 / 255), "val/robust_acc"),
    "trades-3-steps": (
        TRADES,
        {"eps": 0.1, "steps": 3},
        _pgd(0.1, steps=3, step_size=0.025),
        _pgd(0.1, steps=3),
        "val/robust_acc",
    ),
    "trades-step": (
        TRADES,
        {"eps": "16/255", "steps": 3, "step_size": "1/255"},
        _pgd(16 / 255, steps=3, step_size=1 / 255),
        _pgd(16 / 255, steps=3),
        "val/robust_acc",
    ),
    "tla": (
        TLA,
        {"eps": 0.1, "steps": 3, "step_size": 0.02},
        _pgd(0.1, steps=3, step_size=0.02),
        _pgd(0.1, steps=3, step_size=0.02),
        "val/robust_acc",
    ),
    "genaf_stage1-defaults": (
        GenAFDualTrack,
        {},
        _pgd(0.03, step_size=0.007, random_start=False),
        _pgd(0.03, step_size=0.007, random_start=False),
        "val/robust_acc",
    ),
    "atop-fgsm": (
        AToP,
        {"adversarial": True, "attack_eps": "16/255"},
        FGSM(16 / 255),
        FGSM(16 / 255),
        "val/robust_acc",
    ),
    "atop-pgd": (
        AToP,
        {"adversarial": True, "attack_eps": 0.1, "attack_steps": 3},
        _pgd(0.1, steps=3),
        _pgd(0.1, steps=3),
        "val/robust_acc",
    ),
    "atop-stage1": (AToP, {"adversarial": False}, FGSM(8 / 255), None, "val/acc"),
}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_each_defense_keeps_its_attacks_and_selection(case, digits):
    cls, kwargs, train, val, metric = EXPECTED[case]
    d = _student(cls, digits, **kwargs)
    assert isinstance(d, AdversarialStudent)
    assert d.attack.config() == train.config()
    assert (d.val_attack and d.val_attack.config()) == (val and val.config())
    assert d.selection_metric == metric
    assert d.val_attack is not d.attack, "validation must not add to the training attack's pass counts"


def test_given_validation_attack_and_metric_win(digits):
    fgsm = FGSM(0.1)
    d = _student(PGDAT, digits, val_attack=fgsm)
    assert d.val_attack is fgsm and d.selection_metric == "val/robust_acc"
    d = _student(TLA, digits, selection_metric="val/acc")
    assert d.selection_metric == "val/acc" and d.val_attack is not None
    d = _student(CleanAndAdversarial, digits, val_attack=None)
    assert d.val_attack is None and d.selection_metric == "val/acc"


def test_a_step_larger_than_the_ball_is_an_error(digits):
    # The experiments' `step_size: 150` for the learning-rate schedule would silently become PGD-AT's attack step.
    with pytest.raises(ConfigError, match="PGDAT: the attack's step_size 150 exceeds .* lr_step_size"):
        _student(PGDAT, digits, eps="8/255", step_size=150, scheduler="step")
    with pytest.raises(ConfigError, match="exceeds"):
        _student(TLA, digits, eps=0.1, step_size=0.21)
    assert _student(TLA, digits, eps=0.1, step_size=0.2).attack.step_size == 0.2
    d = _student(PGDAT, digits, eps="8/255", step_size="2/255", scheduler="step", lr_step_size=150)
    assert d.attack.step_size == 2 / 255
    assert d.configure_optimizers()["lr_scheduler"]["scheduler"].step_size == 150


def test_new_adversarial_defense_trains_and_selects_on_robust_accuracy(digits):
    d = _student(CleanAndAdversarial, digits, eps=0.1, steps=2, lr=0.01)
    assert d.attack.config() == _pgd(0.1, steps=2).config() == d.val_attack.config()
    short = {"max_epochs": 1, "accelerator": "cpu", "limit_train_batches": 2, "limit_val_batches": 1}
    info = fit(d, digits.domain("target"), short, progress=False)
    assert info["selection_metric"] == "val/robust_acc"
    assert "val/robust_acc" in info["trainer"].callback_metrics
    assert d.attack.forward_passes > 0 and d.val_attack.forward_passes > 0


class _OneBatch(L.LightningDataModule):
    """One fixed training batch (and no validation)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        super().__init__()
        self.x, self.y = x, y

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=len(self.x), shuffle=False)
