"""The statistics behind every verdict and accuracy interval of the report: one model of per-example outcomes over
training seeds and test examples, and the t interval of other per-seed quantities (seconds, ratios).

**The model.** A quantity measured per training seed s (one trained model per seed and method) on per test
example i of the same test examples, Y[s, i] (a 0/1 outcome, the fraction of draws for a randomized model, or the
paired difference of two methods' outcomes for a claim), is a two-way crossed random-effects model without
replication (Searle, Casella & McCulloch 1992, "Variance Components", ch. 4):

    Y[s, i] = mu + a[s] + b[i] + e[s, i],  a ~ (0, var_seed), b ~ (0, var_example), e ~ (0, var_residual)

The target is mu, the method's quantity over training luck and over test examples alike. In the balanced design
the ANOVA (method-of-moments) estimator of the variance of the grand mean is

    var(mean) = var_seed / S + var_example / n + var_residual / (S n) = (MS_seed + MS_example - MS_residual) / (S n)

from the three mean squares, with Satterthwaite's (1946) degrees of freedom for that linear combination. The
example component is cut at zero (MS_example < MS_residual: no example effect is seen, and the term is dropped with
its degrees of freedom); the seed component never is (MS_seed always enters), so a seed variance that three seeds
cannot distinguish from zero still widens the interval. The interval is the t interval of the grand mean with
those degrees of freedom, the test two-sided; with one seed the model has no seed term and this is the paired t-test
over examples (n - 1 degrees of freedom): a statement about one trained model per method.

Why not a bootstrap over seeds: with three seeds it treats the seeds drawn as the population (a replicate never
leaves the range of the observed seed means), and it was over-confident in simulation; the calibration of both is
simulated by `benchmark.results.calibration` and pinned by tests/benchmark/test_calibration.py (docs/statistics.md).

**Seeds for 80 % power** (`seeds_for_power`): the variance components estimated from the run, projected to S'
seeds on the same examples (expected mean squares), give the standard error and Satterthwaite degrees of freedom of
a run with S' seeds; the power of the two-sided test at the observed difference follows from the noncentral t.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

ALPHA = 0.05
LEVEL = 0.95
POWER = 0.8
MAX_SEEDS = 20


def t_interval(values: list[float], level: float = LEVEL) -> tuple[float, float]:
    """The t interval of the mean of `values` (NaN without two values): per-seed quantities that have no per-example
    outcomes (seconds, pass counts, ratios)."""
    from scipy import stats

    if len(values) < 2:
        return math.nan, math.nan
    mean, sem = statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))
    if sem == 0:
        return mean, mean
    low, high = stats.t.interval(level, len(values) - 1, loc=mean, scale=sem)
    return float(low), float(high)


def mean_squares(values) -> tuple[float, float, float, float]:
    """(grand mean, MS_seed, MS_example, MS_residual) of a (seeds, examples) matrix; with one seed MS_seed and
    MS_residual are NaN."""
    y = np.asarray(values, dtype=float)
    s, n = y.shape
    grand = float(y.mean())
    rows, cols = y.mean(axis=1), y.mean(axis=0)
    ss_seed = n * float(((rows - grand) ** 2).sum())
    ss_example = s * float(((cols - grand) ** 2).sum())
    ss_total = float(((y - grand) ** 2).sum())
    ms_example = ss_example / (n - 1) if n > 1 else math.nan
    if s == 1:
        return grand, math.nan, ms_example, math.nan
    ms_residual = max(ss_total - ss_seed - ss_example, 0.0) / ((s - 1) * (n - 1)) if n > 1 else math.nan
    return grand, ss_seed / (s - 1), ms_example, ms_residual


def variance_and_df(s: int, n: int, ms_seed, ms_example, ms_residual):
    """The variance of the grand mean and its Satterthwaite degrees of freedom (see the module docstring), from the
    mean squares of a (s, n) matrix; numpy arrays of mean squares give arrays (`benchmark.results.calibration`)."""
    if s == 1:
        return np.asarray(ms_example) / n, np.full(np.shape(ms_example), float(n - 1))
    if n == 1:
        return np.asarray(ms_seed) / s, np.full(np.shape(ms_seed), float(s - 1))
    ms_seed, ms_example, ms_residual = (np.asarray(m, dtype=float) for m in (ms_seed, ms_example, ms_residual))
    seen = ms_example > ms_residual  # an example effect is seen: var_example / n enters with its mean squares
    combination = ms_seed + np.where(seen, ms_example - ms_residual, 0.0)
    denominator = ms_seed**2 / (s - 1) + np.where(
        seen, ms_example**2 / (n - 1) + ms_residual**2 / ((s - 1) * (n - 1)), 0.0
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(denominator > 0, combination**2 / denominator, float(s - 1))
    return combination / (s * n), df


def random_effects_mean(values, null: float = 0.0, level: float = LEVEL) -> dict:
    """The mean of a (seeds, examples) matrix with its interval and two-sided test against `null` (the module
    docstring's model). Returns mean, se, df, ci_low, ci_high, p (two-sided), p_above and p_below (one-sided:
    the mean is above / below `null`), seeds, n and the variance components (var_seed, var_example,
    var_residual; NaN with one seed or one example)."""
    from scipy import stats

    y = np.asarray(values, dtype=float)
    if y.ndim != 2 or 0 in y.shape:
        raise ValueError(f"random_effects_mean needs a non-empty (seeds, examples) matrix, got shape {y.shape}")
    s, n = y.shape
    grand, ms_seed, ms_example, ms_residual = mean_squares(y)
    var, df = (float(v) for v in variance_and_df(s, n, ms_seed, ms_example, ms_residual))
    out = {"mean": grand, "seeds": s, "n": n, "df": df}
    separable = s > 1 and n > 1  # one seed (or one example): the components are not told apart
    out["var_seed"] = max((ms_seed - ms_residual) / n, 0.0) if separable else math.nan
    out["var_example"] = max((ms_example - ms_residual) / s, 0.0) if separable else math.nan
    out["var_residual"] = ms_residual if separable else math.nan
    if not math.isfinite(grand):  # a missing outcome (NaN) in the matrix: no test, never a verdict
        out.update(se=math.nan, ci_low=math.nan, ci_high=math.nan, p_above=1.0, p_below=1.0, p=1.0)
        return out
    if not math.isfinite(var) or var <= 0:  # every value equal (no spread at all): no evidence of noise
        out.update(se=0.0, ci_low=grand, ci_high=grand)
        above, below = float(grand <= null), float(grand >= null)
        out.update(p_above=above, p_below=below, p=min(1.0, 2 * min(above, below)))
        return out
    se = math.sqrt(var)
    q = float(stats.t.ppf(0.5 + level / 2, df))
    t = (grand - null) / se
    above, below = float(stats.t.sf(t, df)), float(stats.t.cdf(t, df))
    out.update(se=se, ci_low=grand - q * se, ci_high=grand + q * se, p_above=above, p_below=below)
    out["p"] = min(1.0, 2 * min(above, below))
    return out


def power(difference: float, seeds: int, n: int, var_seed: float, var_example: float, var_residual: float,
          alpha: float = ALPHA) -> float:  # fmt: skip
    """The power of the two-sided test at level `alpha` when the true mean differs from the null by `difference`,
    with `seeds` seeds on `n` examples and these variance components (expected mean squares, Satterthwaite's
    degrees of freedom, noncentral t)."""
    from scipy import stats

    var_seed = 0.0 if not math.isfinite(var_seed) else var_seed
    ms_seed = var_residual + n * var_seed
    ms_example = var_residual + seeds * var_example
    var, df = (float(v) for v in variance_and_df(seeds, n, ms_seed, ms_example, var_residual))
    if var <= 0:
        return 1.0 if difference != 0 else alpha
    delta = abs(difference) / math.sqrt(var)
    q = float(stats.t.ppf(1 - alpha / 2, df))
    return float(stats.nct.sf(q, df, delta) + stats.nct.cdf(-q, df, delta))


def seeds_for_power(test: dict, target: float = POWER, alpha: float = ALPHA, max_seeds: int = MAX_SEEDS) -> int | None:
    """The fewest training seeds (2 to `max_seeds`) whose run on the same test examples would detect the observed
    mean with probability `target`, from `random_effects_mean`'s estimates; None: more than `max_seeds` (or no
    difference at all). With one seed the seed variance is unknown: None."""
    if test["seeds"] < 2 or not math.isfinite(test.get("var_seed", math.nan)) or test["mean"] == 0:
        return None
    components = (test["var_seed"], test["var_example"], test["var_residual"])
    for seeds in range(2, max_seeds + 1):
        if power(test["mean"], seeds, test["n"], *components, alpha=alpha) >= target:
            return seeds
    return None


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the order given (statsmodels' `multipletests`)."""
    from statsmodels.stats.multitest import multipletests

    if not p_values:
        return []
    return [float(q) for q in multipletests(p_values, alpha=ALPHA, method="holm")[1]]
