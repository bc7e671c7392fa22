"""The robustness metrics, checked against hand counts and against independent formulas."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.metrics import (
    AttackSuccessRate,
    CleanAccuracy,
    RobustAccuracy,
    Transferability,
    TransferAccuracy,
    wilson_interval,
)

T, F = True, False
CLEAN = torch.tensor([T, T, T, T, F, F])
WB = torch.tensor([F, F, T, F, F, F])  # white-box: fools 3 of the 4 clean-correct examples
TR = torch.tensor([T, F, T, T, F, T])  # transfer: fools 1; the last (clean-wrong) example became correct


def value(metric, *flags):
    metric.update(*flags)
    return float(metric.compute())


def test_counts():
    assert value(CleanAccuracy(), CLEAN) == pytest.approx(4 / 6)
    assert value(RobustAccuracy(), CLEAN, WB) == pytest.approx(1 / 6)
    assert value(AttackSuccessRate(), CLEAN, WB) == pytest.approx(3 / 4)
    # Paper 1's counting: the clean-wrong example that the perturbation made correct does not count.
    assert value(TransferAccuracy(), CLEAN, TR) == pytest.approx(3 / 6)


def test_transferability_both_readings_against_independent_formulas():
    asr = lambda adv: ((CLEAN & ~adv).sum() / CLEAN.sum()).item()  # noqa: E731
    acc = lambda adv: adv.float().mean().item()  # noqa: E731 - raw accuracy, every example scored
    clean_acc = CLEAN.float().mean().item()
    assert value(Transferability("success_ratio"), CLEAN, WB, TR) == pytest.approx(asr(TR) / asr(WB))
    expected_drop = (clean_acc - acc(TR)) / (clean_acc - acc(WB))
    assert value(Transferability("accuracy_drop"), CLEAN, WB, TR) == pytest.approx(expected_drop)
    assert asr(TR) / asr(WB) != pytest.approx(expected_drop), "the two readings should differ on this data"


def test_undefined_ratios_are_nan():
    assert math.isnan(value(AttackSuccessRate(), torch.zeros(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool)))
    assert math.isnan(value(Transferability(), CLEAN, CLEAN, CLEAN))  # the white-box attack fooled nothing


def test_updates_accumulate_like_one_update_and_states_sum_across_processes():
    """Batches (and DDP ranks, whose states are summed) give the same result as one pass over all examples."""
    whole = value(RobustAccuracy(), CLEAN, WB)
    a, b = RobustAccuracy(), RobustAccuracy()
    a.update(CLEAN[:2], WB[:2])
    b.update(CLEAN[2:], WB[2:])
    assert float(a.clone().compute()) != pytest.approx(whole)
    a.merge_state(b)  # the same sum-reduction that `dist_reduce_fx="sum"` applies across ranks
    assert float(a.compute()) == pytest.approx(whole)
    for m in (CleanAccuracy(), RobustAccuracy(), AttackSuccessRate(), Transferability()):
        assert all(fx is torch.sum or getattr(fx, "__name__", "") == "dim_zero_sum" for fx in m._reductions.values())


def test_mismatched_flags_are_rejected():
    with pytest.raises(ValueError, match="different lengths"):
        RobustAccuracy().update(CLEAN, WB[:3])
    with pytest.raises(ValueError, match="valid: accuracy_drop, success_ratio"):
        Transferability("ratio")


def test_wilson_interval():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
