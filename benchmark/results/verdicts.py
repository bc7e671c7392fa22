"""Findings: does this run support the claims of the papers behind the suite? One test and one verdict per claim.

Each claim (`benchmark.results.claims`) gives one or more parts, each a (seeds, examples) matrix of per-example values
whose mean it puts on one side of a null value. Each part is tested by
`benchmark.results.statistics.random_effects_mean`: with several training seeds, a two-way crossed random-effects model
of seeds and examples (a verdict about the
*methods*: training luck and the choice of test examples are both in the interval); with one seed, the paired t-test
over examples (a verdict about *one trained model per method*). A claim of several parts is supported when every part is
(intersection-union: the largest one-sided p of the claimed side), contradicted when one part is reversed
(Bonferroni over the parts); its p is the two-sided p of the smaller side.

Holm's correction runs over every claim of the run, every pair, every budget and both directions at once (one
family). Verdict: "supported" when the Holm-adjusted p is below 0.05 on the claimed side, "contradicted" when it is on
the other side, else "not supported". Beside each verdict: the seeds a run on the same examples would need for 80 %
power at the observed difference (`benchmark.results.statistics.seeds_for_power`), so that "not supported" reads as
either "no effect seen" or "too few seeds". Each seed's own difference is listed with its paired t interval over the
examples, without a verdict of its own.
"""

from __future__ import annotations

import math

from attacks.base import parse_eps
from benchmark.records import Row, eps_str
from benchmark.results.claims import EACH, HEADLINE, METRICS, Part, matching
from benchmark.results.statistics import ALPHA, MAX_SEEDS, POWER, holm, random_effects_mean, seeds_for_power

__all__ = ["COLUMNS", "findings", "markdown"]

TEST_METHODS = "random effects over seeds and examples"
TEST_MODELS = "paired t over examples (one seed: one trained model per method)"


def budgets(claim, rows: list[Row], pair: str, headline: dict) -> list[float]:
    """The budgets a claim is tested at on a pair: the headline one of its norm, its own, or each of the run's."""
    if claim.eps == EACH:
        found = sorted({r.budget_key[1] for r in matching(rows, pair, claim.attack, claim.norm)})
        return found or [math.nan]
    return [headline.get(claim.norm, math.nan) if claim.eps == HEADLINE else parse_eps(claim.eps)]


def claim_test(parts: list[Part]) -> dict:
    """The claim's test over its parts (see the module docstring): p, p_support, p_contra, each part's test."""
    tests = [random_effects_mean(p.values, p.null) for p in parts]
    favour = [t["p_above"] if p.sign > 0 else t["p_below"] for p, t in zip(parts, tests)]
    against = [t["p_below"] if p.sign > 0 else t["p_above"] for p, t in zip(parts, tests)]
    support, contra = max(favour), min(1.0, len(parts) * min(against))
    return {"tests": tests, "p_support": support, "p_contra": contra, "p": min(1.0, 2 * min(support, contra))}


def _shown(part: Part, test: dict) -> dict:
    """A part's difference and interval as shown: the distance of the mean to the null, times the part's scale."""
    return {k: (test[m] - part.null) * part.scale for k, m in
            (("difference", "mean"), ("ci_low", "ci_low"), ("ci_high", "ci_high"))}  # fmt: skip


def evaluate(claim, rows: list[Row], per_example: dict, pair: str, eps: float) -> dict:
    """A claim on one pair at one budget: its test, the shown difference and interval, each seed's difference, the
    seeds for 80 % power (the verdict comes after Holm, in `findings`)."""
    item = {"claim": claim.text, "source": claim.source, "pair": pair, "higher": getattr(claim, "higher", ""),
            "lower": getattr(claim, "lower", ""), "attack": claim.attack, "norm": claim.norm,
            "metric": getattr(claim, "metric", "robust"), "eps": eps, "eps_label": eps_str(claim.norm, eps),
            "seeds": 0, "per_seed": []}  # fmt: skip
    parts = claim.parts(rows, per_example, pair, eps)
    if isinstance(parts, str):
        return {**item, "verdict": parts}
    test = claim_test(parts)
    shown = [{"label": p.label, **_shown(p, t), "p": t["p"]} for p, t in zip(parts, test["tests"])]
    needed = [seeds_for_power(t) for t in test["tests"]]
    item.update(
        {k: test[k] for k in ("p", "p_support", "p_contra")},
        seeds=parts[0].values.shape[0],
        n=min(p.values.shape[1] for p in parts),
        test=TEST_METHODS if parts[0].values.shape[0] > 1 else TEST_MODELS,
        parts=shown,
        seeds_needed=None if None in needed else max(needed),
        **{k: shown[0][k] for k in ("difference", "ci_low", "ci_high")},
    )
    for p in parts:  # each seed's own difference, with the paired t interval over its examples (no p: no null)
        for k, seed in enumerate(p.seeds):
            one = _shown(p, random_effects_mean(p.values[k : k + 1]))
            item["per_seed"].append({"part": p.label, "seed": seed, "n": p.values.shape[1], **one})
    return item


def findings(rows: list[Row], per_example: dict | None, headline: dict[str, float], claims: list) -> list[dict]:
    """One finding per claim (the run's: `benchmark.results.claims.run_claims`), dataset pair and budget: the
    difference and its interval, the test, the Holm-adjusted p over every claim of the run, the verdict and the seeds
    for 80 % power (see the module docstring). `headline`: the budget each norm is ranked at, resolved on the rows
    (`benchmark.records.headline_eps`, by the report)."""
    per_example = per_example or {}
    out = [
        evaluate(c, rows, per_example, pair, eps)
        for pair in dict.fromkeys(r.pair for r in rows)
        for c in claims
        for eps in budgets(c, rows, pair, headline)
    ]
    tested = [f for f in out if "p" in f]
    for f, q in zip(tested, holm([f["p"] for f in tested])):
        f["p_holm"] = q
        side = "supported" if f["p_support"] <= f["p_contra"] else "contradicted"
        f["verdict"] = side if q < ALPHA else "not supported"
    return out


#: The flat columns of a finding (the W&B table; each seed's difference is in the markdown).
COLUMNS = (
    "claim", "source", "pair", "higher", "lower", "attack", "norm", "eps_label", "metric", "seeds", "n",
    "difference", "ci_low", "ci_high", "test", "p", "p_holm", "verdict", "seeds_needed",
)  # fmt: skip


def p_str(x: float | None) -> str:
    """Two significant digits, more where those would put the p on the other side of alpha (0.0496 is not 0.05)."""
    if x is None or math.isnan(x):
        return "-"
    if x < 1e-4:
        return "<0.0001"
    digits = 2
    while digits < 6 and (float(f"{x:.{digits}g}") < ALPHA) != (x < ALPHA):
        digits += 1
    return f"{x:.{digits}g}"


def interval(f: dict) -> str:
    """ "+4.9 [-0.8, +10.9]": a difference in points and its 95 % interval."""
    return f"{100 * f['difference']:+.1f} [{100 * f['ci_low']:+.1f}, {100 * f['ci_high']:+.1f}]"


def _attack(f: dict) -> str:
    metric = "" if f["metric"] == "robust" else f", {METRICS[f['metric']]}"
    return f"{f['attack']} {f['norm']} {f['eps_label']}{metric}"


def _difference(f: dict) -> str:
    if len(f["parts"]) == 1:
        return interval(f)
    return "; ".join(f"{p['label']}: {interval(p)}" for p in f["parts"])


def _needed(f: dict) -> str:
    if f["seeds"] < 2:
        return "-"
    return f"more than {MAX_SEEDS}" if f["seeds_needed"] is None else str(f["seeds_needed"])


def markdown(items: list[dict]) -> list[str]:
    """The leaderboard's "Findings" section (lines of markdown)."""
    lines = [
        "## Findings",
        "",
        "Each claim of the papers, tested once on this run. `difference`: the claimed-higher minus the claimed-lower "
        "model's share of examples (points; for a claim of several parts, each part), on the examples every row of "
        "the claim covers, with its 95 % interval. With several training seeds the test is about the methods: a "
        "two-way random-effects model of the per-example differences over seeds and examples (Satterthwaite's "
        "degrees of freedom; benchmark/results/statistics.py), so training luck and the choice of test examples are "
        "both in the interval; with one seed it is the paired t-test over examples, about one trained model per "
        f"method. p is two-sided; Holm's correction runs over every claim of the run and both directions (one family); "
        f"alpha = "
        f"{ALPHA}. `supported` / `contradicted`: the Holm-adjusted p is below alpha on the claimed / the other side. "
        f"`seeds for {100 * POWER:.0f} % power`: the training seeds a run on these examples would need to detect the "
        "observed difference, from the seed and example variances estimated here.",
        "",
    ]
    if not items:
        return [*lines, "No rows to test.", ""]
    header = ["claim", "pair", "claimed higher", "claimed lower", "attack", "difference (points) [95 %]", "seeds",
              "n", "test", "p", "Holm p", "verdict", f"seeds for {100 * POWER:.0f} % power"]  # fmt: skip
    lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for f in items:
        cells = [f"{f['claim']} ({f['source']})", f["pair"], f["higher"] or "-", f["lower"] or "-", _attack(f)]
        if "p" not in f:
            cells += ["-"] * 6 + [f["verdict"], "-"]
        else:
            cells += [_difference(f), str(f["seeds"]), str(f["n"]), f["test"], p_str(f["p"]), p_str(f["p_holm"]),
                      f"**{f['verdict']}**", _needed(f)]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    multi = [f for f in items if f["seeds"] > 1]
    if multi:
        header = "| claim | pair | attack | part | seed | difference (points) [95 %] | n |"
        lines += ["", "Each seed's difference (points) with its 95 % paired t interval over the examples; no verdict "
                  "(a seed is one trained model per method):", "", header, "|---" * 7 + "|"]  # fmt: skip
        for f in multi:
            for t in f["per_seed"]:
                lines.append(f"| {f['claim']} | {f['pair']} | {_attack(f)} | {t['part']} | {t['seed']} | "
                             f"{interval(t)} | {t['n']} |")  # fmt: skip
    return [*lines, ""]
