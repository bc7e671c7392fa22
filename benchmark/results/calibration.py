"""How well the report's method-level test keeps its stated error rates, simulated: `python -m
benchmark.results.calibration`.

Each replicate is a run's worth of paired per-example outcomes of two methods: S training seeds x n test examples,
binary outcomes, every example with a difficulty p_i ~ U(0.3, 0.7) shared by both methods and every seed, every seed
with an effect a_s ~ N(0, seed_sd) on the difference of the two methods' success probabilities (method A gets
p_i + (delta + a_s) / 2, method B p_i - (delta + a_s) / 2; the outcomes are independent given those), so the true
difference of the methods is `delta` and the seed-to-seed standard deviation of a seed's difference is `seed_sd`
(plus the examples' sampling noise). Per replicate the test of `benchmark.results.statistics.random_effects_mean` gives
a 95 % interval and a verdict: "supported" (the interval above 0), "contradicted" (below 0) or neither. Reported per
setting: the share of intervals that hold `delta` (coverage) and the share of wrong verdicts (any verdict when
delta = 0; "contradicted" when delta > 0).

The grid is the one a claim of this suite meets: 3 and 5 seeds; 128 and 1,000 examples; a seed standard deviation
of 0, 2, 4 and 8 points; delta 0 and 5 points. `--bootstrap` adds the crossed bootstrap over seeds and examples that
the report used before (Owen 2007; kept here only to show its calibration: it is not used by the report), on fewer
replicates (each costs `BOOTSTRAP_RESAMPLES` resamples).

The simulation is vectorized over replicates (the mean squares come from row and column sums of each (S, n) matrix
of differences in {-1, 0, 1}); 20,000 replicates per setting take about half a minute on one core.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
from scipy import stats as sps

from benchmark.results.statistics import LEVEL, variance_and_df

SEEDS = (3, 5)
EXAMPLES = (128, 1000)
SEED_SD = (0.0, 0.02, 0.04, 0.08)
DELTA = (0.0, 0.05)
REPLICATES = 20_000
BOOTSTRAP_REPLICATES = 1_000
BOOTSTRAP_RESAMPLES = 999
CHUNK = 1_000  # replicates simulated at once (memory: CHUNK x S x n bytes, several times)


def differences(seeds: int, n: int, seed_sd: float, delta: float, replicates: int, rng: np.random.Generator):
    """`replicates` (seeds, n) matrices of paired differences of binary outcomes (int8 in {-1, 0, 1}), in chunks."""
    for start in range(0, replicates, CHUNK):
        r = min(CHUNK, replicates - start)
        p = rng.uniform(0.3, 0.7, size=(r, 1, n)).astype(np.float32)
        half = (delta + rng.normal(0.0, seed_sd, size=(r, seeds, 1)).astype(np.float32)) / 2
        pa, pb = np.clip(p + half, 0, 1), np.clip(p - half, 0, 1)
        u = rng.random((r, seeds, n), dtype=np.float32)
        # one uniform per cell: A right and B wrong below pa (1 - pb); A wrong and B right above 1 - pb (1 - pa)
        yield (u < pa * (1 - pb)).view(np.int8) - (u > 1 - pb * (1 - pa)).view(np.int8)


def mean_squares(d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(grand mean, MS_seed, MS_example, MS_residual) of each (S, n) matrix of a (r, S, n) array of {-1, 0, 1}
    (`benchmark.results.statistics.mean_squares`, vectorized: the squares of such values are their absolute values)."""
    _, s, n = d.shape
    rows = d.sum(2, dtype=np.int64).astype(float)
    cols = d.sum(1, dtype=np.int64).astype(float)
    total = rows.sum(1)
    correction = total**2 / (s * n)
    ss_seed = (rows**2).sum(1) / n - correction
    ss_example = (cols**2).sum(1) / s - correction
    ss_total = np.count_nonzero(d, axis=(1, 2)) - correction
    ss_residual = np.maximum(ss_total - ss_seed - ss_example, 0.0)
    return total / (s * n), ss_seed / (s - 1), ss_example / (n - 1), ss_residual / ((s - 1) * (n - 1))


def random_effects_intervals(d: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """The report's interval (`benchmark.results.statistics.random_effects_mean`) of each matrix of `d`."""
    _, s, n = d.shape
    grand, ms_seed, ms_example, ms_residual = mean_squares(d)
    var, df = variance_and_df(s, n, ms_seed, ms_example, ms_residual)
    half = sps.t.ppf(0.5 + level / 2, df) * np.sqrt(var)
    return grand - half, grand + half


def bootstrap_intervals(d: np.ndarray, rng: np.random.Generator, level: float = LEVEL):
    """The crossed bootstrap's percentile interval (seeds and examples resampled independently, with replacement)
    of each matrix: a replicate's mean is the mean over n drawn examples of the seed-weighted example means."""
    _, s, n = d.shape
    low, high = np.empty(len(d)), np.empty(len(d))
    for k, m in enumerate(d.astype(float)):
        seed_w = rng.multinomial(s, np.full(s, 1.0 / s), size=BOOTSTRAP_RESAMPLES)  # (B, S): draws of each seed
        rows = seed_w @ m / s  # (B, n): each example's mean over the drawn seeds
        drawn = rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))
        dist = np.take_along_axis(rows, drawn, axis=1).mean(axis=1)
        low[k], high[k] = np.quantile(dist, [(1 - level) / 2, (1 + level) / 2])
    return low, high


def calibrate(seeds: int, n: int, seed_sd: float, delta: float, replicates: int, rng, method: str = "random_effects"):
    """Coverage of the 95 % interval and the rate of wrong verdicts of `method` in one setting."""
    held = wrong = 0
    for d in differences(seeds, n, seed_sd, delta, replicates, rng):
        if method == "random_effects":
            low, high = random_effects_intervals(d)
        else:
            low, high = bootstrap_intervals(d, rng)
        held += int(((low <= delta) & (delta <= high)).sum())
        wrong += int((high < 0).sum()) + (int((low > 0).sum()) if delta == 0 else 0)
    return {"seeds": seeds, "n": n, "seed_sd": seed_sd, "delta": delta, "replicates": replicates,
            "coverage": held / replicates, "wrong": wrong / replicates}  # fmt: skip


def table(replicates: int = REPLICATES, seed: int = 0, method: str = "random_effects") -> list[dict]:
    """`calibrate` over the whole grid, one seeded generator for all settings."""
    rng = np.random.default_rng(seed)
    return [calibrate(s, n, sd, delta, replicates, rng, method)
            for s, n, sd, delta in itertools.product(SEEDS, EXAMPLES, SEED_SD, DELTA)]  # fmt: skip


def markdown(results: dict[str, list[dict]]) -> list[str]:
    """One table: a row per setting, a coverage and a wrong-verdict column per method."""
    methods = list(results)
    header = ["seeds", "examples", "seed SD (points)", "true difference (points)"]
    header += [f"{m}: {what}" for m in methods for what in ("coverage %", "wrong verdicts %")]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for cells in zip(*results.values()):
        c = cells[0]
        row = [str(c["seeds"]), str(c["n"]), f"{100 * c['seed_sd']:g}", f"{100 * c['delta']:g}"]
        row += [
            f"{100 * x[k]:.1f}" if k == "coverage" else f"{100 * x[k]:.2f}"
            for x in cells
            for k in ("coverage", "wrong")
        ]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicates", type=int, default=REPLICATES)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bootstrap", action="store_true", help="add the old crossed bootstrap (slow)")
    parser.add_argument("--bootstrap-replicates", type=int, default=BOOTSTRAP_REPLICATES)
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = {"random effects": table(args.replicates, args.seed)}
    if args.bootstrap:
        results["crossed bootstrap"] = table(args.bootstrap_replicates, args.seed, "bootstrap")
    print("\n".join(markdown(results)))
    counts = ", ".join(f"{m}: {rows[0]['replicates']:,}" for m, rows in results.items())
    print(f"\nreplicates per setting: {counts}; seed {args.seed}; {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
