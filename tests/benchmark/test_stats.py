"""The statistics (benchmark/stats.py) on small hand-made matrices: the mean squares of a (seeds, examples) matrix, the
random-effects mean with Satterthwaite's degrees of freedom, the t interval of other per-seed quantities, Holm. The
reference values are computed here from the textbook formulas (Searle, Casella & McCulloch 1992, ch. 4; Satterthwaite
1946) and from scipy and statsmodels called directly. Its calibration is simulated in test_calibration.py.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from benchmark.stats import holm, mean_squares, random_effects_mean, t_interval, variance_and_df

#: Two seeds x four examples: seed effect, example effect and residual all present.
Y = np.array([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0]])


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


def test_the_mean_squares_of_a_two_way_table():
    grand, ms_seed, ms_example, ms_residual = mean_squares(Y)
    rows, cols = Y.mean(1), Y.mean(0)  # 0.75, 0.25; 0.5, 0, 1, 0.5
    assert grand == 0.5
    assert ms_seed == pytest.approx(4 * ((rows - 0.5) ** 2).sum() / 1)
    assert ms_example == pytest.approx(2 * ((cols - 0.5) ** 2).sum() / 3)
    resid = Y - rows[:, None] - cols[None] + 0.5
    assert ms_residual == pytest.approx((resid**2).sum() / 3)
    one = mean_squares(Y[:1])
    assert one[0] == 0.75 and one[2] == pytest.approx(np.var(Y[0], ddof=1)) and math.isnan(one[1])
    assert math.isnan(one[3])


def test_the_variance_of_the_mean_and_its_satterthwaite_degrees_of_freedom():
    s, n = Y.shape
    _, ms_s, ms_e, ms_r = mean_squares(Y)
    assert ms_e > ms_r, "an example effect is seen in Y"
    var, df = variance_and_df(s, n, ms_s, ms_e, ms_r)
    assert var == pytest.approx((ms_s + ms_e - ms_r) / (s * n))
    want = (ms_s + ms_e - ms_r) ** 2 / (ms_s**2 / (s - 1) + ms_e**2 / (n - 1) + ms_r**2 / ((s - 1) * (n - 1)))
    assert df == pytest.approx(want)
    # no example effect seen: its term and degrees of freedom are dropped, the seed term stays whole
    var, df = variance_and_df(3, 10, 2.0, 1.0, 1.5)
    assert var == pytest.approx(2.0 / 30) and df == pytest.approx(2.0)
    assert variance_and_df(1, 10, math.nan, 3.0, math.nan) == pytest.approx((0.3, 9.0))
    assert variance_and_df(4, 1, 2.0, math.nan, math.nan) == pytest.approx((0.5, 3.0))
    arrays = variance_and_df(3, 10, np.array([2.0, 2.0]), np.array([1.0, 4.0]), np.array([1.5, 1.0]))
    assert arrays[0] == pytest.approx([2.0 / 30, 5.0 / 30]) and arrays[1][0] == pytest.approx(2.0)


def test_the_random_effects_mean_its_interval_and_two_sided_test():
    got = random_effects_mean(Y, null=0.1)
    s, n = Y.shape
    _, ms_s, ms_e, ms_r = mean_squares(Y)
    var, df = (float(v) for v in variance_and_df(s, n, ms_s, ms_e, ms_r))
    se, q = math.sqrt(var), stats.t.ppf(0.975, df)
    assert (got["mean"], got["se"], got["df"]) == pytest.approx((0.5, se, df))
    assert (got["ci_low"], got["ci_high"]) == pytest.approx((0.5 - q * se, 0.5 + q * se))
    t = (0.5 - 0.1) / se
    assert got["p_above"] == pytest.approx(stats.t.sf(t, df)) and got["p_below"] == pytest.approx(stats.t.cdf(t, df))
    assert got["p"] == pytest.approx(2 * stats.t.sf(t, df))
    assert got["var_seed"] == pytest.approx((ms_s - ms_r) / n) and got["var_residual"] == pytest.approx(ms_r)
    assert got["var_example"] == pytest.approx((ms_e - ms_r) / s)
    assert (got["seeds"], got["n"]) == (2, 4)
    narrow = random_effects_mean(Y, level=0.5)
    assert narrow["ci_high"] - narrow["ci_low"] < got["ci_high"] - got["ci_low"]
    below = random_effects_mean(-Y)
    assert below["p_below"] < 0.5 < below["p_above"] and below["p"] == pytest.approx(2 * below["p_below"])


def test_components_below_zero_are_cut_and_one_seed_has_none():
    flat = np.array([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])  # seed means equal, examples cancel
    got = random_effects_mean(flat)
    assert got["var_seed"] == 0.0 and got["var_example"] == 0.0
    one = random_effects_mean(Y[:1])
    assert all(math.isnan(one[k]) for k in ("var_seed", "var_example", "var_residual")) and one["df"] == 3


def test_holm_is_statsmodels_holm():
    p = [0.01, 0.04, 0.03, 0.2]
    assert holm(p) == pytest.approx(list(multipletests(p, method="holm")[1]))
    assert holm([]) == []
