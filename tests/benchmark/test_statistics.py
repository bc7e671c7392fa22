"""The statistics (benchmark/results/statistics.py) on small hand-made matrices: the mean squares of a (seeds, examples)
matrix, the random-effects mean with Satterthwaite's degrees of freedom, the power of its test and the seeds it needs,
the t interval of other per-seed quantities, Holm. The reference values are computed here from the textbook formulas
(Searle, Casella & McCulloch 1992, ch. 4; Satterthwaite 1946; the noncentral t for the power) and from scipy and
statsmodels called directly. Its calibration is simulated in test_calibration.py.
"""

from __future__ import annotations

import math
import statistics
import warnings

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from benchmark.results.statistics import (
    ALPHA,
    holm,
    mean_squares,
    power,
    random_effects_mean,
    seeds_for_power,
    t_interval,
    variance_and_df,
)

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


def _textbook_mean_squares(y):
    """(grand mean, MS_seed, MS_example, MS_residual) of a two-way table without replication, in float64."""
    y = np.asarray(y, dtype=np.float64)
    s, n = y.shape
    grand, rows, cols = y.mean(), y.mean(1), y.mean(0)
    resid = y - rows[:, None] - cols[None] + grand
    return (grand, n * ((rows - grand) ** 2).sum() / (s - 1), s * ((cols - grand) ** 2).sum() / (n - 1),
            (resid**2).sum() / ((s - 1) * (n - 1)))  # fmt: skip


def test_two_examples_are_enough_for_every_mean_square_and_component():
    y = np.array([[1.0, 0.0], [0.5, 0.0], [1.0, 0.5]])  # three seeds, two examples: every effect present
    s, n = y.shape
    want = _textbook_mean_squares(y)
    assert mean_squares(y) == pytest.approx(want)
    _, ms_s, ms_e, ms_r = want
    assert ms_e > ms_r, "an example effect is seen in y"
    var, df = variance_and_df(s, n, ms_s, ms_e, ms_r)
    assert var == pytest.approx((ms_s + ms_e - ms_r) / (s * n))
    assert df == pytest.approx((ms_s + ms_e - ms_r) ** 2 / (ms_s**2 / (s - 1) + ms_e**2 / (n - 1) + ms_r**2 / (s - 1)))
    got = random_effects_mean(y)
    assert got["var_seed"] == pytest.approx(max((ms_s - ms_r) / n, 0.0))
    assert got["var_example"] == pytest.approx((ms_e - ms_r) / s) and got["var_residual"] == pytest.approx(ms_r)


def test_one_example_has_a_seed_mean_square_and_no_example_or_residual_one():
    column = np.array([[1.0], [0.0], [0.5]])
    grand, ms_seed, ms_example, ms_residual = mean_squares(column)
    assert grand == 0.5 and ms_seed == pytest.approx(statistics.variance([1.0, 0.0, 0.5]))
    assert math.isnan(ms_example) and math.isnan(ms_residual)
    assert variance_and_df(3, 1, ms_seed, ms_example, ms_residual) == pytest.approx((ms_seed / 3, 2.0))


def test_single_precision_values_are_computed_in_double_precision():
    """A float32 matrix (per-example fractions stored in single precision) gives the mean squares of its values:
    around a large mean, float32 arithmetic would lose the small differences the mean squares are made of."""
    y32 = (1000.0 + np.array([[0.1, 0.0, 0.3, 0.2], [0.0, 0.1, 0.2, 0.0], [0.2, 0.1, 0.3, 0.1]])).astype(np.float32)
    assert mean_squares(y32) == pytest.approx(_textbook_mean_squares(y32), rel=1e-9)


def test_values_that_are_not_real_numbers_are_refused():
    """Complex values are refused, not cut to their real part."""
    complex_matrix = [[1.0 + 1.0j, 0.0], [0.0, 1.0]]
    with pytest.raises(TypeError):
        mean_squares(complex_matrix)
    with pytest.raises(TypeError):
        random_effects_mean(complex_matrix)


def test_an_example_mean_square_equal_to_the_residual_one_is_no_example_effect():
    """MS_example = MS_residual estimates an example variance of 0: the term is dropped with its degrees of freedom,
    which leaves the seed term's s - 1."""
    assert variance_and_df(3, 10, 2.0, 1.5, 1.5) == pytest.approx((2.0 / 30, 2.0))


def test_the_seed_term_alone_has_s_minus_1_degrees_of_freedom_at_any_scale_and_silently():
    """Satterthwaite's degrees of freedom of one mean square are its own, s - 1, whatever its size: also when its
    square underflows to a denominator of 0 (2.2e-162 squared is the smallest subnormal, halved to 0) and when there
    is no spread at all (0 / 0); neither case warns."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for ms_seed in (2.0, 2.2e-162, 0.0):
            var, df = variance_and_df(3, 10, ms_seed, 0.0, 0.0)
            assert var == pytest.approx(ms_seed / 30) and df == 2.0, ms_seed
        assert variance_and_df(5, 10, np.zeros(2), np.zeros(2), np.zeros(2))[1] == pytest.approx([4.0, 4.0])


def test_arrays_of_mean_squares_give_arrays_of_their_shape_in_every_branch():
    ms = np.array([1.0, 2.0, 3.0])
    for s, n in ((1, 10), (4, 1), (4, 10)):
        var, df = variance_and_df(s, n, ms, ms, ms / 2)
        assert np.shape(var) == np.shape(df) == (3,), (s, n)


def test_integer_mean_squares_are_squared_in_floating_point():
    """Mean squares given as Python or numpy integers (sums of counts) give what their float values give: their
    squares would overflow 64-bit integers."""
    ints, floats = (4_000_000_000, 10_000_000_000, 1_000_000_000), (4e9, 1e10, 1e9)
    want = [float(v) for v in variance_and_df(3, 10, *floats)]
    assert [float(v) for v in variance_and_df(3, 10, *ints)] == pytest.approx(want)
    var, df = variance_and_df(3, 10, *(np.array([m, m]) for m in ints))
    assert var == pytest.approx([want[0]] * 2) and df == pytest.approx([want[1]] * 2)


def test_no_spread_has_a_zero_standard_error_and_a_point_interval():
    got = random_effects_mean(np.full((3, 4), 0.25), null=0.25)
    assert got["se"] == 0.0 and got["ci_low"] == got["ci_high"] == 0.25
    assert got["p"] == 1.0, "the mean is the null: no evidence against it"


def test_the_two_sided_p_is_a_probability_even_when_the_test_is_undefined():
    """With a NaN null the t statistic is NaN: the one-sided p are NaN and the two-sided p stays within [0, 1]."""
    got = random_effects_mean(Y, null=math.nan)
    assert math.isnan(got["p_above"]) and 0.0 <= got["p"] <= 1.0


#: Three seeds on 20 examples with a large example effect: the example term shapes the variance and the degrees of
#: freedom of the projected run.
COMPONENTS = {"var_seed": 0.001, "var_example": 0.1, "var_residual": 0.25}


def test_power_is_the_noncentral_t_power_at_the_expected_mean_squares():
    """The textbook power: the variance of the mean var_seed / S + var_example / n + var_residual / (S n), the
    Satterthwaite degrees of freedom of the expected mean squares, the two-sided rejection probability of the
    noncentral t (both tails)."""
    s, n, d = 3, 20, 0.3
    vs, ve, vr = COMPONENTS.values()
    e_seed, e_example = vr + n * vs, vr + s * ve  # expected mean squares
    var = vs / s + ve / n + vr / (s * n)
    df = (e_seed + e_example - vr) ** 2 / (e_seed**2 / (s - 1) + e_example**2 / (n - 1) + vr**2 / ((s - 1) * (n - 1)))
    for alpha in (ALPHA, 0.01):
        q, delta = stats.t.ppf(1 - alpha / 2, df), d / math.sqrt(var)
        want = stats.nct.sf(q, df, delta) + stats.nct.cdf(-q, df, delta)
        assert power(d, s, n, vs, ve, vr, alpha=alpha) == pytest.approx(want, rel=1e-9)
        assert power(-d, s, n, vs, ve, vr, alpha=alpha) == pytest.approx(want, rel=1e-9), "two-sided: symmetric"


def test_power_at_no_difference_is_the_level_with_or_without_noise():
    for alpha in (ALPHA, 0.1):
        assert power(0.0, 3, 20, *COMPONENTS.values(), alpha=alpha) == pytest.approx(alpha, rel=1e-9)
        assert power(0.0, 3, 20, 0.0, 0.0, 0.0, alpha=alpha) == alpha


def test_without_noise_any_difference_is_detected_for_sure():
    for d in (0.05, 1.0, -0.3):
        assert power(d, 3, 20, 0.0, 0.0, 0.0) == 1.0, d


def test_power_takes_an_unknown_seed_variance_as_none():
    assert power(0.3, 3, 20, math.nan, 0.1, 0.25) == power(0.3, 3, 20, 0.0, 0.1, 0.25)


def _fewest(test, alpha=ALPHA):
    """The fewest seeds from 2 whose power reaches 80 %, by walking up the power curve."""
    seeds = 2
    while power(test["mean"], seeds, test["n"], *(test[k] for k in COMPONENTS), alpha=alpha) < 0.8:
        seeds += 1
    return seeds


def test_seeds_for_power_is_the_fewest_seeds_reaching_the_target_up_to_max_seeds():
    test = {"seeds": 3, "n": 20, "mean": 0.3, **COMPONENTS}
    needed = seeds_for_power(test)
    assert needed == _fewest(test) and needed > 3, "needs more seeds than the run had"
    assert seeds_for_power(test, max_seeds=needed) == needed and seeds_for_power(test, max_seeds=needed - 1) is None
    assert seeds_for_power({**test, "seeds": 2}) == needed, "two seeds estimate a seed variance"
    strict = seeds_for_power(test, alpha=0.01)
    assert strict == _fewest(test, alpha=0.01) > needed, "a stricter level needs more seeds"
    assert seeds_for_power({**test, "mean": 0.0}) is None, "no difference is never detected"


def test_a_noiseless_difference_needs_two_seeds_even_for_certainty():
    test = random_effects_mean(np.ones((3, 10)))  # every example flips in every seed: a difference of exactly 1
    assert test["mean"] == 1.0 and test["var_seed"] == 0.0
    assert seeds_for_power(test) == 2 and seeds_for_power(test, target=1.0) == 2


def test_seeds_for_power_needs_a_seed_variance():
    test = {"seeds": 3, "n": 20, "mean": 0.3, **COMPONENTS}
    assert seeds_for_power({k: v for k, v in test.items() if k != "var_seed"}) is None
    assert seeds_for_power({**test, "var_seed": math.nan}) is None
    one_example = random_effects_mean(np.array([[1.0], [0.0], [1.0]]))
    assert one_example["seeds"] == 3 and seeds_for_power(one_example) is None


def test_a_missing_outcome_gives_no_evidence_on_either_side():
    from benchmark.results.claims import Part
    from benchmark.results.verdicts import claim_test

    values = np.array([[1.0, 0.0, np.nan, 1.0] * 10, [1.0, 1.0, 0.0, 1.0] * 10])
    test = random_effects_mean(values)
    assert (test["p"], test["p_above"], test["p_below"]) == (1.0, 1.0, 1.0)
    assert all(math.isnan(test[k]) for k in ("mean", "se", "ci_low", "ci_high"))
    assert claim_test([Part("x", values, ("0", "1"))])["p"] == 1.0, "a NaN outcome is not a supported claim"
