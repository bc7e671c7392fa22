"""The findings' claims of other shapes (benchmark/claims.py): paper 2's rate at a clean-accuracy cost, and "attack X
is the strongest on every model", tested per example and entered into the findings' Holm family and table: their rows,
tests and fields, over seeds. The reference values come from scipy called directly. Some tests pin exact values found
by mutation testing (`make mutate`, tests/mutation/mutate.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hand_rows import EPS, HL, ones, row
from scipy import stats

from benchmark import findings as fnd
from benchmark.claims import RateClaim, StrongestAttackClaim
from benchmark.findings import findings
from benchmark.records import Row
from benchmark.stats import paired_test

SIXTEEN = 16 / 255
HEADLINE = {"linf": SIXTEEN}


def _row(defense: str, attack: str, row_id: str, seed: int = 0) -> Row:
    return Row(pair="p", defense=defense, seed=seed, attack=attack, threat_model="white-box", norm="linf", eps=SIXTEEN,
               row_id=row_id)  # fmt: skip


def _outcomes(clean: int, robust: int, n: int = 200) -> dict:
    return {"clean": [1.0] * clean + [0.0] * (n - clean), "robust": [1.0] * robust + [0.0] * (n - robust)}


RATE = RateClaim("stops 90 %", "paper 2", defense="diff", base="student", attack="adaptive")


def _rate_run(clean_def: int, robust_def: int, clean_base: int = 180):
    rows = [_row("diff", "adaptive", "d"), _row("student", "pgd", "s")]
    per_example = {"d": _outcomes(clean_def, robust_def), "s": _outcomes(clean_base, 0)}
    return fnd.findings(rows, per_example, HEADLINE, [RATE])[0]


def test_a_high_rate_at_a_small_clean_loss_supports_the_rate_claim():
    f = _rate_run(clean_def=176, robust_def=174)  # 174 of 176 defended (98.9 %); loss 2 points of 200
    assert f["verdict"] == "supported" and f["higher_acc"] == pytest.approx(174 / 176)
    assert "clean loss 2.0 points" in f["higher"]


def test_a_rate_far_below_the_threshold_contradicts_it():
    f = _rate_run(clean_def=176, robust_def=88)  # half defended
    assert f["verdict"] == "contradicted" and f["difference"] == pytest.approx(0.5 - 0.9)


def test_a_large_clean_loss_alone_withholds_support():
    f = _rate_run(clean_def=120, robust_def=120, clean_base=180)  # every input stopped, but 30 points lost
    assert f["verdict"] != "supported" and f["per_seed"][0]["higher_acc"] == 1.0


def _robust(k: int, n: int = 100) -> dict:
    return {"clean": [1.0] * n, "robust": [1.0] * k + [0.0] * (n - k)}


def test_the_strongest_attack_is_computed_per_model_and_must_win_on_every_one():
    claim = StrongestAttackClaim("uap strongest", "readme", attack="uap", attacks=("uap", "ssp", "l4a"))
    rows, per_example = [], {}
    for model, (uap, ssp, l4a) in {"a": (20, 60, 70), "b": (50, 30, 80)}.items():
        for attack, k in (("uap", uap), ("ssp", ssp), ("l4a", l4a)):
            rows.append(_row(model, attack, f"{model}/{attack}"))
            per_example[f"{model}/{attack}"] = _robust(k)
    f = fnd.findings(rows, per_example, HEADLINE, [claim])[0]
    by_model = {t["seed"]: t for t in f["per_seed"]}
    assert set(by_model) == {"a: ssp", "b: ssp"}, "the strongest other attack, named per model"
    assert by_model["a: ssp"]["verdict"] == "supported"  # 20 vs 60 robust: uap is stronger on a
    assert by_model["b: ssp"]["verdict"] == "contradicted"  # 50 vs 30: ssp is stronger on b
    assert f["verdict"] == "not supported"


def test_the_extra_claims_are_in_the_seed_list_and_find_nothing_without_their_rows():
    kinds = {type(c).__name__ for c in fnd.CLAIMS}
    assert {"RateClaim", "StrongestAttackClaim", "Claim"} <= kinds
    f = fnd.findings([_row("x", "pgd", "x")], {"x": _robust(5)}, HEADLINE, [RATE])[0]
    assert f["verdict"] == "not in this run"


# ---- claims of other shapes -----------------------------------------------------------------------------------
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
