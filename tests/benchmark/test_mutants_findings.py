"""The verdicts and the ranking on small hand-made rows and per-example outcomes: the paired tests and the t interval
(benchmark/stats.py), the findings and their verdict rule (benchmark/findings.py), the claims of other shapes
(benchmark/claims.py), the verdicts about methods and the ranking over seeds (benchmark/seeds.py), the leaderboard's
ranking (benchmark/leaderboard.py, benchmark/results.py). The reference values come from scipy and statsmodels
called directly. Written against the mutants `make mutate` (tests/mutation/mutate.py) found alive.
"""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from benchmark import findings as fnd
from benchmark import seeds as sds
from benchmark.claims import RateClaim, StrongestAttackClaim
from benchmark.findings import Claim, claims_from_config, findings
from benchmark.records import Row
from benchmark.stats import paired_test, t_interval

EPS = 8 / 255
HL = {"linf": EPS}


def row(
    defense: str,
    attack: str = "pgd",
    seed: int = 0,
    eps: float = EPS,
    pair: str = "p",
    norm: str = "linf",
    threat: str = "white-box",
    **kw,
) -> Row:
    rid = f"{pair}/{defense}/seed{seed}/{attack}/{norm}/{eps:.6f}/{threat}"
    return Row(
        pair=pair, defense=defense, seed=seed, attack=attack, threat_model=threat, norm=norm, eps=eps, row_id=rid, **kw
    )


def ones(k: int, n: int) -> list[float]:
    return [1.0] * k + [0.0] * (n - k)


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


# ---- findings -------------------------------------------------------------------------------------------------
CLAIM = Claim("a beats b", "paper", higher="a", lower="b", attack="pgd")


def test_claims_from_the_config_and_their_errors():
    from attacks.errors import ConfigError

    got = claims_from_config(
        [
            {"text": "t", "source": "s", "higher": "a", "lower": "b", "attack": "x", "eps": 0.5},
            {"text": "u", "source": "s", "higher": "a", "lower": "b", "attack": "x", "norm": "l2"},
        ]
    )
    assert got == [Claim("t", "s", "a", "b", "x", eps="0.5"), Claim("u", "s", "a", "b", "x", norm="l2")]
    keys = "report.claims[1] must be a mapping with keys text, source, higher, lower, attack, norm, eps (norm, eps"
    full = {"text": "t", "source": "s", "higher": "a", "lower": "b", "attack": "x"}
    for bad in ("text", {**full, "other": 1}, {k: v for k, v in full.items() if k != "source"}):
        with pytest.raises(ConfigError, match=re_escape(keys + " optional)")):
            claims_from_config([full, bad])
    with pytest.raises(ConfigError, match=re_escape("report.claims[0].norm 'l1'; valid: l2, linf")):
        claims_from_config([{**full, "norm": "l1"}])
    assert claims_from_config([]) == []


def re_escape(text: str) -> str:
    import re

    return "^" + re.escape(text) + "$"


def test_a_claims_rows_are_its_two_defenses_at_its_attack_and_budget():
    keep = [row("a"), row("b"), row("a", seed=1), row("a", eps=EPS + 5e-10)]
    noise = [
        row("a", pair="q"),
        row("a", threat="sanity"),
        row("a", attack="fgsm"),
        row("a", norm="l2"),
        row("a", eps=2 * EPS),
        row("c"),
    ]
    found = fnd._rows_for(keep + noise, CLAIM, "p", EPS)
    assert set(found) == {("a", "0"), ("b", "0"), ("a", "1")}
    assert found[("a", "0")] is keep[3], "the last matching row of a model, none of the rows after it"


def run(by_seed: dict[int, tuple[list, list]], claims=(CLAIM,), pair: str = "p", per_example=None, extra=()):
    rows, ex = list(extra), {}
    for seed, (a, b) in by_seed.items():
        for d, robust in (("a", a), ("b", b)):
            r = row(d, seed=seed, pair=pair)
            rows.append(r)
            ex[r.row_id] = {"robust": robust}
    return findings(rows, ex if per_example is None else per_example, HL, list(claims))


def test_a_finding_per_claim_and_pair_with_its_fields():
    a, b = ones(9, 10), ones(1, 10)
    rows = [row("a"), row("b"), row("a", pair="q"), row("b", pair="q")]
    ex = {r.row_id: {"robust": a if r.defense == "a" else b} for r in rows}
    other = Claim("b beats a", "paper", higher="b", lower="a", attack="pgd", eps="8/255")
    items = findings(rows, ex, HL, [CLAIM, other])
    assert [(f["pair"], f["claim"]) for f in items] == [
        ("p", "a beats b"),
        ("p", "b beats a"),
        ("q", "a beats b"),
        ("q", "b beats a"),
    ]
    f = items[0]
    assert {k: f[k] for k in ("source", "higher", "lower", "attack", "norm", "eps", "eps_label", "seeds")} == {
        "source": "paper",
        "higher": "a",
        "lower": "b",
        "attack": "pgd",
        "norm": "linf",
        "eps": EPS,
        "eps_label": "8/255",
        "seeds": 1,
    }
    assert f["verdict"] == "supported" and items[1]["verdict"] == "contradicted"
    assert (f["higher_acc"], f["lower_acc"], f["difference"], f["n"]) == pytest.approx((0.9, 0.1, 0.8, 10))
    assert f["test"] == "exact McNemar" and math.isnan(f["difference_ci_low"]) and math.isnan(f["difference_ci_high"])
    p = 0.5**8
    holm = multipletests([p, 1.0, p, 1.0], method="holm")[1]
    assert f["p"] == pytest.approx(p) and f["p_holm"] == pytest.approx(holm[0]) == pytest.approx(2 * p * 2)
    assert f["per_seed"][0]["seed"] == "0" and f["per_seed"][0]["p_reverse_holm"] == pytest.approx(1.0)


def test_the_headline_budget_or_the_claims_own():
    rows = [row("a", eps=e) for e in (EPS, 2 * EPS, 3 * EPS)] + [row("b", eps=e) for e in (EPS, 2 * EPS, 3 * EPS)]
    ex = {r.row_id: {"robust": ones(10 if r.defense == "a" else 0, 10)} for r in rows}
    (median,) = findings(rows, ex, {}, [CLAIM])
    assert median["eps"] == pytest.approx(2 * EPS) and median["eps_label"] == "16/255"
    (own,) = findings(rows, ex, {"linf": 2 * EPS}, [Claim("t", "s", "a", "b", "pgd", eps="24/255")])
    assert own["eps"] == pytest.approx(3 * EPS) and own["verdict"] == "supported"
    (l2,) = findings(rows, ex, HL, [Claim("t", "s", "a", "b", "pgd", norm="l2")])
    assert math.isnan(l2["eps"]) and l2["verdict"] == "not in this run" and l2["seeds"] == 0
    assert math.isnan(l2["difference"]) and math.isnan(l2["p"]) and l2["n"] == 0 and l2["test"] == ""
    assert math.isnan(l2["p_holm"]) and math.isnan(l2["higher_acc"]) and math.isnan(l2["lower_acc"])
    assert findings([], {}, HL, [CLAIM]) == [], "no rows, no pair"


def test_without_per_example_outcomes_a_claim_is_not_tested():
    a, b = ones(9, 10), ones(1, 10)
    (f,) = run({0: (a, b)}, per_example={})
    assert f["verdict"] == "not tested (no per-example outcomes for its rows)" and f["per_seed"] == []
    (g,) = findings([row("a"), row("b")], None, HL, [CLAIM])
    assert g["verdict"].startswith("not tested")
    for missing in ("a", "b"):
        ex = {row(d).row_id: {"robust": a} for d in "ab" if d != missing}
        assert findings([row("a"), row("b")], ex, HL, [CLAIM])[0]["verdict"].startswith("not tested")
    ex = {row("a").row_id: {"robust": a}, row("b").row_id: {"robust": []}}
    assert findings([row("a"), row("b")], ex, HL, [CLAIM])[0]["verdict"].startswith("not tested")


def test_seeds_are_paired_in_order_and_only_where_both_defenses_ran():
    rows = [row("a", seed=s) for s in (10, 2, 3)] + [row("b", seed=s) for s in (2, 10, 4)]
    ex = {r.row_id: {"robust": ones(r.seed if r.defense == "a" else 1, 12)} for r in rows}
    (f,) = findings(rows, ex, HL, [CLAIM])
    assert [t["seed"] for t in f["per_seed"]] == ["10", "2"] and f["seeds"] == 2, "sorted as text"
    assert [t["higher_acc"] for t in f["per_seed"]] == pytest.approx([10 / 12, 2 / 12])


def test_the_verdict_needs_every_seed_and_the_summary_over_seeds():
    (f,) = run({0: (ones(10, 12), ones(0, 12)), 1: (ones(6, 12), ones(0, 12)), 2: (ones(11, 12), ones(1, 12))})
    diffs = [10 / 12, 6 / 12, 10 / 12]
    assert f["verdict"] == "supported" and f["seeds"] == 3
    assert f["difference"] == pytest.approx(statistics.mean(diffs)) and f["n"] == 12
    assert (f["difference_ci_low"], f["difference_ci_high"]) == pytest.approx(t_interval(diffs))
    assert f["higher_acc"] == pytest.approx(statistics.mean([10 / 12, 6 / 12, 11 / 12]))
    assert f["lower_acc"] == pytest.approx(statistics.mean([0, 0, 1 / 12]))
    ps = [0.5**10, 0.5**6, 0.5**10]
    assert f["p"] == pytest.approx(max(ps)) and f["p_holm"] == pytest.approx(max(multipletests(ps, method="holm")[1]))
    (g,) = run({0: (ones(10, 12), ones(0, 12)), 1: (ones(0, 12), ones(10, 12))})
    assert [t["verdict"] for t in g["per_seed"]] == ["supported", "contradicted"] and g["verdict"] == "not supported"
    (h,) = run({0: (ones(0, 12), ones(10, 12)), 1: (ones(0, 12), ones(9, 12))})
    assert h["verdict"] == "contradicted"
    (n,) = run({0: (ones(10, 12), ones(0, 12)), 1: (ones(10, 20), ones(0, 20))})
    assert n["n"] == 12, "the smallest n over seeds"
    (mixed,) = run({0: (ones(10, 12), ones(0, 12)), 1: ([0.5] * 12, [0.25] * 12), 2: (ones(9, 12), ones(0, 12))})
    assert mixed["test"] == "exact McNemar / paired bootstrap", "each test once, in seed order"


def test_the_verdict_rule_at_alpha(monkeypatch):
    """Holm-adjusted p below 0.05 supports; exactly 0.05 does not (one test: Holm leaves p as it is)."""

    def fixed(p, p_reverse):
        base = {"n": 4, "higher_acc": 0.5, "lower_acc": 0.5, "difference": 0.0, "test": "t", "discordant": ""}
        return lambda h, lo: {**base, "p": p, "p_reverse": p_reverse, "p_two_sided": 1.0}

    for (p, p_rev), verdict in {
        (0.05, 1.0): "not supported",
        (0.0499, 1.0): "supported",
        (1.0, 0.05): "not supported",
        (1.0, 0.0499): "contradicted",
        (0.01, 0.01): "supported",
    }.items():
        monkeypatch.setattr(fnd, "paired_test", fixed(p, p_rev))
        (f,) = run({0: ([1.0], [0.0])})
        assert f["verdict"] == verdict and f["per_seed"][0]["verdict"] == verdict, (p, p_rev)


def test_holm_runs_over_the_claims_of_every_pair_and_shape():
    rate = RateClaim("rate", "paper", defense="a", base="b", attack="pgd", rate=0.5)
    rows = [row("a"), row("b"), row("a", pair="q"), row("b", pair="q")]
    ex = {r.row_id: {"clean": ones(10, 10), "robust": ones(9 if r.defense == "a" else 1, 10)} for r in rows}
    items = findings(rows, ex, HL, [CLAIM, rate])
    raw = [t["p"] for f in items for t in f["per_seed"]]
    assert len(raw) == 4
    holm = multipletests(raw, method="holm")[1]
    assert [t["p_holm"] for f in items for t in f["per_seed"]] == pytest.approx(list(holm))
    rev = multipletests([t["p_reverse"] for f in items for t in f["per_seed"]], method="holm")[1]
    assert [t["p_reverse_holm"] for f in items for t in f["per_seed"]] == pytest.approx(list(rev))


def test_the_default_claims_are_the_seed_list():
    rows = [row("finetune", "fgsm"), row("scratch", "fgsm")]
    ex = {rows[0].row_id: {"robust": ones(10, 10)}, rows[1].row_id: {"robust": ones(0, 10)}}
    items = findings(rows, ex, HL)
    assert [f["claim"] for f in items] == [c.text for c in fnd.CLAIMS]
    assert items[0]["verdict"] == "supported"


# ---- claims of other shapes -----------------------------------------------------------------------------------
RATE = RateClaim("stops 90 %", "paper 2", defense="diff", base="student", attack="adaptive")


def rate_rows(per: dict, seeds=(0,), **kw) -> tuple[list[Row], dict]:
    rows, ex = [], {}
    for s in seeds:
        for (defense, attack), outcome in per.items():
            r = row(defense, attack, seed=s, **kw)
            rows.append(r)
            ex[r.row_id] = outcome
    return rows, ex


def test_a_rate_claims_tests_and_fields():
    clean, robust = ones(16, 20), ones(15, 20)
    base = ones(18, 20)
    rows, ex = rate_rows(
        {
            ("diff", "adaptive"): {"clean": clean, "robust": robust},
            ("student", "pgd"): {"clean": base, "robust": ones(0, 20)},
        }
    )
    (f,) = findings(rows, ex, HL, [RATE])
    (t,) = f["per_seed"]
    loss = np.asarray(base, float) - np.asarray(clean, float)
    p_rate = stats.binomtest(15, 16, 0.9, alternative="greater").pvalue
    p_loss = stats.ttest_1samp(loss, 0.1, alternative="less").pvalue
    rev_rate = stats.binomtest(15, 16, 0.9, alternative="less").pvalue
    rev_loss = stats.ttest_1samp(loss, 0.1, alternative="greater").pvalue
    assert t["p"] == pytest.approx(max(p_rate, p_loss)) and t["p_reverse"] == pytest.approx(
        min(1, 2 * min(rev_rate, rev_loss))
    )
    assert (t["seed"], t["n"], t["higher_acc"], t["lower_acc"]) == ("0", 16, 15 / 16, 0.9)
    assert t["difference"] == pytest.approx(15 / 16 - 0.9) and math.isnan(t["p_two_sided"])
    assert t["test"] == "exact binomial vs 90 % and t-test of the clean loss vs 10 points"
    assert t["discordant"] == "clean loss 10.0 points vs student on 20"
    assert f["higher"] == "diff defense rate (clean loss 10.0 points)" and f["lower"] == "threshold 90 %"
    assert (f["attack"], f["seeds"], f["eps_label"], f["claim"], f["source"]) == (
        "adaptive",
        1,
        "8/255",
        "stops 90 %",
        "paper 2",
    )
    assert (f["pair"], f["norm"], f["eps"]) == ("p", "linf", EPS)


def test_a_rate_claims_reverse_test_a_clear_loss():
    """Half the clean accuracy lost: the one-sided reverse t-test, doubled (Bonferroni over the two parts)."""
    base, clean = ones(20, 20), [1.0, 0.0] * 10
    rows, ex = rate_rows({("diff", "adaptive"): {"clean": clean, "robust": clean}, ("student", "pgd"): {"clean": base}})
    (t,) = findings(rows, ex, HL, [RATE])[0]["per_seed"]
    loss = np.asarray(base) - np.asarray(clean)
    rev_loss = stats.ttest_1samp(loss, 0.1, alternative="greater").pvalue
    assert rev_loss < 0.01 and t["p_reverse"] == pytest.approx(2 * rev_loss)
    assert (
        findings(rows, ex, HL, [RateClaim("l2", "s", defense="diff", base="student", attack="adaptive", norm="l2")])[0][
            "verdict"
        ]
        == "not in this run"
    ), "no L2 budget swept"


def test_a_rate_claims_rows_and_the_guarded_models_longest_clean_row():
    ex_d = {"clean": ones(4, 4), "robust": ones(4, 4)}
    rows = [
        row("diff", "adaptive"),
        row("diff", "adaptive", pair="q"),
        row("diff", "pgd"),
        row("diff", "adaptive", eps=2 * EPS),
        row("diff", "adaptive", threat="sanity"),
        row("diff", "adaptive", norm="l2"),
        row("other", "adaptive"),
        row("student", "pgd"),
        row("student", "fgsm"),
        row("student", "x", pair="q"),
        row("student", "y"),
    ]
    ex = {r.row_id: ex_d for r in rows[:7]}
    for r in rows[2:7]:  # the rows the claim must leave out: were one taken, its 1 clean example would show
        ex[r.row_id] = {"clean": ones(1, 4), "robust": ones(1, 4)}
    ex[rows[7].row_id] = {"clean": ones(2, 3)}
    ex[rows[8].row_id] = {"clean": ones(1, 6)}  # the longest: the loss is on its first 4 examples
    ex[rows[9].row_id] = {"clean": ones(8, 8)}  # another pair
    ex[rows[10].row_id] = {"clean": []}
    rows += [row("student", "z"), row("student", "w")]  # no outcomes; as long as the longest, after it
    ex[rows[12].row_id] = {"clean": ones(6, 6)}
    f, other_pair = findings(rows, ex, HL, [RATE])
    (t,) = f["per_seed"]
    assert t["discordant"] == "clean loss -75.0 points vs student on 4" and t["n"] == 4
    assert other_pair["per_seed"][0]["discordant"] == "clean loss 0.0 points vs student on 4", "its own pair's"


def test_a_rate_claim_without_its_rows_or_outcomes():
    both = {
        ("diff", "adaptive"): {"clean": ones(4, 4), "robust": ones(4, 4)},
        ("student", "pgd"): {"clean": ones(4, 4)},
    }
    rows, ex = rate_rows(both)
    assert findings(rows[:1], ex, HL, [RATE])[0]["verdict"] == "not in this run", "no guarded model"
    assert findings(rows[1:], ex, HL, [RATE])[0]["verdict"] == "not in this run"
    other_seed = rate_rows({("student", "pgd"): {"clean": ones(4, 4)}}, seeds=(1,))
    assert findings([rows[0], *other_seed[0]], {**ex, **other_seed[1]}, HL, [RATE])[0]["verdict"] == "not in this run"
    ex[rows[0].row_id] = {"clean": ones(4, 4), "robust": []}
    f = findings(rows, ex, HL, [RATE])[0]
    assert f["verdict"] == "not tested (no per-example outcomes for its rows)" and f["seeds"] == 0
    del ex[rows[0].row_id]
    assert findings(rows, ex, HL, [RATE])[0]["verdict"] == "not tested (no per-example outcomes for its rows)"


def test_a_constant_clean_loss_decides_the_loss_test_outright():
    """All examples lose the same: below the bound, the loss part holds outright; above it, it fails outright."""
    below, _ = rate_rows(
        {
            ("diff", "adaptive"): {"clean": ones(20, 20), "robust": ones(20, 20)},
            ("student", "pgd"): {"clean": ones(20, 20)},
        }
    )
    ex = {r.row_id: {"clean": ones(20, 20), "robust": ones(20, 20)} for r in below}
    (t,) = findings(below, ex, HL, [RATE])[0]["per_seed"]
    assert t["p"] == pytest.approx(stats.binomtest(20, 20, 0.9, alternative="greater").pvalue), "loss 0 < 10 points"
    strict = RateClaim("no loss", "s", defense="diff", base="student", attack="adaptive", max_loss=0.0)
    (t,) = findings(below, ex, HL, [strict])[0]["per_seed"]
    assert t["p"] == 1.0 and t["p_reverse"] == 1.0, "a loss of exactly the bound: no evidence either way"
    ex[below[1].row_id] = {"clean": ones(20, 20), "robust": []}
    ex[below[0].row_id] = {"clean": ones(0, 20), "robust": ones(0, 20)}
    (t,) = findings(below, ex, HL, [RATE])[0]["per_seed"]
    assert t["p_reverse"] == 0.0 and t["p"] == 1.0, "a loss of 100 points everywhere, no clean-correct example"
    assert t["n"] == 0 and math.isnan(t["higher_acc"])


def test_rate_claims_over_seeds():
    rows, ex = rate_rows(
        {
            ("diff", "adaptive"): {"clean": ones(10, 10), "robust": ones(10, 10)},
            ("student", "pgd"): {"clean": ones(9, 10)},
        },
        seeds=(0, 1),
    )
    ex[rows[2].row_id] = {"clean": ones(9, 10), "robust": ones(9, 10)}  # seed 1: right where the student is
    (f,) = findings(rows, ex, HL, [RATE])
    assert [t["seed"] for t in f["per_seed"]] == ["0", "1"] and f["seeds"] == 2
    assert f["higher"] == "diff defense rate (clean loss -5.0 points)", "the mean loss over seeds (-10 and 0)"
    assert [t["higher_acc"] for t in f["per_seed"]] == [1.0, 1.0]


def test_the_strongest_attack_per_model():
    claim = StrongestAttackClaim("uap", "r", attack="uap", attacks=("uap", "ssp", "l4a"), exclude=("teacher",))
    per = {
        "a": {"uap": ones(0, 12), "ssp": ones(9, 12), "l4a": ones(5, 12) + [1.0] * 28},
        "teacher": {"uap": ones(0, 12), "ssp": ones(12, 12)},
        "b": {"uap": ones(3, 12)},
    }
    rows, ex = [], {}
    for d, by in per.items():
        for a, robust in by.items():
            r = row(d, a)
            rows.append(r)
            ex[r.row_id] = {"robust": robust}
    extra = [
        row("a", "ssp", seed=1),
        row("a", "uap", pair="q"),
        row("a", "ssp", threat="sanity"),
        row("c", "uap"),
        row("c", "ssp"),
    ]
    ex.update(
        {
            extra[0].row_id: {"robust": ones(0, 12)},
            extra[1].row_id: {"robust": ones(0, 12)},
            extra[2].row_id: {"robust": ones(0, 12)},
            extra[3].row_id: {"robust": []},
            extra[4].row_id: {"robust": ones(1, 12)},
        }
    )
    extra.append(row("a", "ssp", threat="transfer"))  # matches, no outcome entry
    f, _ = findings(rows + extra, ex, HL, [claim])
    (t,) = f["per_seed"]
    assert t["seed"] == "a: l4a", "on the common 12 examples l4a (5) is stronger than ssp (9); not seed 1's ssp"
    assert t == {
        **paired_test(ones(5, 12) + [1.0] * 28, ones(0, 12)),
        "seed": "a: l4a",
        **{k: t[k] for k in ("p_holm", "p_reverse_holm", "verdict")},
    }
    assert (f["seeds"], f["higher"], f["lower"], f["attack"]) == (1, "the strongest other attack", "uap", "uap")
    assert f["pair"] == rows[0].pair and t["verdict"] == "supported"
    none = StrongestAttackClaim("x", "r", attack="uap", attacks=("uap",))
    assert findings(rows, ex, HL, [none])[0]["verdict"] == "not in this run", "no other attack"
    one = StrongestAttackClaim("x", "r", attack="uap", attacks=("uap", "ssp"), seed="1")
    assert findings(rows + extra, ex, HL, [one])[0]["verdict"] == "not in this run"


def test_the_strongest_attack_default_seed_and_budget():
    claim = StrongestAttackClaim("uap", "r", attack="uap", attacks=("uap", "ssp"), eps="16/255")
    rows = [row("a", "uap", eps=2 * EPS), row("a", "ssp", eps=2 * EPS), row("a", "uap"), row("a", "ssp")]
    ex = {r.row_id: {"robust": ones(0 if r.attack == "uap" else 6, 6)} for r in rows}
    ex[rows[3].row_id] = {"robust": ones(0, 6)}
    (f,) = findings(rows, ex, HL, [claim])
    assert f["eps_label"] == "16/255" and f["per_seed"][0]["discordant"] == "6 vs 0"


# ---- verdicts about methods and the ranking over seeds ------------------------------------------------------
def test_the_crossed_bootstrap_resamples_seeds_and_examples():
    with pytest.raises(
        ValueError, match=re_escape("crossed_bootstrap needs a non-empty (seeds, examples) matrix, got shape (0, 3)")
    ):
        sds.crossed_bootstrap(np.zeros((0, 3)))
    for bad in (np.zeros((2, 0)), np.zeros(3), np.zeros((1, 1, 1))):
        with pytest.raises(ValueError):
            sds.crossed_bootstrap(bad)
    assert np.array_equal(sds.crossed_bootstrap(np.full((2, 3), 0.25), 7), np.full(7, 0.25))
    seeds_only = sds.crossed_bootstrap(np.array([[0.0, 0.0], [1.0, 1.0]]), 4000)
    assert set(np.unique(seeds_only)) == {0.0, 0.5, 1.0} and np.mean(seeds_only == 0.5) == pytest.approx(0.5, abs=0.05)
    examples_only = sds.crossed_bootstrap(np.array([[0.0, 1.0, 1.0, 1.0]] * 3), 4000)
    assert examples_only.mean() == pytest.approx(0.75, abs=0.02) and examples_only.var() == pytest.approx(
        0.1875 / 4, rel=0.15
    )
    assert np.array_equal(sds.crossed_bootstrap([[0, 1], [1, 1]], 50), sds.crossed_bootstrap([[0, 1], [1, 1]], 50))
    assert not np.array_equal(
        sds.crossed_bootstrap([[0, 1], [1, 1]], 50), sds.crossed_bootstrap([[0, 1], [1, 1]], 50, 1)
    )
    assert len(sds.crossed_bootstrap([[0.5]])) == sds.RESAMPLES


def test_the_crossed_bootstrap_in_memory_blocks():
    wide = np.zeros((1, 1_000_001))
    wide[0, 0] = 1.0
    out = sds.crossed_bootstrap(wide, 3)  # one replicate per block
    assert out.shape == (3,) and np.all(out <= 1e-4) and np.all(out >= 0)


def method_sweep(acc: dict[str, list[int]], n: int = 8, attack: str = "pgd") -> tuple[list[Row], dict]:
    rows, ex = [], {}
    for d, by_seed in acc.items():
        for s, k in enumerate(by_seed):
            r = row(d, attack, seed=s)
            rows.append(r)
            ex[r.row_id] = {"robust": ones(k, n)}
    return rows, ex


def test_a_method_claim_over_seeds_and_examples():
    rows, ex = method_sweep({"a": [8, 7, 1], "b": [0, 0, 2]})
    (t,) = sds.method_claims(rows, ex, HL, [CLAIM])
    diff = np.array([ones(8, 8), ones(7, 8), ones(1, 8)]) - np.array([ones(0, 8), ones(0, 8), ones(2, 8)])
    dist = sds.crossed_bootstrap(diff)
    assert (t["claim"], t["pair"], t["eps"], t["seeds"], t["n"]) == (CLAIM, "p", EPS, 3, 8)
    assert t["difference"] == pytest.approx(diff.mean()) and t["seeds_with_sign"] == 2
    assert (t["ci_low"], t["ci_high"]) == pytest.approx((np.quantile(dist, 0.025), np.quantile(dist, 0.975)))
    assert t["p"] == pytest.approx((1 + (dist <= 0).sum()) / (dist.size + 1))
    assert t["p_reverse"] == pytest.approx((1 + (dist >= 0).sum()) / (dist.size + 1))
    assert t["p_holm"] == t["p"] and t["verdict"] == ("supported" if t["p"] < 0.05 else "not supported")


def test_method_claims_pair_seeds_and_examples_they_share():
    rows, ex = method_sweep({"a": [4, 4, 4], "b": [4, 4]})
    ex[rows[0].row_id] = {"robust": ones(4, 12)}  # seed 0 of a on 12 examples
    extra = [
        row("a", "pgd", seed=5, pair="q"),
        row("b", "pgd", seed=7, threat="sanity"),
        row("b", "fgsm", seed=2),
        row("b", seed=2, norm="l2"),
        row("b", seed=2, eps=2 * EPS),
        row("b", seed=3),
        row("a", seed=1, threat="sanity"),  # after a's seed 1: were it taken, a would lose 4 points there
    ]
    ex.update({r.row_id: {"robust": ones(4, 8)} for r in extra[:-2]})
    ex[extra[-1].row_id] = {"robust": ones(0, 8)}
    t, other_pair = sds.method_claims(rows + extra, ex, HL, [CLAIM])
    assert (
        other_pair["seeds"] == 0
        and t["seeds"] == 2
        and t["n"] == 8
        and t["difference"] == 0
        and t["seeds_with_sign"] == 0
    )
    assert t["p"] == 1.0 and t["p_reverse"] == 1.0 and t["verdict"] == "not supported"


def test_claim_test_orders_seeds_as_numbers():
    higher = {"10": ones(3, 4), "9": ones(2, 4), "-1": ones(4, 4)}
    lower = {"9": ones(1, 4), "-1": ones(0, 4), "10": ones(0, 4)}
    t = sds.claim_test(higher, lower)
    diff = np.array([[1.0] * 4, [0, 1.0, 0, 0], [1.0] * 3 + [0]])  # seeds -1, 9, 10
    dist = sds.crossed_bootstrap(diff)
    assert t["ci_low"] == np.quantile(dist, 0.025) and t["ci_high"] == np.quantile(dist, 0.975)
    assert t["p"] == (1 + (dist <= 0).sum()) / (dist.size + 1)
    mixed = sds.claim_test({"a": ones(1, 2), "b": ones(2, 2)}, {"b": ones(0, 2), "a": ones(0, 2)})
    assert mixed["seeds"] == 2 and mixed["n"] == 2


def test_method_claims_need_two_seeds_and_take_holm_over_the_tested(monkeypatch):
    rows, ex = method_sweep({"a": [8], "b": [0]})
    (one,) = sds.method_claims(rows, ex, HL, [CLAIM])
    assert one == {"claim": CLAIM, "pair": "p", "eps": EPS, "seeds": 1}
    more_lower, more_ex = method_sweep({"a": [8], "b": [0, 0]})
    assert sds.method_claims(more_lower, more_ex, HL, [CLAIM])[0] == {**one, "seeds": 1}, "the seeds both have"
    (l2,) = sds.method_claims(rows, ex, HL, [Claim("t", "s", "a", "b", "pgd", norm="l2")])
    assert math.isnan(l2["eps"]) and l2["seeds"] == 0, "no L2 budget swept"
    assert sds.method_claims(rows, None, HL, [CLAIM])[0]["seeds"] == 0
    fixed = iter(
        [
            {"p": 0.02, "p_reverse": 1.0},
            {"p": 0.04, "p_reverse": 1.0},
            {"p": 1.0, "p_reverse": 0.0499},
            {"p": 0.05, "p_reverse": 0.05},
        ]
    )
    monkeypatch.setattr(sds, "claim_test", lambda h, lo: dict(next(fixed)))
    rows, ex = method_sweep({"a": [8, 8], "b": [0, 0]})
    rows2, ex2 = method_sweep({"a": [8, 8], "b": [0, 0]}, attack="fgsm")
    claims = [CLAIM, Claim("f", "s", "a", "b", "fgsm"), CLAIM, Claim("g", "s", "a", "b", "none")]
    items = sds.method_claims(rows + rows2, {**ex, **ex2}, HL, claims)
    tested = items[:3]
    assert "p" not in items[3] and "verdict" not in items[3] and items[3]["seeds"] == 0
    assert [t["p_holm"] for t in tested] == pytest.approx([0.06, 0.08, 1.0])
    assert [t["p_reverse_holm"] for t in tested] == pytest.approx([1.0, 1.0, 0.0499 * 3])
    monkeypatch.setattr(sds, "claim_test", lambda h, lo: {"p": 0.05, "p_reverse": 0.0499})
    assert sds.method_claims(rows, ex, HL, [CLAIM])[0]["verdict"] == "contradicted"
    monkeypatch.setattr(sds, "claim_test", lambda h, lo: {"p": 0.0499, "p_reverse": 0.0499})
    assert sds.method_claims(rows, ex, HL, [CLAIM])[0]["verdict"] == "supported"
    monkeypatch.setattr(sds, "claim_test", lambda h, lo: {"p": 0.05, "p_reverse": 0.05})
    assert sds.method_claims(rows, ex, HL, [CLAIM])[0]["verdict"] == "not supported"


def test_method_claims_default_claims_and_their_budget():
    rows, ex = method_sweep({"finetune": [8, 8], "scratch": [0, 0]}, attack="fgsm")
    items = sds.method_claims(rows, ex, HL)
    pairwise = [c for c in fnd.CLAIMS if isinstance(c, Claim)]
    assert len(pairwise) < len(fnd.CLAIMS), "the seed list has claims of other shapes"
    assert [t["claim"] for t in items] == pairwise and items[0]["seeds"] == 2 and items[0]["p"] < 0.05
    text = sds.markdown(rows, ex, HL)  # the report of a run with several seeds and the default claims
    assert text.count("| ") > 0 and "not in this run" in text
    own = Claim("t", "s", "finetune", "scratch", "fgsm", eps="16/255")
    assert sds.method_claims(rows, ex, {}, [own])[0]["eps"] == pytest.approx(2 * EPS)
    assert sds.method_claims([], ex, HL, [own]) == []


def test_the_ranking_over_seeds():
    rows, ex = method_sweep({"a": [2, 4], "b": [8, 6], "c": [3, 3]}, attack="worst_case")
    ex[rows[0].row_id] = {"robust": ones(2, 8) + [1.0] * 4}  # a's seed 0 on 12 examples: cut to 8
    rows = [row("e", "pgd"), *rows, row("d", "worst_case", pair="q")]  # e first, without a worst case
    ex[rows[-1].row_id] = {"robust": ones(1, 8)}
    ranked = sds.ranking(rows, ex, HL)
    assert list(ranked) == ["p", "q"] and [e["defense"] for e in ranked["q"]] == ["d"]
    assert [e["defense"] for e in ranked["p"]] == ["b", "a", "c"], "best first; no worst-case row: not ranked"
    b = ranked["p"][0]
    matrix = np.array([ones(8, 8), ones(6, 8)])
    dist = sds.crossed_bootstrap(matrix)
    assert (b["seeds"], b["n"], b["mean"], b["per_seed"]) == (2, 8, pytest.approx(14 / 16), [1.0, 0.75])
    assert (b["ci_low"], b["ci_high"]) == (np.quantile(dist, 0.025), np.quantile(dist, 0.975))
    assert ranked["p"][1]["per_seed"] == [0.25, 0.5] and ranked["p"][1]["n"] == 8
    assert sds.ranking([row("a", "worst_case", norm="l2")], ex, HL) == {}, "no L-inf budget"
    assert sds.ranking([], None, HL) == {}
    assert sds.ranking(rows, None, HL) == {"p": [], "q": []}
    at = [row("a", "worst_case", eps=e) for e in (EPS, 2 * EPS, 3 * EPS)]
    ex_at = {r.row_id: {"robust": ones(round(r.eps / EPS), 4)} for r in at}
    assert sds.ranking(at, ex_at, {})["p"][0]["mean"] == 0.5, "the median budget without a headline"
    assert sds.ranking(at, ex_at, {"linf": 3 * EPS})["p"][0]["mean"] == 0.75
