"""The paired tests and the t interval (benchmark/stats.py) on small hand-made outcomes: exact McNemar on the
discordant examples of 0/1 outcomes, a paired bootstrap otherwise, and the t interval of a mean. The reference values
come from scipy called directly. Some tests pin exact values found by mutation testing (`make mutate`,
tests/mutation/mutate.py).
"""

from __future__ import annotations

import math
import statistics

import pytest
from scipy import stats

from benchmark.stats import paired_test, t_interval


# ---- stats ----------------------------------------------------------------------------------------------------
def test_t_interval():
    values = [1.0, 2.0, 3.0, 4.0]
    sem = statistics.stdev(values) / 2
    q = stats.t.ppf(0.975, 3)
    assert t_interval(values) == pytest.approx((2.5 - q * sem, 2.5 + q * sem))
    q90 = stats.t.ppf(0.95, 3)
    assert t_interval(values, 0.9) == pytest.approx((2.5 - q90 * sem, 2.5 + q90 * sem))
    assert t_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)
    assert all(math.isnan(v) for v in t_interval([1.0])) and all(math.isnan(v) for v in t_interval([]))
    two = t_interval([0.0, 1.0])
    assert two == pytest.approx((0.5 - stats.t.ppf(0.975, 1) * 0.5, 0.5 + stats.t.ppf(0.975, 1) * 0.5))
    assert all(isinstance(v, float) for v in two)


def test_mcnemar_counts_the_discordant_examples_on_the_common_ones():
    # 3 both, 4 only higher, 1 only lower, 2 neither; then 5 more examples of the higher row only
    higher = [1, 1, 1, 1, 1, 1, 1, 0, 0, 0] + [0] * 5
    lower = [1, 1, 1, 0, 0, 0, 0, 1, 0, 0]
    t = paired_test(higher, lower)
    assert (t["n"], t["test"], t["discordant"]) == (10, "exact McNemar", "4 vs 1")
    assert (t["higher_acc"], t["lower_acc"], t["difference"]) == pytest.approx((0.7, 0.4, 0.3))
    assert t["p"] == pytest.approx(stats.binomtest(4, 5, 0.5, alternative="greater").pvalue)
    assert t["p_reverse"] == pytest.approx(stats.binomtest(4, 5, 0.5, alternative="less").pvalue)
    assert t["p_two_sided"] == pytest.approx(stats.binomtest(4, 5, 0.5).pvalue) and t["p_two_sided"] < 1
    assert all(type(t[k]) is float for k in ("p", "p_reverse", "p_two_sided", "higher_acc", "difference"))
    assert type(t["n"]) is int
    tie = paired_test([1, 0, 1], [0, 1, 1])  # one discordant example each way: a test, no evidence
    assert (tie["p"], tie["p_reverse"], tie["p_two_sided"], tie["discordant"]) == (0.75, 0.75, 1.0, "1 vs 1")
    same = paired_test([1, 0, 1], [1, 0, 1])
    assert (same["p"], same["p_reverse"], same["p_two_sided"], same["discordant"]) == (1.0, 1.0, 1.0, "0 vs 0")
    with pytest.raises(ValueError, match="^a paired test needs examples that both rows cover; one row has no "
                       "per-example outcomes$"):  # fmt: skip
        paired_test([1.0], [])


def test_mcnemar_only_when_both_rows_are_0_1():
    assert paired_test([1.0, 0.0, 1.0], [0.5, 0.0, 1.0])["test"] == "paired bootstrap"
    assert paired_test([0.5, 0.0, 1.0], [1.0, 0.0, 1.0])["test"] == "paired bootstrap"
    one = paired_test([0.5], [0.25])
    assert (one["test"], one["discordant"], one["p"], one["p_reverse"]) == ("paired bootstrap", "", 1.0, 1.0)
    assert math.isnan(one["p_two_sided"]) and one["n"] == 1 and one["difference"] == 0.25


def test_the_paired_bootstrap_tail_counts_zero_means_on_both_sides():
    # differences 0 and 0.25: a replicate mean is 0 exactly when it draws the first example twice (1 in 4)
    t = paired_test([0.5, 0.75], [0.5, 0.5])
    assert t["test"] == "paired bootstrap" and t["discordant"] == "" and math.isnan(t["p_two_sided"])
    assert t["p"] == pytest.approx(0.25, abs=0.02) and t["p_reverse"] == 1.0
    assert t == paired_test([0.5, 0.75], [0.5, 0.5]) or math.isnan(t["p_two_sided"]), "seeded"
    assert t["p"] == paired_test([0.5, 0.75], [0.5, 0.5])["p"]
    rev = paired_test([0.5, 0.5], [0.5, 0.75])
    assert rev["p"] == 1.0 and rev["p_reverse"] == t["p"]
    # a constant paired difference: every replicate is 0.25 (an unpaired resampling would give some <= 0)
    c = paired_test([1.0, 0.5, 0.75], [0.75, 0.25, 0.5])
    assert c["p"] == 1 / 10_000 and c["p_reverse"] == 1.0 and c["difference"] == pytest.approx(0.25)
