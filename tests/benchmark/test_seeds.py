"""Verdicts about methods and the ranking over seeds (benchmark/seeds.py): the crossed bootstrap over seeds and
examples, on outcomes whose answer is known; the seeds and examples a claim pairs, Holm over the tested claims, the
ranking's entries. Some tests pin exact values found by mutation testing (`make mutate`, tests/mutation/mutate.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hand_rows import CLAIM, EPS, HL, ones, re_escape, row

from benchmark import findings as fnd
from benchmark import seeds as sds
from benchmark.findings import Claim, findings
from benchmark.records import Row
from benchmark.seeds import ONE_SEED, crossed_bootstrap, markdown, method_claims, ranking

HEADLINE = {"linf": 16 / 255}
PGD_CLAIM = Claim("a is more robust than b under pgd", "test", higher="a", lower="b", attack="pgd")


def _row(defense: str, seed: int, attack: str = "pgd") -> Row:
    return Row(pair="p", defense=defense, seed=seed, attack=attack, threat_model="white-box", norm="linf",
               eps=16 / 255, eps_label="16/255", row_id=f"p/{defense}/seed{seed}/{attack}")  # fmt: skip


def outcomes(n: int, accuracy: float, rng: np.random.Generator) -> list[float]:
    """n 0/1 outcomes, exactly round(accuracy * n) of them 1, in a random order."""
    k = round(accuracy * n)
    return rng.permutation([1.0] * k + [0.0] * (n - k)).tolist()


def sweep(accuracies: dict[str, list[float]], n: int = 1000, attack: str = "pgd") -> tuple[list[dict], dict]:
    """Rows and per-example outcomes: defense -> its robust accuracy in each seed (independent examples)."""
    rng = np.random.default_rng(0)
    rows, per_example = [], {}
    for defense, by_seed in accuracies.items():
        for seed, acc in enumerate(by_seed):
            row = _row(defense, seed, attack)
            rows.append(row)
            per_example[row.row_id] = {"robust": outcomes(n, acc, rng)}
    return rows, per_example


def test_the_interval_holds_the_seed_variance():
    examples = np.random.default_rng(1).integers(0, 2, size=500).astype(float)
    same = np.stack([examples] * 3)  # three seeds that agree on every example
    spread = same + np.array([[-0.2], [0.0], [0.2]])  # the same examples, seeds 0.4 apart
    width = lambda m: float(np.subtract(*np.quantile(crossed_bootstrap(m), [0.975, 0.025])))  # noqa: E731
    assert width(spread) > 2 * width(same)
    assert crossed_bootstrap(same).mean() == pytest.approx(examples.mean(), abs=0.01)


def test_seeds_that_disagree_give_no_verdict_about_the_method_though_each_seed_is_significant():
    rows, per_example = sweep({"a": [0.6, 0.3, 0.6], "b": [0.3, 0.6, 0.3]})
    per_seed = findings(rows, per_example, HEADLINE, [PGD_CLAIM])[0]["per_seed"]
    assert [t["verdict"] for t in per_seed] == ["supported", "contradicted", "supported"]
    (method,) = method_claims(rows, per_example, HEADLINE, [PGD_CLAIM])
    assert method["verdict"] == "not supported" and method["seeds_with_sign"] == 2
    assert method["ci_low"] < 0 < method["ci_high"]


def test_a_difference_every_seed_shows_is_supported_and_the_reverse_contradicted():
    rows, per_example = sweep({"a": [0.6, 0.55, 0.62], "b": [0.3, 0.32, 0.28]})
    (method,) = method_claims(rows, per_example, HEADLINE, [PGD_CLAIM])
    assert method["verdict"] == "supported" and method["seeds_with_sign"] == 3
    assert method["difference"] == pytest.approx(np.mean([0.3, 0.23, 0.34]), abs=1e-9)
    reverse = Claim("b > a", "test", higher="b", lower="a", attack="pgd")
    assert method_claims(rows, per_example, HEADLINE, [reverse])[0]["verdict"] == "contradicted"


def test_ranking_by_the_mean_over_seeds():
    rows, per_example = sweep({"a": [0.5, 0.5, 0.11], "b": [0.4, 0.4, 0.4]}, attack="worst_case")
    entries = ranking(rows, per_example, HEADLINE)["p"]
    assert [e["defense"] for e in entries] == ["b", "a"]  # a wins two seeds of three, b has the higher mean
    assert entries[1]["mean"] == pytest.approx(0.37) and entries[1]["per_seed"] == pytest.approx([0.5, 0.5, 0.11])
    assert entries[1]["ci_low"] < 0.37 < entries[1]["ci_high"]


def test_one_seed_says_the_verdict_is_about_one_model():
    rows, per_example = sweep({"a": [0.6], "b": [0.3]})
    text = markdown(rows, per_example, HEADLINE, [PGD_CLAIM])
    assert ONE_SEED in text
    rows, per_example = sweep({"a": [0.6, 0.6], "b": [0.3, 0.3]})
    text = markdown(rows, per_example, HEADLINE, [PGD_CLAIM])
    assert ONE_SEED not in text and "**supported**" in text


def test_bad_input():
    with pytest.raises(ValueError, match=r"\(seeds, examples\) matrix"):
        crossed_bootstrap(np.zeros(3))


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
