"""The robustness metrics, checked against hand counts and against independent formulas."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm
from statsmodels.stats.proportion import proportion_confint

from benchmark.metrics import transferability_ratio, wilson_interval
from benchmark.runner.stages.score import metrics

T, F = True, False
CLEAN = torch.tensor([T, T, T, T, F, F])
WB = torch.tensor([F, F, T, F, F, F])  # white-box: fools 3 of the 4 clean-correct examples
TR = torch.tensor([T, F, T, T, F, T])  # transfer: fools 1; the last (clean-wrong) example became correct


def counted(clean, adv) -> dict:
    """The row metrics of a deterministic cell (one draw) with these flags."""
    return metrics({"clean": clean[None], "adv": adv[None]})


def test_counts():
    m = counted(CLEAN, WB)
    assert m["clean_acc"] == pytest.approx(4 / 6)
    assert m["robust_acc"] == pytest.approx(1 / 6)
    assert m["success_rate"] == pytest.approx(3 / 4)
    # Paper 1's counting: the clean-wrong example that the perturbation made correct does not count.
    assert counted(CLEAN, TR)["robust_acc"] == pytest.approx(3 / 6)


def test_transferability_both_readings_against_independent_formulas():
    asr = lambda adv: ((CLEAN & ~adv).sum() / CLEAN.sum()).item()  # noqa: E731
    acc = lambda adv: adv.float().mean().item()  # noqa: E731 - raw accuracy, every example scored
    clean_acc = CLEAN.float().mean().item()
    assert transferability_ratio(CLEAN, WB, TR, "success_ratio") == pytest.approx(asr(TR) / asr(WB))
    expected_drop = (clean_acc - acc(TR)) / (clean_acc - acc(WB))
    assert transferability_ratio(CLEAN, WB, TR, "accuracy_drop") == pytest.approx(expected_drop)
    assert asr(TR) / asr(WB) != pytest.approx(expected_drop), "the two readings should differ on this data"


def test_undefined_ratios_are_nan():
    none = torch.zeros(3, dtype=torch.bool)
    assert math.isnan(counted(none, none)["success_rate"])  # nothing clean-correct to attack
    for form in ("success_ratio", "accuracy_drop"):
        assert math.isnan(transferability_ratio(CLEAN, CLEAN, CLEAN, form))  # the white-box attack fooled nothing
        # ... even when the transfer attack fooled some: undefined, not infinite.
        assert math.isnan(transferability_ratio(CLEAN, CLEAN, torch.zeros(6, dtype=torch.bool), form))


def test_the_ratio_is_the_float32_division_results_csv_holds():
    clean, wb, tr = torch.ones(3, dtype=torch.bool), torch.zeros(3, dtype=torch.bool), torch.tensor([F, F, T])
    value = transferability_ratio(clean, wb, tr, "success_ratio")  # 2 / 3
    assert value == float(torch.tensor(2.0) / torch.tensor(3)) and value != 2 / 3


def test_mismatched_flags_are_rejected():
    with pytest.raises(ValueError, match="different lengths"):
        transferability_ratio(CLEAN, WB[:3], TR, "success_ratio")
    with pytest.raises(ValueError, match="transferability form 'ratio'.*valid: accuracy_drop, success_ratio"):
        transferability_ratio(CLEAN, WB, TR, "ratio")


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


def test_accuracy_drop_uses_raw_accuracies():
    """Every example counts as scored on its perturbed version, including clean-wrong ones made correct."""
    clean = torch.tensor([T, T, T, F, F])
    wb = torch.tensor([F, F, F, T, T])  # raw accuracy 2/5; clean-counted it fools all 3
    tr = torch.tensor([T, F, F, F, F])  # raw accuracy 1/5; fools 2
    drop = (3 / 5 - 1 / 5) / (3 / 5 - 2 / 5)
    assert transferability_ratio(clean, wb, tr, "accuracy_drop") == pytest.approx(drop)
    assert transferability_ratio(clean, wb, tr, "success_ratio") == pytest.approx(2 / 3)
