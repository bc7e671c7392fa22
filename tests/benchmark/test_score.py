"""Scoring a cell: transferability from per-example outcomes, and no out-of-budget example is ever scored."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from attacks.base import Attack, AttackConstraintError
from benchmark.stages.attack import compute_cell, predict_draws
from benchmark.stages.score import transferability


def det(adv: list[bool], clean: list[bool] | None = None) -> dict:
    a = torch.tensor([adv])
    return {"clean": torch.ones_like(a) if clean is None else torch.tensor([clean]), "adv": a}


def test_transferability_is_transfer_success_over_whitebox_success():
    # 10 clean-correct examples: white-box fools 8, transfer fools 2 -> success ratio 2/8 (not 8/2)
    wb = det([False] * 8 + [True] * 2)
    tr = det([False] * 2 + [True] * 8)
    t = transferability(tr, wb, "success_ratio")
    assert t["transferability"] == pytest.approx(0.25)
    assert t["transfer_acc"] == pytest.approx(0.8)
    # raw-accuracy reading: (acc(x) - acc(x'_A)) / (acc(x) - acc(x'_B)) = (1 - 0.8) / (1 - 0.2)
    assert transferability(tr, wb, "accuracy_drop")["transferability"] == pytest.approx(0.25)


def test_transferability_accuracy_drop_counts_raw_accuracy():
    # example 3 is wrong clean; the white-box attack leaves it (x' = x, wrong), transfer makes it right
    wb = det([False, False, True, False], clean=[True, True, True, False])
    tr = det([False, True, True, True], clean=[True, True, True, False])
    t = transferability(tr, wb, "accuracy_drop")
    clean_acc, wb_raw, tr_raw = 3, 1, 3
    assert t["transferability"] == pytest.approx((clean_acc - tr_raw) / (clean_acc - wb_raw))
    assert t["transferability_success_ratio"] == pytest.approx(1 / 2)


class _Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x.flatten(1))


class _OutOfBudget(Attack):
    name = "out_of_budget"

    def perturb(self, model, x, y):
        return (x + 2 * self.eps).clamp(0, 1)


def test_an_out_of_budget_example_is_never_scored():
    torch.manual_seed(0)
    model, x, y = _Linear(), torch.rand(6, 1, 2, 2) * 0.5, torch.randint(0, 3, (6,))
    pred = predict_draws(model, x, 1, 4, torch.device("cpu"))
    bad = _OutOfBudget(eps=0.1)
    with pytest.raises(AttackConstraintError, match="leaves the linf ball"):
        compute_cell(bad, model, x, y, pred, randomized=True, batch_size=4, device=torch.device("cpu"), seed=0)
    with pytest.raises(AttackConstraintError, match="leaves the linf ball"):
        compute_cell(
            bad, model, x, y, pred, randomized=True, batch_size=4, device=torch.device("cpu"), seed=0, x_adv=x + 0.3
        )
