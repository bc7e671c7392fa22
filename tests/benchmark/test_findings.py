"""The findings (benchmark/findings.py): paired tests of the papers' claims on hand-made per-example outcomes whose
answer is known; the claims read from the config, the rows of a claim, the fields of a finding, the verdict rule over
seeds and Holm's correction over every claim. The reference values come from scipy and statsmodels called directly.
Some tests pin exact values found by mutation testing (`make mutate`, tests/mutation/mutate.py).
"""

from __future__ import annotations

import math
import statistics

import pytest
from hand_rows import CLAIM, EPS, HL, ones, re_escape, row
from scipy import stats
from statsmodels.stats.multitest import multipletests

from attacks.errors import ConfigError
from benchmark import findings as fnd
from benchmark.claims import RateClaim
from benchmark.findings import CLAIMS, Claim, claims_from_config, findings, markdown
from benchmark.records import Row
from benchmark.stats import t_interval

HEADLINE = {"linf": 16 / 255, "l2": 1.0}
PGD_CLAIM = Claim("a is more robust than b under pgd", "test", higher="a", lower="b", attack="pgd")


def _row(defense: str, attack: str = "pgd", seed: int = 0, eps: float = 16 / 255, pair: str = "p") -> Row:
    label = f"{round(eps * 255):g}/255"
    return Row(
        pair=pair,
        defense=defense,
        seed=seed,
        attack=attack,
        threat_model="white-box",
        norm="linf",
        eps=eps,
        eps_label=label,
        row_id=f"{pair}/{defense}/seed{seed}/{attack}/linf/{label}",
    )


def outcomes(both: int, only_a: int, only_b: int, neither: int) -> tuple[list[float], list[float]]:
    """0/1 robust outcomes of a and b with the given concordant and discordant counts."""
    a = [1.0] * both + [1.0] * only_a + [0.0] * only_b + [0.0] * neither
    b = [1.0] * both + [0.0] * only_a + [1.0] * only_b + [0.0] * neither
    return a, b


def judge(pairs_of_outcomes: dict[tuple[str, int], tuple[list[float], list[float]]], claims=(PGD_CLAIM,), **kw):
    """Rows and per-example data for claims a > b (attack pgd), one (a, b) outcome pair per (attack, seed)."""
    rows, per_example = [], {}
    for (attack, seed), (a, b) in pairs_of_outcomes.items():
        for defense, robust in (("a", a), ("b", b)):
            row = _row(defense, attack, seed)
            rows.append(row)
            per_example[row.row_id] = {"clean": [1.0] * len(robust), "robust": robust}
    return findings(rows, per_example, HEADLINE, list(claims), **kw)


def test_a_clearly_better_defense_is_supported_by_a_one_sided_exact_mcnemar():
    (f,) = judge({("pgd", 0): outcomes(50, 30, 5, 15)})
    assert f["verdict"] == "supported" and f["test"] == "exact McNemar"
    (t,) = f["per_seed"]
    assert t["p"] == pytest.approx(stats.binomtest(30, 35, 0.5, alternative="greater").pvalue)
    assert t["p_two_sided"] == pytest.approx(stats.binomtest(30, 35, 0.5).pvalue), "statsmodels' exact McNemar"
    assert t["n"] == 100 and f["difference"] == pytest.approx(0.25)
    assert f["higher_acc"] == pytest.approx(0.80) and f["lower_acc"] == pytest.approx(0.55)


def test_equal_defenses_are_not_supported():
    a, _ = outcomes(40, 20, 0, 40)
    (f,) = judge({("pgd", 0): (a, list(a))})
    assert f["verdict"] == "not supported" and f["p"] == 1.0 and f["difference"] == 0


def test_a_reversed_difference_contradicts_the_claim():
    (f,) = judge({("pgd", 0): outcomes(50, 4, 30, 16)})
    assert f["verdict"] == "contradicted"
    assert f["per_seed"][0]["p_reverse"] == pytest.approx(stats.binomtest(4, 34, 0.5, alternative="less").pvalue)
    assert f["p"] > 0.99


def test_holm_withholds_a_verdict_that_the_raw_p_would_pass():
    # Five discordant examples, all for a: one-sided p = 0.5 ** 5 = 0.031 < 0.05 for each of two claims; Holm
    # multiplies the smaller by two (0.0625), so neither is supported.
    other = Claim("a is more robust than b under fgsm", "test", higher="a", lower="b", attack="fgsm")
    items = judge({("pgd", 0): outcomes(60, 5, 0, 35), ("fgsm", 0): outcomes(60, 5, 0, 35)}, claims=(PGD_CLAIM, other))
    for f in items:
        assert f["p"] == pytest.approx(0.5**5) and f["p"] < 0.05
        assert f["p_holm"] == pytest.approx(2 * 0.5**5)
        assert f["verdict"] == "not supported"
    (alone,) = judge({("pgd", 0): outcomes(60, 5, 0, 35)})
    assert alone["verdict"] == "supported", "a single claim: no correction"


def test_draw_fractions_use_a_paired_bootstrap():
    better = [0.875, 0.75, 1.0, 0.625] * 25
    worse = [0.25, 0.375, 0.5, 0.125] * 25
    (f,) = judge({("pgd", 0): (better, worse)})
    assert f["test"] == "paired bootstrap" and f["verdict"] == "supported"
    assert f["difference"] == pytest.approx(statistics.mean(better) - statistics.mean(worse))
    (g,) = judge({("pgd", 0): (better, list(better))})
    assert g["test"] == "paired bootstrap" and g["verdict"] == "not supported" and g["p"] == 1.0
    (h,) = judge({("pgd", 0): (worse, better)})
    assert h["verdict"] == "contradicted"
    again = judge({("pgd", 0): ([0.5, 0.625, 0.375] * 10, [0.5, 0.5, 0.375] * 10)})
    assert again[0]["p"] == judge({("pgd", 0): ([0.5, 0.625, 0.375] * 10, [0.5, 0.5, 0.375] * 10)})[0]["p"], "seeded"


def test_only_the_examples_both_rows_cover_are_compared():
    a, b = outcomes(20, 10, 0, 20)
    (f,) = judge({("pgd", 0): (a + [0.0] * 50, b[:30])})  # a on 100 examples, b on its first 30
    assert f["n"] == 30
    assert f["higher_acc"] == pytest.approx(statistics.mean(a[:30]))


def test_every_seed_must_support_the_claim():
    discordant = [(25, 2), (15, 2), (10, 1)]  # p far apart: Holm's steps differ from Bonferroni's
    seeds = {("pgd", s): outcomes(40, b, c, 60 - b - c) for s, (b, c) in enumerate(discordant)}
    (f,) = judge(seeds)
    assert f["verdict"] == "supported" and f["seeds"] == 3
    diffs = [t["difference"] for t in f["per_seed"]]
    assert f["difference"] == pytest.approx(statistics.mean(diffs))
    assert (f["difference_ci_low"], f["difference_ci_high"]) == pytest.approx(t_interval(diffs))
    low, high = stats.t.interval(0.95, 2, loc=statistics.mean(diffs), scale=stats.sem(diffs))
    assert (f["difference_ci_low"], f["difference_ci_high"]) == pytest.approx((low, high))
    holm = multipletests([t["p"] for t in f["per_seed"]], method="holm")[1]
    assert [t["p_holm"] for t in f["per_seed"]] == pytest.approx(list(holm)), "Holm over claims x seeds"
    assert len(set(holm)) == 3, "the three p differ, so Holm differs from Bonferroni here"

    seeds[("pgd", 1)] = outcomes(40, 2, 2, 56)  # one seed without a difference
    (g,) = judge(seeds)
    assert g["verdict"] == "not supported"
    assert [t["verdict"] for t in g["per_seed"]] == ["supported", "not supported", "supported"]
    assert "Per seed:" in "\n".join(markdown([g]))


def test_a_claim_without_rows_is_not_in_this_run():
    items = judge({("pgd", 0): outcomes(50, 30, 5, 15)}, claims=CLAIMS)
    assert {f["verdict"] for f in items} == {"not in this run"}, "the seed claims name other defenses"
    assert len(items) == len(CLAIMS)
    text = "\n".join(markdown(items))
    assert text.count("not in this run") == len(CLAIMS)


def test_the_seed_claims_find_their_rows():
    rows, per_example = [], {}
    a, b = outcomes(50, 30, 5, 15)
    pairwise = [c for c in CLAIMS if isinstance(c, Claim)]  # the other shapes: tests/benchmark/test_claims.py
    for claim in pairwise:
        for defense, robust in ((claim.higher, a), (claim.lower, b)):
            row = _row(defense, claim.attack)
            if row.row_id not in per_example:
                rows.append(row)
                per_example[row.row_id] = {"clean": [1.0] * 100, "robust": robust}
    items = findings(rows, per_example, HEADLINE, pairwise)
    assert all(f["per_seed"] for f in items), [f["claim"] for f in items if not f["per_seed"]]
    transfer = next(f for f in items if f["attack"] == "transfer_pgd_linf")
    assert (transfer["higher"], transfer["lower"]) == ("scratch", "finetune"), "lower robust accuracy for finetune"


def test_claims_from_the_config():
    (claim,) = claims_from_config([{"text": "t", "source": "s", "higher": "a", "lower": "b", "attack": "fgsm"}])
    assert claim == Claim("t", "s", "a", "b", "fgsm")
    with pytest.raises(ConfigError, match="keys text, source, higher, lower, attack, norm, eps"):
        claims_from_config([{"text": "t", "higher": "a"}])
    with pytest.raises(ConfigError, match="valid: l2, linf"):
        claims_from_config([{"text": "t", "source": "s", "higher": "a", "lower": "b", "attack": "x", "norm": "l1"}])
    eight = Claim("t", "s", "a", "b", "pgd", eps="8/255")
    rows = [_row("a", eps=8 / 255), _row("b", eps=8 / 255)]
    a, b = outcomes(10, 10, 0, 0)
    per_example = {rows[0].row_id: {"robust": a}, rows[1].row_id: {"robust": b}}
    (f,) = findings(rows, per_example, HEADLINE, [eight])
    assert f["verdict"] == "supported" and f["eps_label"] == "8/255"


# ---- findings -------------------------------------------------------------------------------------------------
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
