"""The statistics behind the findings and the report: the paired tests of two models on the same examples, and the
t interval of a mean over seeds.

- 0/1 outcomes (deterministic models): exact McNemar. Only the discordant examples carry information; under the
  null each is equally likely to favour either model, so the one-sided p is the exact binomial tail of b (the
  examples only the claimed-better model gets right) among b + c discordant examples
  (`scipy.stats.binomtest(b, b + c, 0.5, alternative="greater")`); the two-sided p of
  `statsmodels...mcnemar(exact=True)` is kept beside it.
- fractions (randomized models, the share of K draws that are right): a paired percentile bootstrap of the mean
  difference (`scipy.stats.bootstrap(paired=True)`, fixed seed); the one-sided p is the share of bootstrap means
  at or below 0 (the inversion of the one-sided percentile interval), with one added to both counts.
"""

from __future__ import annotations

import math
import statistics

import numpy as np

BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """The t interval of the mean of `values` (NaN without two values)."""
    from scipy import stats

    if len(values) < 2:
        return math.nan, math.nan
    mean, sem = statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))
    if sem == 0:
        return mean, mean
    low, high = stats.t.interval(level, len(values) - 1, loc=mean, scale=sem)
    return float(low), float(high)


def paired_test(higher: list[float], lower: list[float]) -> dict:
    """One-sided paired test that `higher` beats `lower` (and the reverse), on the examples both cover."""
    from scipy import stats

    n = min(len(higher), len(lower))
    if n == 0:
        raise ValueError("a paired test needs examples that both rows cover; one row has no per-example outcomes")
    h, lo = np.asarray(higher[:n], float), np.asarray(lower[:n], float)
    out = {
        "n": n,
        "higher_acc": float(h.mean()),
        "lower_acc": float(lo.mean()),
        "difference": float(h.mean() - lo.mean()),
    }
    if np.isin(h, (0.0, 1.0)).all() and np.isin(lo, (0.0, 1.0)).all():
        from statsmodels.stats.contingency_tables import mcnemar

        b, c = int(((h == 1) & (lo == 0)).sum()), int(((h == 0) & (lo == 1)).sum())
        table = [[int(((h == 1) & (lo == 1)).sum()), b], [c, int(((h == 0) & (lo == 0)).sum())]]
        if b + c == 0:  # no discordant example: no evidence either way (binomtest needs at least one trial)
            p = p_rev = two_sided = 1.0
        else:
            p = stats.binomtest(b, b + c, 0.5, alternative="greater").pvalue
            p_rev = stats.binomtest(b, b + c, 0.5, alternative="less").pvalue
            two_sided = mcnemar(table, exact=True).pvalue
        return {
            **out,
            "test": "exact McNemar",
            "discordant": f"{b} vs {c}",
            "p": float(p),
            "p_reverse": float(p_rev),
            "p_two_sided": float(two_sided),
        }
    if n < 2:  # nothing to resample: no evidence either way
        return {
            **out,
            "test": "paired bootstrap",
            "discordant": "",
            "p": 1.0,
            "p_reverse": 1.0,
            "p_two_sided": math.nan,
        }
    res = stats.bootstrap(
        (h, lo),
        lambda a, b, axis=-1: a.mean(axis=axis) - b.mean(axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        batch=max(1, 2_000_000 // max(n, 1)),  # memory: one batch holds batch x n resampled indices
        rng=np.random.default_rng(BOOTSTRAP_SEED),
    )
    dist = res.bootstrap_distribution
    tail = dist.size + 1
    return {
        **out,
        "test": "paired bootstrap",
        "discordant": "",
        "p": float((1 + (dist <= 0).sum()) / tail),
        "p_reverse": float((1 + (dist >= 0).sum()) / tail),
        "p_two_sided": math.nan,
    }
