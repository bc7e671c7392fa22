"""Findings: paired tests of the papers' claims on hand-made per-example outcomes whose answer is known."""

from __future__ import annotations

import statistics

import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from attacks.errors import ConfigError
from benchmark.findings import CLAIMS, Claim, claims_from_config, findings, markdown
from benchmark.records import Row
from benchmark.stats import t_interval

HEADLINE = {"linf": 16 / 255, "l2": 1.0}
CLAIM = Claim("a is more robust than b under pgd", "test", higher="a", lower="b", attack="pgd")


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


def run(pairs_of_outcomes: dict[tuple[str, int], tuple[list[float], list[float]]], claims=(CLAIM,), **kw):
    """Rows and per-example data for claims a > b (attack pgd), one (a, b) outcome pair per (attack, seed)."""
    rows, per_example = [], {}
    for (attack, seed), (a, b) in pairs_of_outcomes.items():
        for defense, robust in (("a", a), ("b", b)):
            row = _row(defense, attack, seed)
            rows.append(row)
            per_example[row.row_id] = {"clean": [1.0] * len(robust), "robust": robust}
    return findings(rows, per_example, HEADLINE, list(claims), **kw)


def test_a_clearly_better_defense_is_supported_by_a_one_sided_exact_mcnemar():
    (f,) = run({("pgd", 0): outcomes(50, 30, 5, 15)})
    assert f["verdict"] == "supported" and f["test"] == "exact McNemar"
    (t,) = f["per_seed"]
    assert t["p"] == pytest.approx(stats.binomtest(30, 35, 0.5, alternative="greater").pvalue)
    assert t["p_two_sided"] == pytest.approx(stats.binomtest(30, 35, 0.5).pvalue), "statsmodels' exact McNemar"
    assert t["n"] == 100 and f["difference"] == pytest.approx(0.25)
    assert f["higher_acc"] == pytest.approx(0.80) and f["lower_acc"] == pytest.approx(0.55)


def test_equal_defenses_are_not_supported():
    a, _ = outcomes(40, 20, 0, 40)
    (f,) = run({("pgd", 0): (a, list(a))})
    assert f["verdict"] == "not supported" and f["p"] == 1.0 and f["difference"] == 0


def test_a_reversed_difference_contradicts_the_claim():
    (f,) = run({("pgd", 0): outcomes(50, 4, 30, 16)})
    assert f["verdict"] == "contradicted"
    assert f["per_seed"][0]["p_reverse"] == pytest.approx(stats.binomtest(4, 34, 0.5, alternative="less").pvalue)
    assert f["p"] > 0.99


def test_holm_withholds_a_verdict_that_the_raw_p_would_pass():
    # Five discordant examples, all for a: one-sided p = 0.5 ** 5 = 0.031 < 0.05 for each of two claims; Holm
    # multiplies the smaller by two (0.0625), so neither is supported.
    other = Claim("a is more robust than b under fgsm", "test", higher="a", lower="b", attack="fgsm")
    items = run({("pgd", 0): outcomes(60, 5, 0, 35), ("fgsm", 0): outcomes(60, 5, 0, 35)}, claims=(CLAIM, other))
    for f in items:
        assert f["p"] == pytest.approx(0.5**5) and f["p"] < 0.05
        assert f["p_holm"] == pytest.approx(2 * 0.5**5)
        assert f["verdict"] == "not supported"
    (alone,) = run({("pgd", 0): outcomes(60, 5, 0, 35)})
    assert alone["verdict"] == "supported", "a single claim: no correction"


def test_draw_fractions_use_a_paired_bootstrap():
    better = [0.875, 0.75, 1.0, 0.625] * 25
    worse = [0.25, 0.375, 0.5, 0.125] * 25
    (f,) = run({("pgd", 0): (better, worse)})
    assert f["test"] == "paired bootstrap" and f["verdict"] == "supported"
    assert f["difference"] == pytest.approx(statistics.mean(better) - statistics.mean(worse))
    (g,) = run({("pgd", 0): (better, list(better))})
    assert g["test"] == "paired bootstrap" and g["verdict"] == "not supported" and g["p"] == 1.0
    (h,) = run({("pgd", 0): (worse, better)})
    assert h["verdict"] == "contradicted"
    again = run({("pgd", 0): ([0.5, 0.625, 0.375] * 10, [0.5, 0.5, 0.375] * 10)})
    assert again[0]["p"] == run({("pgd", 0): ([0.5, 0.625, 0.375] * 10, [0.5, 0.5, 0.375] * 10)})[0]["p"], "seeded"


def test_only_the_examples_both_rows_cover_are_compared():
    a, b = outcomes(20, 10, 0, 20)
    (f,) = run({("pgd", 0): (a + [0.0] * 50, b[:30])})  # a on 100 examples, b on its first 30
    assert f["n"] == 30
    assert f["higher_acc"] == pytest.approx(statistics.mean(a[:30]))


def test_every_seed_must_support_the_claim():
    discordant = [(25, 2), (15, 2), (10, 1)]  # p far apart: Holm's steps differ from Bonferroni's
    seeds = {("pgd", s): outcomes(40, b, c, 60 - b - c) for s, (b, c) in enumerate(discordant)}
    (f,) = run(seeds)
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
    (g,) = run(seeds)
    assert g["verdict"] == "not supported"
    assert [t["verdict"] for t in g["per_seed"]] == ["supported", "not supported", "supported"]
    assert "Per seed:" in "\n".join(markdown([g]))


def test_a_claim_without_rows_is_not_in_this_run():
    items = run({("pgd", 0): outcomes(50, 30, 5, 15)}, claims=CLAIMS)
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
