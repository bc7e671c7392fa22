"""The findings (benchmark/results/verdicts.py): one test and one verdict per claim, on hand-made per-example outcomes
whose answer is known: the random-effects test over seeds and examples, the paired t-test with one seed, the verdict's
two sides, Holm's correction over every claim of the run, the seeds for 80 % power, each seed's own interval, the
budgets a claim is tested at, and the claims read from the config. The reference values come from
benchmark.results.statistics (tested against textbook formulas in test_statistics.py), scipy and statsmodels called
directly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hand_rows import CLAIM, EPS, HL, ones, re_escape, row
from scipy import stats
from statsmodels.stats.multitest import multipletests

from attacks.errors import ConfigError
from benchmark.records import headline_eps
from benchmark.results import verdicts
from benchmark.results.claims import EACH, Claim, RateClaim, StrongestAttackClaim, claims_from_config, run_claims
from benchmark.results.statistics import random_effects_mean, seeds_for_power
from benchmark.results.verdicts import findings, markdown
from benchmark.runner.config import shipped_defenses


def run(by_seed: dict[int, tuple[list, list]], claims=(CLAIM,), pair: str = "p", per_example=None, extra=()):
    """Findings of claims a > b (attack pgd): one (a, b) pair of per-example outcomes per seed."""
    rows, ex = list(extra), {}
    for seed, (a, b) in by_seed.items():
        for d, robust in (("a", a), ("b", b)):
            r = row(d, seed=seed, pair=pair)
            rows.append(r)
            ex[r.row_id] = {"robust": robust}
    return findings(rows, ex if per_example is None else per_example, HL, list(claims))


def spread(k: int, n: int, rng_seed: int) -> list[float]:
    """n 0/1 outcomes with k ones in a seeded random order."""
    return np.random.default_rng(rng_seed).permutation(ones(k, n)).tolist()


def test_several_seeds_are_tested_over_seeds_and_examples():
    by_seed = {s: (spread(70 - 5 * s, 100, s), spread(40, 100, 10 + s)) for s in range(3)}
    (f,) = run(by_seed)
    d = np.array([np.asarray(a) - np.asarray(b) for a, b in by_seed.values()])
    want = random_effects_mean(d)
    assert f["test"] == verdicts.TEST_METHODS and (f["seeds"], f["n"]) == (3, 100)
    assert (f["difference"], f["ci_low"], f["ci_high"], f["p"]) == pytest.approx(
        (want["mean"], want["ci_low"], want["ci_high"], want["p"])
    )
    assert f["p_support"] == pytest.approx(want["p_above"]) and f["p_contra"] == pytest.approx(want["p_below"])
    assert f["verdict"] == "supported" and f["p_holm"] == pytest.approx(f["p"]), "one claim: Holm leaves p"
    assert f["seeds_needed"] == seeds_for_power(want)
    assert [t["seed"] for t in f["per_seed"]] == ["0", "1", "2"]
    for t, row_d in zip(f["per_seed"], d):
        one = random_effects_mean(row_d[None])
        assert (t["difference"], t["ci_low"], t["ci_high"], t["n"]) == pytest.approx(
            (one["mean"], one["ci_low"], one["ci_high"], 100)
        )


def test_seeds_that_disagree_give_no_verdict_though_each_seed_alone_is_clear():
    (f,) = run(
        {0: (ones(60, 100), ones(30, 100)), 1: (ones(30, 100), ones(60, 100)), 2: (ones(60, 100), ones(30, 100))}
    )
    assert f["verdict"] == "not supported" and f["ci_low"] < 0 < f["ci_high"]
    lows, highs = [t["ci_low"] for t in f["per_seed"]], [t["ci_high"] for t in f["per_seed"]]
    assert lows[0] > 0 and highs[1] < 0 and lows[2] > 0, "each seed's own interval excludes 0"
    assert "verdict" not in f["per_seed"][0], "a seed gets no verdict of its own"


def test_one_seed_is_the_paired_t_test_about_one_model_per_method():
    a, b = spread(60, 120, 1), spread(45, 120, 2)
    (f,) = run({0: (a, b)})
    assert f["test"] == verdicts.TEST_MODELS and f["seeds"] == 1 and f["seeds_needed"] is None
    want = stats.ttest_rel(a, b)
    assert f["p"] == pytest.approx(want.pvalue)
    assert (f["ci_low"], f["ci_high"]) == pytest.approx(tuple(want.confidence_interval()))


def test_the_verdict_has_two_sides_from_one_two_sided_test():
    (up,) = run({0: (ones(9, 10), ones(1, 10))})
    (down,) = run({0: (ones(1, 10), ones(9, 10))})
    (level,) = run({0: (ones(5, 10), ones(5, 10))})
    assert up["verdict"] == "supported" and down["verdict"] == "contradicted"
    assert up["p"] == pytest.approx(down["p"]), "the same two-sided p on either side"
    assert down["p_contra"] < down["p_support"]
    assert level["verdict"] == "not supported" and level["p"] == 1.0


def test_the_verdict_rule_at_alpha(monkeypatch):
    """Holm-adjusted p below 0.05 decides; exactly 0.05 does not (one claim: Holm leaves p as it is). The side is
    the one with the smaller one-sided p; a tie reads as the claimed side."""
    for (support, contra), verdict in {
        (0.025, 1.0): "not supported",
        (0.0249, 1.0): "supported",
        (1.0, 0.025): "not supported",
        (1.0, 0.0249): "contradicted",
        (0.01, 0.01): "supported",
    }.items():
        fixed = {"tests": [{"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0, "p": 1.0}], "p_support": support,
                 "p_contra": contra, "p": min(1.0, 2 * min(support, contra))}  # fmt: skip
        monkeypatch.setattr(verdicts, "claim_test", lambda parts, fixed=fixed: fixed)
        monkeypatch.setattr(verdicts, "seeds_for_power", lambda test: None)
        (f,) = run({0: ([1.0, 0.0], [0.0, 0.0])})
        assert f["verdict"] == verdict, (support, contra)


def test_holm_runs_over_every_claim_pair_and_direction_at_once():
    rate = RateClaim("rate", "paper", defense="a", base="b", attack="pgd", rate=0.5)
    reverse = Claim("b beats a", "paper", higher="b", lower="a", attack="pgd")
    rows = [row("a"), row("b"), row("a", pair="q"), row("b", pair="q")]
    ex = {r.row_id: {"clean": ones(20, 20), "robust": ones(15 if r.defense == "a" else 5, 20)} for r in rows}
    items = findings(rows, ex, HL, [CLAIM, reverse, rate])
    assert len(items) == 6
    raw = [f["p"] for f in items]
    assert [f["p_holm"] for f in items] == pytest.approx(list(multipletests(raw, method="holm")[1]))
    verdicts = [f["verdict"] for f in items]
    assert verdicts[:2] == ["supported", "contradicted"], "both directions in one family"


def test_holm_withholds_a_verdict_that_the_raw_p_would_pass():
    other = Claim("a beats b under fgsm", "paper", higher="a", lower="b", attack="fgsm")
    rows, ex = [], {}
    for attack in ("pgd", "fgsm"):
        for d, robust in (("a", ones(4, 20)), ("b", ones(0, 20))):
            r = row(d, attack)
            rows.append(r)
            ex[r.row_id] = {"robust": robust}
    items = findings(rows, ex, HL, [CLAIM, other])
    assert all(0.025 < f["p"] < 0.05 for f in items), [f["p"] for f in items]
    assert all(f["verdict"] == "not supported" for f in items)
    (alone,) = findings(rows[:2], ex, HL, [CLAIM])
    assert alone["verdict"] == "supported", "a single claim: no correction"


def test_only_the_examples_every_row_covers_are_compared():
    a, b = ones(20, 50), ones(10, 30)
    (f,) = run({0: (a, b), 1: (ones(20, 40), ones(5, 40))})
    assert f["n"] == 30 and f["seeds"] == 2
    assert f["test"] == verdicts.TEST_METHODS, "two seeds already make a test about the methods"
    d = np.array([np.asarray(a[:30]) - b, np.asarray(ones(20, 40)[:30]) - ones(5, 40)[:30]])
    assert f["difference"] == pytest.approx(d.mean())


def test_seeds_are_paired_in_numeric_order_and_only_where_both_defenses_ran():
    rows = [row("a", seed=s) for s in (10, 2, 3)] + [row("b", seed=s) for s in (2, 10, 4)]
    ex = {r.row_id: {"robust": ones(r.seed if r.defense == "a" else 1, 12)} for r in rows}
    (f,) = findings(rows, ex, HL, [CLAIM])
    assert [t["seed"] for t in f["per_seed"]] == ["2", "10"] and f["seeds"] == 2
    assert [t["difference"] for t in f["per_seed"]] == pytest.approx([1 / 12, 9 / 12])


def test_the_headline_budget_the_claims_own_or_each_of_the_run():
    rows = [row(d, eps=e) for d in "ab" for e in (EPS, 2 * EPS, 3 * EPS)]
    ex = {r.row_id: {"robust": ones(10 if r.defense == "a" else 0, 10)} for r in rows}
    (median,) = findings(rows, ex, headline_eps(rows, {}), [CLAIM])
    assert median["eps"] == pytest.approx(2 * EPS) and median["eps_label"] == "16/255"
    (own,) = findings(rows, ex, headline_eps(rows, {"linf": 2 * EPS}), [Claim("t", "s", "a", "b", "pgd", eps="24/255")])
    assert own["eps"] == pytest.approx(3 * EPS) and own["verdict"] == "supported"
    each = findings(rows, ex, HL, [Claim("t", "s", "a", "b", "pgd", eps=EACH)])
    assert [f["eps_label"] for f in each] == ["8/255", "16/255", "24/255"]
    (l2,) = findings(rows, ex, HL, [Claim("t", "s", "a", "b", "pgd", norm="l2")])
    assert math.isnan(l2["eps"]) and l2["verdict"] == "not in this run" and l2["seeds"] == 0 and "p" not in l2
    (none,) = findings(rows, ex, HL, [Claim("t", "s", "a", "b", "fgsm", eps=EACH)])
    assert none["verdict"] == "not in this run" and none["eps_label"] == "-"
    assert findings([], {}, HL, [CLAIM]) == [], "no rows, no pair"


def test_each_budget_of_a_claim_is_tested_on_its_own_rows():
    kept = {EPS: 8, 2 * EPS: 4}  # examples a keeps at each budget; b keeps 2 at both
    rows = [row(d, eps=e) for e in kept for d in "ab"]
    ex = {r.row_id: {"robust": ones(kept[r.eps] if r.defense == "a" else 2, 10)} for r in rows}
    each = findings(rows, ex, HL, [Claim("t", "s", "a", "b", "pgd", eps=EACH)])
    assert [f["difference"] for f in each] == pytest.approx([(kept[e] - 2) / 10 for e in kept])


def test_a_finding_names_the_claims_models_and_metric_and_leaves_them_blank_for_other_shapes():
    rate = RateClaim("rate", "paper", defense="a", base="b", attack="pgd", rate=0.5)
    strongest = StrongestAttackClaim("pgd", "paper", attack="pgd", attacks=("pgd", "fgsm"))
    rows = [row("a"), row("b")]
    ex = {r.row_id: {"clean": ones(20, 20), "robust": ones(15 if r.defense == "a" else 5, 20)} for r in rows}
    pair, hits, rated, untested = findings(rows, ex, HL, [CLAIM, Claim("h", "s", "b", "a", "pgd", metric="target_hit"),
                                                         rate, strongest])  # fmt: skip
    assert (pair["higher"], pair["lower"], pair["metric"]) == ("a", "b", "robust")
    assert (hits["higher"], hits["lower"], hits["metric"]) == ("b", "a", "target_hit")
    assert "p" in rated and (rated["higher"], rated["lower"], rated["metric"]) == ("", "", "robust")
    assert untested["verdict"] == "not in this run"
    assert (untested["higher"], untested["lower"], untested["metric"]) == ("", "", "robust")


def test_a_claim_on_targeted_hits_reads_them():
    rows = [row("freeze", "mimicry"), row("scratch", "mimicry")]
    ex = {rows[0].row_id: {"robust": ones(2, 20), "target_hit": ones(12, 20)},
          rows[1].row_id: {"robust": ones(8, 20), "target_hit": ones(2, 20)}}  # fmt: skip
    claim = Claim("hits", "s", "freeze", "scratch", "mimicry", metric="target_hit")
    (f,) = findings(rows, ex, HL, [claim])
    assert f["difference"] == pytest.approx(0.5) and f["metric"] == "target_hit"
    assert "targeted hits" in "\n".join(markdown([f]))
    (no,) = findings(rows, {r.row_id: {"robust": ones(1, 20)} for r in rows}, HL, [claim])
    assert no["verdict"].startswith("not tested")


def test_without_per_example_outcomes_a_claim_is_not_tested():
    a, b = ones(9, 10), ones(1, 10)
    (f,) = run({0: (a, b)}, per_example={})
    assert f["verdict"] == "not tested (no per-example outcomes for its rows)" and f["per_seed"] == []
    (g,) = findings([row("a"), row("b")], None, HL, [CLAIM])
    assert g["verdict"].startswith("not tested")
    ex = {row("a").row_id: {"robust": a}, row("b").row_id: {"robust": []}}
    assert findings([row("a"), row("b")], ex, HL, [CLAIM])[0]["verdict"].startswith("not tested")


def test_the_markdown_says_the_test_the_family_and_the_seeds_a_claim_needs():
    by_seed = {s: (spread(52, 100, s), spread(50, 100, 20 + s)) for s in range(3)}
    items = run(by_seed) + run({0: (ones(9, 10), ones(1, 10))}, pair="q")
    text = "\n".join(markdown(items))
    assert "random-effects model" in text and "one family" in text and "paired t-test" in text
    assert "more than 20" in text, "a tiny difference needs more seeds than the table names"
    assert "Each seed's difference" in text and "| 2 |" in text
    assert "No rows to test." in "\n".join(markdown([]))


def test_claims_from_the_config_and_their_errors():
    got = claims_from_config(
        [
            {"text": "t", "source": "s", "higher": "a", "lower": "b", "attack": "x", "eps": 0.5},
            {"text": "u", "source": "s", "higher": "a", "lower": "b", "attack": "x", "norm": "l2"},
            {"text": "v", "source": "s", "higher": "a", "lower": "b", "attack": "x", "metric": "target_hit"},
        ]
    )
    assert got == [Claim("t", "s", "a", "b", "x", eps="0.5"), Claim("u", "s", "a", "b", "x", norm="l2"),
                   Claim("v", "s", "a", "b", "x", metric="target_hit")]  # fmt: skip
    keys = "report.claims[1] must be a mapping with keys text, source, higher, lower, attack, norm, eps, metric, order"
    full = {"text": "t", "source": "s", "higher": "a", "lower": "b", "attack": "x"}
    for bad in ("text", {**full, "other": 1}, {k: v for k, v in full.items() if k != "source"}):
        with pytest.raises(ConfigError, match=re_escape(keys + " (norm, eps, metric, order optional)")):
            claims_from_config([full, bad])
    # a rate claim (an entry with `defense`), and a defense config's claims, named as such in the errors
    rate = {"text": "r", "source": "s", "defense": "a", "base": "b", "attack": "x", "max_loss": 0.2, "order": 5}
    assert claims_from_config([rate]) == [RateClaim("r", "s", "a", "b", "x", max_loss=0.2, order=5)]
    keys = "defense.a.claims[0] must be a mapping with keys text, source, defense, base, attack, rate, max_loss, norm"
    with pytest.raises(ConfigError, match=re_escape(keys + ", eps, order (rate, max_loss, norm, eps, order optional)")):
        claims_from_config([{**rate, "higher": "a"}], "defense.a.claims")
    with pytest.raises(ConfigError, match=re_escape("defense.a.claims[0].rate must be a number, got 'most'")):
        claims_from_config([{**rate, "rate": "most"}], "defense.a.claims")
    with pytest.raises(ConfigError, match=re_escape("report.claims[0].norm 'l1'; valid: l2, linf")):
        claims_from_config([{**full, "norm": "l1"}])
    with pytest.raises(ConfigError, match=re_escape("report.claims[0].metric 'x'; valid: robust, target_hit")):
        claims_from_config([{**full, "metric": "x"}])
    assert claims_from_config([]) == []


def test_the_shipped_claims_are_each_defense_configs_in_their_order():
    claims = run_claims(shipped_defenses())
    rows = [row("finetune", "fgsm"), row("scratch", "fgsm")]
    ex = {rows[0].row_id: {"robust": ones(10, 10)}, rows[1].row_id: {"robust": ones(0, 10)}}
    items = findings(rows, ex, HL, claims)
    assert [f["claim"] for f in items] == [c.text for c in claims]
    assert items[0]["verdict"] == "supported"
    assert [c.order for c in claims] == sorted(c.order for c in claims)
    transfer = next(c for c in claims if getattr(c, "attack", "") == "transfer_pgd_linf")
    assert (transfer.higher, transfer.lower) == ("scratch", "finetune"), "lower robust accuracy for finetune"
    mimicry = [c for c in claims if c.attack.startswith("mimicry")]
    assert {(c.higher, c.lower, c.metric, c.eps) for c in mimicry} == {("freeze", "scratch", "target_hit", EACH)}


def test_a_runs_claims_are_its_defenses_and_those_about_attacks_in_their_order():
    from benchmark.results.claims import ATTACK_CLAIMS

    mine = {"text": "m", "source": "s", "higher": "mine", "lower": "finetune", "attack": "fgsm"}
    defenses = {"mine": {"family": "other", "claims": [mine, {**mine, "text": "first", "order": 0}]},
                "finetune": {"family": "modes", "claims": []}}  # fmt: skip
    assert [c.text for c in run_claims(defenses)] == ["first", *(c.text for c in ATTACK_CLAIMS), "m"]
    with pytest.raises(ConfigError, match=re_escape("defense.mine.claims[0].norm 'l1'; valid: l2, linf")):
        run_claims({"mine": {"family": "other", "claims": [{**mine, "norm": "l1"}]}})


def test_a_p_value_is_never_printed_on_the_other_side_of_alpha():
    from benchmark.results.verdicts import p_str

    assert [p_str(x) for x in (0.0496, 0.04996, 0.0504, 0.05, 0.1234, 0.00012, 5e-5, None)] == [
        "0.0496", "0.04996", "0.05", "0.05", "0.12", "0.00012", "<0.0001", "-"]  # fmt: skip
