"""A new defense is one short subclass: the README's example and the two-optimizer hook train through the base loop."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attacks.pgd import PGD
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


def test_readme_defense_trains_through_the_base_loop(digits):
    d = _student(MyDefense, digits, eps=16 / 255, lr=0.01)
    before = {k: v.clone() for k, v in d.state_dict().items()}
    one_epoch = {"max_epochs": 1, "accelerator": "cpu", "limit_train_batches": 2}
    info = fit(d, digits.domain("target"), one_epoch, progress=False)
    assert info["epochs"] == 1 and info["best_value"] is not None
    assert any(not torch.equal(before[k], v) for k, v in d.state_dict().items())


def test_two_optimizers_are_both_stepped(digits):
    d = _student(TwoOptimizers, digits)
    head_before = d.model.head.weight.clone()
    body_before = d.model.backbone.features[0].weight.clone()
    fit(d, digits.domain("target"), {"max_epochs": 1, "accelerator": "cpu", "limit_train_batches": 2}, progress=False)
    assert not torch.equal(d.model.head.weight, head_before)
    assert not torch.equal(d.model.backbone.features[0].weight, body_before)
