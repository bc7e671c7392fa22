"""The lookups of a pair's results (benchmark/results/files.py) on hand-made rows: numbers read from results.csv, the
values per defense, attack and budget, the clean accuracy per seed, the order the leaderboard ranks in. Some tests pin
exact values found by mutation testing (`make mutate`, tests/mutation/mutate.py).
"""

from __future__ import annotations

import math
import statistics

import pytest
from leaderboard_rows import EPS, HL, row

from benchmark.results.files import PairResults, number


# ---- results.py ------------------------------------------------------------------------------------------------
def test_number():
    assert [number(v) for v in (None, "", "None", "nan", math.nan, "x")] == [None] * 6
    assert number("0.5") == 0.5 and number(2) == 2.0 and number(0) == 0.0 and number("-1") == -1.0


def test_pair_results_lookups():
    rows = [
        row("a", "pgd", 0.25, seed=0),
        row("a", "pgd", "nan", seed=1),
        row("a", "pgd", 0.5, seed=2, eps=EPS + 5e-10),
        row("a", "pgd", 0.75, eps=2 * EPS),
        row("a", "pgd", 0.1, norm="l2"),
        row("a", "sanity_x", 0.0, threat="sanity"),
        row("b", "fgsm", 0.3, clean=0.6, n=4),
        row("b", "pgd", 0.2, clean=0.8, n=8),
        row("b", "x", 0.2, clean=0.7, n=8),
        row("b", "pgd", 0.2, seed=1, clean=None, n=20),
        row("b", "pgd", 0.2, seed=1, clean=0.5, n=10),
    ]
    res = PairResults(rows)
    assert [r.attack for r in res.sanity] == ["sanity_x"] and len(res.rows) == 10 and res.first is rows[0]
    assert res.defenses == ["a", "b"] and res.attacks == [
        ("pgd", "linf"),
        ("pgd", "l2"),
        ("fgsm", "linf"),
        ("x", "linf"),
    ]
    assert res.values("a", "pgd", "linf", EPS) == [0.25, 0.5], "absent and NaN values left out; eps to 1e-9"
    assert res.values("a", "pgd", "linf", EPS, "clean_acc") == [0.9, 0.9, 0.9]
    assert res.values("b", "pgd", "l2", EPS) == [] and res.values("a", "fgsm", "linf", EPS) == []
    assert res.clean_by_seed("b") == {"0": 0.8}, "the row with the most examples; seed 1's has no clean accuracy"
    assert res.clean("b") == [0.8] and res.clean("a") == [0.9, 0.9, 0.9]
    assert res.clean_cost("b", base="a") == pytest.approx([-0.1]) and res.clean_cost("a") == []
    assert res.epsilons("pgd", "linf") == [round(e, 10) for e in (EPS, EPS + 5e-10, 2 * EPS)]
    assert res.epsilons("pgd", "l2") == [round(EPS, 10)]
    assert res.whitebox_at("a", "linf", EPS) and not res.whitebox_at("a", "linf", 3 * EPS)
    assert not res.whitebox_at("b", "l2", EPS) and not res.whitebox_at("c", "linf", EPS)
    assert not PairResults([row("a", threat="transfer")]).whitebox_at("a", "linf", EPS)


def test_clean_by_seed_keeps_the_first_of_equal_sizes_and_fields_per_seed():
    res = PairResults([row("a", clean=0.5, n=10), row("a", clean=0.7, n=10), row("a", clean=0.8, n=11, seed=2)])
    assert res.clean_by_seed("a") == {"0": 0.5, "2": 0.8}
    res = PairResults(
        [
            row("a", train_seconds=3.0),
            row("a", train_seconds=3.0),
            row("a", seed=1, train_seconds=None),
            row("a", seed=2, train_seconds=5.0),
            row("b", train_seconds=9.0),
        ]
    )
    assert res.field("a", "train_seconds") == [3.0, 5.0]


def test_ranked_by_the_worst_case_at_the_headline_else_the_weakest_attack():
    rows = [
        row("a", robust=0.2),
        row("a", robust=0.6, seed=1),
        row("b", robust=0.5),
        row("c", robust=0.9, eps=2 * EPS),
        row("c", "pgd", 0.45),
        row("c", "fgsm", 0.7),
        row("d", "pgd", 0.1, norm="l2"),
        row("e", robust=0.3, norm="l2"),
        row("e", "pgd", 0.8),
    ]
    res = PairResults(rows)
    assert res.ranked(HL) == ["e", "b", "c", "a", "d"], "e and c by their weakest attack; a by its mean; d has none: 0"
    assert res.ranked({"linf": EPS, "l2": EPS}) == ["b", "c", "a", "e", "d"], "e by its L2 worst case, d its L2 pgd"
    assert res.ranked({"linf": 2 * EPS}) == ["c", "a", "b", "d", "e"], "only c has a value there; the rest keep order"


def test_the_clean_cost_is_against_plain_fine_tuning_unless_told():
    res = PairResults([row("finetune", clean=0.75), row("a", clean=0.5), row("b", clean=0.25)])
    assert res.clean_cost("a") == pytest.approx([-0.25]) and res.clean_cost("a", base="b") == pytest.approx([0.25])


def test_a_seed_without_a_clean_accuracy_on_either_side_is_left_out_of_the_paired_cost():
    rows = [
        *(row("a", clean=c, seed=s) for s, c in enumerate((0.8, "nan", 0.6, 0.7))),
        *(row("b", clean=c, seed=s) for s, c in enumerate((0.7, 0.5, 0.9, None))),
    ]
    e = PairResults(rows).clean_cost_estimate("a", "b")  # no per-example outcomes: the mean alone
    assert e.mean == pytest.approx(statistics.mean([0.8 - 0.7, 0.6 - 0.9])) and math.isnan(e.low), "seeds 0 and 2"


@pytest.mark.parametrize("sizes", [(4, 6), (6, 4)], ids=["the defense on fewer", "the base on fewer"])
def test_a_paired_cost_is_over_the_examples_both_sides_were_scored_on(sizes):
    """Each seed's clean row of the defense and of the base may cover different numbers of examples: the paired
    difference is over the first n that every row of both covers."""
    from benchmark.results.statistics import random_effects_mean

    clean = {
        ("a", 0): [1, 1, 0, 1, 1, 0],
        ("a", 1): [1, 0, 1, 1, 0, 1],
        ("b", 0): [0, 1, 0, 0, 1, 1],
        ("b", 1): [1, 0, 0, 0, 1, 1],
    }
    rows, ex = [], {}
    for (d, s), values in clean.items():
        n = sizes[d == "b"]
        r = row(d, clean=sum(values[:n]) / n, seed=s, n=n, row_id=f"{d}/{s}")
        rows.append(r)
        ex[r.row_id] = {"clean": [float(v) for v in values[:n]], "robust": [0.0] * n}
    want = random_effects_mean([[x - y for x, y in zip(clean[("a", s)][:4], clean[("b", s)][:4])] for s in (0, 1)])
    e = PairResults(rows, ex).clean_cost_estimate("a", "b")
    assert (e.mean, e.low, e.high) == pytest.approx((want["mean"], want["ci_low"], want["ci_high"]))
