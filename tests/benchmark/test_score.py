"""Scoring a cell: the counting rule's fields, transferability from per-example outcomes, the worst case, and no
out-of-budget example is ever scored."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from attacks.base import Attack, AttackConstraintError
from benchmark.metrics import wilson_interval
from benchmark.runner.stages.attack import compute_cell, predict_draws
from benchmark.runner.stages.score import (
    abstention,
    head,
    metrics,
    outcome,
    per_example,
    size,
    target_hits,
    targeted_success,
    transferability,
    worst_case,
)

REJECT = 9


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


class _Noisy(_Linear):
    """A randomized model: fresh input noise on every pass."""

    def forward(self, x):
        return super().forward(x + 0.5 * torch.randn_like(x))


def test_the_draws_that_score_a_crafted_set_do_not_depend_on_what_ran_before():
    """Worker processes run cells in any order: a randomized model's score of a crafted (transfer) set is seeded."""
    torch.manual_seed(0)
    model, x, y = _Noisy(), torch.rand(64, 1, 2, 2), torch.randint(0, 3, (64,))
    pred = predict_draws(model, x, 8, 16, torch.device("cpu"))
    x_adv = (x + 0.1 * torch.randn_like(x).sign()).clamp(0, 1)
    outs = []
    for burn in (0, 1, 5):
        torch.rand(burn)  # whatever else this process drew before the cell
        common = {"randomized": True, "batch_size": 16, "device": torch.device("cpu"), "seed": 0, "x_adv": x_adv}
        outs.append(compute_cell(_OutOfBudget(eps=0.1), model, x, y, pred, **common)[0])
    assert all(torch.equal(o["pred_adv"], outs[0]["pred_adv"]) for o in outs)


def plain() -> dict:
    return outcome(torch.tensor([[0, 1]]), torch.tensor([[1, 1]]), torch.tensor([0, 1]))


# ---- every field of the scoring, pinned against the mutants of `make mutate` ----------------------------------------
def test_outcome_keeps_adversarial_predictions_and_rejections():
    pred_clean, pred_adv, y = torch.tensor([[0, 0, 1]]), torch.tensor([[0, 1, 0]]), torch.tensor([0, 1, 1])
    plain_out = outcome(pred_clean, pred_adv, y)
    assert set(plain_out) == {"clean", "adv", "pred_adv", "changed"} and torch.equal(plain_out["pred_adv"], pred_adv)
    assert plain_out["changed"].tolist() == [[False, True, True]], "changed, whether right or wrong clean"
    out = outcome(pred_clean * 3, pred_adv * 3, y, reject_label=3)  # 3: the extra "reject" class
    assert out["clean_rejected"].tolist() == [[False, False, True]]
    assert out["adv_rejected"].tolist() == [[False, True, False]]
    assert out["adv"].tolist() == [[True, True, False]] and out["clean"].tolist() == [[True, False, False]]


def test_abstention_metrics_count_over_the_right_examples():
    # y = 0..5. Clean: 0-2 right, 3 wrong and accepted, 4-5 rejected. Under attack: 0 rejected, 1 right, 2 fooled,
    # 3 rejected (not attacked: wrong clean), 4 right (not attacked), 5 rejected (not attacked).
    y = torch.arange(6)
    out = outcome(torch.tensor([[0, 1, 2, 0, 9, 9]]), torch.tensor([[9, 1, 0, 9, 4, 9]]), y, REJECT)
    assert abstention(out) == pytest.approx(
        {"clean_acc_accepted": 3 / 4, "false_rejection_rate": 2 / 6, "defense_rate": 2 / 3, "adv_rejection_rate": 1 / 3}
    )
    assert abstention(plain()) == dict.fromkeys(
        ("clean_acc_accepted", "false_rejection_rate", "defense_rate", "adv_rejection_rate")
    )
    all_rejected = abstention(outcome(torch.full((1, 3), REJECT), torch.zeros(1, 3, dtype=torch.long), y[:3], REJECT))
    assert all_rejected["false_rejection_rate"] == 1.0
    assert all(math.isnan(all_rejected[k]) for k in ("clean_acc_accepted", "defense_rate", "adv_rejection_rate"))


def test_targeted_success_over_clean_correct_draws():
    y = torch.tensor([0, 1, 2, 1])
    out = outcome(torch.tensor([[0, 1, 2, 0]]), torch.tensor([[1, 1, 0, 2]]), y)
    targets = torch.tensor([1, 2, 0, 2, 5, 5])  # longer than the cell: the first n apply
    assert targeted_success(out, targets) == pytest.approx(2 / 3), "example 3 hits its target but was wrong clean"
    two_draws = outcome(torch.tensor([[0, 1, 2, 0]] * 2), torch.tensor([[1, 1, 0, 2], [0, 2, 0, 2]]), y)
    assert targeted_success(two_draws, targets) == pytest.approx(4 / 6), "per draw: 2 of 3 and 2 of 3"
    assert math.isnan(targeted_success(outcome(torch.ones(1, 2, dtype=torch.long), torch.zeros(1, 2), y[:2] * 0),
                                       targets))  # fmt: skip


def test_target_hits_read_the_examples_on_the_last_axis_of_any_rank():
    # like `head`: one draw's (n,) outcome counts as the row of its (1, n) one, the first n targets applying
    y = torch.tensor([0, 1, 2, 1])
    pred_clean, pred_adv = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 1, 0, 2])
    targets = torch.tensor([1, 2, 0, 2, 5, 5])
    one_draw = target_hits(outcome(pred_clean, pred_adv, y), targets)
    assert one_draw.tolist() == target_hits(outcome(pred_clean[None], pred_adv[None], y), targets)[0].tolist()
    assert one_draw.tolist() == [True, False, True, False], "example 3 hits its target but was wrong clean"


def test_target_hits_compare_on_the_device_of_the_predictions():
    # the targets are recomputed on the CPU (rows._targets), the predictions may be on an accelerator: here the
    # "meta" device, which checks devices and shapes as a GPU would, without one
    y = torch.tensor([0, 1, 2], device="meta")
    out = outcome(
        torch.zeros(2, 3, dtype=torch.long, device="meta"), torch.zeros(2, 3, dtype=torch.long, device="meta"), y
    )
    hits = target_hits(out, torch.tensor([1, 2, 0, 2]))
    assert hits.device.type == "meta" and hits.shape == (2, 3) and hits.dtype == torch.bool


def test_head_cuts_tensors_of_every_rank_and_keeps_the_rest():
    out = {"clean": torch.ones(2, 5, dtype=torch.bool), "adv": torch.ones(2, 5, dtype=torch.bool)}
    out |= {"score": torch.arange(5), "t": torch.tensor(3), "draws": 2}
    h = head(out, 3)
    assert h["clean"].shape == (2, 3) and h["score"].tolist() == [0, 1, 2]
    assert h["t"].item() == 3 and h["draws"] == 2
    assert size(out) == 5 and size(h) == 3


def test_per_example_passes_a_reduced_outcome_through():
    reduced = {"clean": torch.tensor([1.0]), "robust": torch.tensor([0.5]), "worst_of_k": torch.tensor([False])}
    assert per_example(reduced) is reduced


def test_metrics_fields_of_a_randomized_outcome():
    # 2 draws, 3 examples: robust draws (1 + 1 + 1) / 2 = 1.5 examples, clean 2.5
    out = outcome(torch.tensor([[0, 9, 2], [0, 1, 2]]), torch.tensor([[9, 1, 2], [0, 1, 9]]), torch.tensor([0, 1, 2]))
    m = metrics(out)
    assert set(m) == {"clean_acc", "robust_acc", "robust_acc_worst_of_k", "success_rate", "n_examples", "draws",
                      "robust_acc_ci_low", "robust_acc_ci_high", "clean_acc_accepted", "false_rejection_rate",
                      "defense_rate", "adv_rejection_rate", "fooling_rate"}  # fmt: skip
    assert m["fooling_rate"] == pytest.approx(3 / 6), "3 of the 6 (draw, example) predictions change"
    lo, hi = wilson_interval(2, 3)  # round(1.5) robust examples
    assert (m["robust_acc_ci_low"], m["robust_acc_ci_high"]) == pytest.approx((lo, hi))
    assert m["clean_acc_accepted"] is None and m["n_examples"] == 3


def test_metrics_of_edge_outcomes():
    empty = metrics({"clean": torch.ones(1, 0, dtype=torch.bool), "adv": torch.ones(1, 0, dtype=torch.bool)})
    nan_keys = ("clean_acc", "robust_acc", "robust_acc_worst_of_k", "success_rate")
    assert all(math.isnan(empty[k]) for k in nan_keys) and empty["n_examples"] == 0
    assert empty["fooling_rate"] is None
    no_example = outcome(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0, dtype=torch.long), torch.zeros(0))
    assert metrics(no_example)["fooling_rate"] is None and metrics(det([True]))["fooling_rate"] is None
    one = metrics(det([False, False], clean=[True, False]))  # exactly one clean-correct example, broken
    assert one["success_rate"] == 1.0
    none_right = metrics(det([True, False], clean=[False, False]))
    assert math.isnan(none_right["success_rate"])
    assert metrics({**per_example(det([True])), "draws": 4})["draws"] == 4
    assert metrics(per_example(det([True])))["draws"] == 1


def test_transferability_on_common_examples_either_side_shorter():
    tr = det([False, True, True, True, False, False], clean=[True, True, True, False, True, True])
    wb = det([False, False, True, True], clean=[True, True, False, False])
    for a, b in ((tr, wb), (wb, tr)):
        t = transferability(a, b, "accuracy_drop")
        assert set(t) == {"transfer_acc", "transferability_success_ratio", "transferability_accuracy_drop",
                          "transferability", "transferability_form"}  # fmt: skip
        assert t["transferability"] == pytest.approx(t["transferability_accuracy_drop"], nan_ok=True)
        assert t["transferability_form"] == "accuracy_drop (our reading of Zhang et al. 2020; formula unverified)"
    t = transferability(tr, wb, "success_ratio")
    # on 4 examples, the transfer's clean mask [T, T, T, F]: white-box fools 0, 1 (of clean-correct); transfer 0
    assert t["transferability"] == pytest.approx(1 / 2) and t["transfer_acc"] == pytest.approx(2 / 4)
    assert transferability(tr, wb, "accuracy_drop")["transferability"] == pytest.approx(0.0), "(3 - 3) / (3 - 2)"


def test_worst_case_clean_from_the_longest_and_draws_from_the_most():
    short = {"clean": torch.tensor([[False, False]]), "adv": torch.tensor([[False, False]])}
    long = outcome(torch.zeros(3, 4, dtype=torch.long), torch.tensor([[0, 0, 1, 0]] * 3), torch.zeros(4))
    union = worst_case([short, long], 4)
    assert union["clean"].tolist() == [1.0] * 4 and union["draws"] == 3
    assert union["robust"].tolist() == [0.0, 0.0, 0.0, 1.0], "the short attack ran on 2; the long one breaks 2"
    assert union["worst_of_k"].tolist() == [False, False, False, True], "an attack that did not run breaks nothing"
    again = worst_case([union, det([True] * 4)], 4)
    assert again["draws"] == 3 and metrics(again)["draws"] == 3
    assert worst_case([{**per_example(long), "draws": 2}, det([True] * 4)], 4)["draws"] == 2
    assert worst_case([per_example(det([True] * 4)), det([True] * 4)], 4)["draws"] == 1, "reduced, no draws: one"
