"""The robustness metrics, checked against hand counts and against independent formulas."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm
from statsmodels.stats.proportion import proportion_confint

from benchmark.metrics import (
    AttackSuccessRate,
    CleanAccuracy,
    ExpectedAccuracy,
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
    # ... even when the transfer attack fooled some: undefined, not infinite.
    assert math.isnan(value(Transferability(), CLEAN, CLEAN, torch.zeros(6, dtype=torch.bool)))


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
    with pytest.raises(ValueError, match="transferability form 'ratio'.*valid: accuracy_drop, success_ratio"):
        Transferability("ratio")


#: (successes, n) pairs: the extremes 0 and n, small n (where the interval is wide and asymmetric), large n.
WILSON_CASES = [(0, 1), (1, 1), (0, 5), (5, 5), (1, 3), (2, 7), (0, 100), (100, 100), (37, 50), (50, 100), (999, 1000)]


@pytest.mark.parametrize(("k", "n"), WILSON_CASES)
def test_wilson_interval_matches_statsmodels(k, n):
    expected = proportion_confint(k, n, alpha=0.05, method="wilson")
    # With statsmodels' exact normal quantile the two computations agree to round-off ...
    assert wilson_interval(k, n, z=norm.ppf(0.975)) == pytest.approx(expected, abs=1e-12)
    # ... and the default z = 1.96 is the usual rounding of it.
    assert wilson_interval(k, n) == pytest.approx(expected, abs=2e-5)


def test_wilson_interval_stays_in_the_unit_interval():
    """At k = 0 and k = n the bounds are 0 and 1 up to round-off, never past them (centre -/+ half can round
    to -3e-17 or 1 + 2e-16, e.g. at n = 5)."""
    for n in range(1, 200):
        lo0, hi0 = wilson_interval(0, n)
        lon, hin = wilson_interval(n, n)
        assert 0.0 <= lo0 <= 1e-12 and 1.0 - 1e-12 <= hin <= 1.0
        assert 0.0 < hi0 < 1.0 and 0.0 < lon < 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0)), "no examples: no interval"


# ---------------------------------------------------------------------------------------------------------------
# Accumulation: a metric updated batch by batch counts every batch (and never forgets the earlier ones).
# ---------------------------------------------------------------------------------------------------------------

#: Three batches of (clean, white-box, transfer) flags with different sizes and mixes.
BATCHES = [
    (torch.tensor([T, T, F]), torch.tensor([F, T, F]), torch.tensor([T, T, T])),
    (torch.tensor([T, F, T, T, F]), torch.tensor([T, F, F, F, F]), torch.tensor([F, F, T, T, T])),
    (torch.tensor([T, T]), torch.tensor([F, F]), torch.tensor([F, F])),
]


def accumulated(metric, pick):
    for batch in BATCHES:
        metric.update(*pick(batch))
    return float(metric.compute())


def test_every_metric_accumulates_over_updates():
    c, w, t = (torch.cat([b[i] for b in BATCHES]) for i in range(3))
    n = len(c)
    assert accumulated(CleanAccuracy(), lambda b: b[:1]) == pytest.approx(c.sum().item() / n)
    assert accumulated(RobustAccuracy(), lambda b: b[:2]) == pytest.approx((c & w).sum().item() / n)
    assert accumulated(TransferAccuracy(), lambda b: (b[0], b[2])) == pytest.approx((c & t).sum().item() / n)
    asr = (c & ~w).sum().item() / c.sum().item()
    assert accumulated(AttackSuccessRate(), lambda b: b[:2]) == pytest.approx(asr)
    ratio = (c & ~t).sum().item() / (c & ~w).sum().item()
    assert accumulated(Transferability("success_ratio"), lambda b: b) == pytest.approx(ratio)
    drop = (c.sum() - t.sum()).item() / (c.sum() - w.sum()).item()
    assert accumulated(Transferability("accuracy_drop"), lambda b: b) == pytest.approx(drop)
    fractions = [torch.tensor([1.0, 0.5]), torch.tensor([0.25, 0.0, 1.0])]
    expected = ExpectedAccuracy()
    for f in fractions:
        expected.update(f)
    assert float(expected.compute()) == pytest.approx(2.75 / 5)


def test_accuracy_drop_uses_raw_accuracies():
    """Every example counts as scored on its perturbed version, including clean-wrong ones made correct."""
    clean = torch.tensor([T, T, T, F, F])
    wb = torch.tensor([F, F, F, T, T])  # raw accuracy 2/5; clean-counted it fools all 3
    tr = torch.tensor([T, F, F, F, F])  # raw accuracy 1/5; fools 2
    drop = (3 / 5 - 1 / 5) / (3 / 5 - 2 / 5)
    assert value(Transferability("accuracy_drop"), clean, wb, tr) == pytest.approx(drop)
    assert value(Transferability("success_ratio"), clean, wb, tr) == pytest.approx(2 / 3)


def test_expected_accuracy_averages_fractions_and_counts_exactly():
    m = ExpectedAccuracy()
    m.update([0.1, 0.2, 0.3])  # a plain sequence is accepted; the sum is kept in float64
    assert float(m.clone().compute()) == pytest.approx(0.2, rel=1e-6)
    assert m.correct.item() == 0.1 + 0.2 + 0.3, "summed in float64 (float32 would give 0.6000000238)"
    assert m.correct.dtype == torch.float64 and m.total.dtype == torch.long
    assert math.isnan(float(ExpectedAccuracy().compute()))
    other = ExpectedAccuracy()
    other.update(torch.tensor([[1.0], [1.0]]))  # any shape: one fraction per example
    m.merge_state(other)  # what the sum-reduction across DDP ranks does
    assert float(m.compute()) == pytest.approx((0.6 + 2) / 5)
    assert all(fx is torch.sum or getattr(fx, "__name__", "") == "dim_zero_sum" for fx in m._reductions.values())


def test_count_states_are_integers():
    for m in (CleanAccuracy(), RobustAccuracy(), AttackSuccessRate(), Transferability(), ExpectedAccuracy()):
        for name in m.counts:
            assert getattr(m, name).dtype == torch.long, f"{type(m).__name__}.{name}"
