"""The leaderboard (benchmark/results/leaderboard.py) on hand-made rows: the order, the withheld defenses, the cells of
the ranking table, the mean over seeds and its interval, the sections that read the headline budgets. Some tests pin
exact values found by mutation testing (`make mutate`, tests/mutation/mutate.py).
"""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
from leaderboard_rows import EPS, HL, row

from benchmark.numerics import machine_line
from benchmark.records import Row
from benchmark.results import leaderboard as lb
from benchmark.results.files import Estimate, PairResults
from benchmark.results.statistics import t_interval


# ---- leaderboard.py ------------------------------------------------------------------------------------------
def test_mean_ci_formats_one_value_or_the_mean_and_interval():
    assert lb._mean_ci([], ".1f") == "-" and lb._mean_ci([None, None], ".1f") == "-"
    assert lb._mean_ci([0.5, None], ".2f") == "0.50" and lb._mean_ci([0.5], ".1f", 100) == "50.0"
    low, high = t_interval([10.0, 20.0, 30.0])
    assert lb._mean_ci([0.1, 0.2, 0.3, None], ".1f", 100) == f"20.0 [{low:.1f}, {high:.1f}]"
    assert lb._pct([0.25]) == "25.0"
    assert lb._mean_str([1.234]) == "1.23" and lb._mean_str([1.25], ".1f") == "1.2"
    values = [0.1, 0.3]  # two seeds: a t interval of -107.1 to 147.1 %, cut to the range of an accuracy
    assert lb._pct(values) == f"{100 * statistics.mean(values):.1f} [0.0, 100.0]"
    values = [0.5, 0.52, 0.54]
    low, high = t_interval([50.0, 52.0, 54.0])
    assert lb._pct(values) == f"52.0 [{low:.1f}, {high:.1f}]", "inside the range: as computed"


def test_an_accuracy_is_shown_with_its_interval_cut_to_its_range():
    assert lb._est(None) == "-" and lb._est(Estimate(math.nan)) == "-"
    assert lb._est(Estimate(0.25)) == "25.0", "no interval: the value alone"
    assert lb._est(Estimate(0.5, 0.45, 0.56)) == "50.0 [45.0, 56.0]"
    assert lb._est(Estimate(0.02, -0.03, 0.07)) == "2.0 [0.0, 7.0]"
    assert lb._est(Estimate(-0.05, -0.08, -0.02), "+.1f", (-100.0, 100.0)) == "-5.0 [-8.0, -2.0]"


def test_several_seeds_give_random_effects_intervals_and_a_model_trained_once_stands_apart():
    from benchmark.results.statistics import random_effects_mean

    outcomes = {("tla", 0): [1, 1, 0, 1], ("tla", 1): [1, 0, 0, 1], ("ft", 0): [0, 1, 0, 0], ("ft", 1): [0, 0, 0, 0]}
    clean = {("tla", 0): [1, 1, 1, 1], ("tla", 1): [1, 1, 0, 1], ("ft", 0): [1, 1, 1, 0], ("ft", 1): [1, 1, 1, 1]}
    rows, ex = [], {}
    for (d, s), robust in outcomes.items():
        r = row(d, robust=sum(robust) / 4, seed=s, clean=sum(clean[(d, s)]) / 4, n=4, row_id=f"{d}/{s}")
        rows.append(r)
        ex[r.row_id] = {"robust": [float(v) for v in robust], "clean": [float(v) for v in clean[(d, s)]]}
    teacher = row("teacher", robust=0.25, clean=0.75, n=4, row_id="t")
    ex["t"] = {"robust": [1.0, 0.0, 0.0, 0.0], "clean": [1.0, 1.0, 1.0, 0.0]}
    res = PairResults([*rows, teacher], ex)
    assert res.several_seeds and res.single_model("teacher") and not res.single_model("tla")
    want = random_effects_mean([outcomes[("tla", 0)], outcomes[("tla", 1)]])
    e = res.estimate("tla", "worst_case", "linf", EPS)
    assert (e.mean, e.low, e.high) == pytest.approx((want["mean"], want["ci_low"], want["ci_high"]))
    ref = random_effects_mean([[1.0, 0.0, 0.0, 0.0]])
    e = res.estimate("teacher", "worst_case", "linf", EPS)
    assert (e.mean, e.low, e.high) == pytest.approx((0.25, ref["ci_low"], ref["ci_high"])), "t over examples"
    cost = random_effects_mean(np.array([clean[("tla", 0)], clean[("tla", 1)]]) - [clean[("ft", 0)], clean[("ft", 1)]])
    e = res.clean_cost_estimate("tla", "ft")
    assert (e.mean, e.low, e.high) == pytest.approx((cost["mean"], cost["ci_low"], cost["ci_high"]))
    assert res.estimate("tla", "worst_case", "linf", EPS + 1) is None
    text = lb.leaderboard([*rows, teacher], HL, "success_ratio", [], per_example=ex)
    assert "| ref. | teacher | 75.0 [" in text and "| 1 | tla |" in text, "the teacher is shown apart, unranked"
    bare = PairResults([*rows, teacher])  # no per-example outcomes: the mean alone
    assert bare.estimate("tla", "worst_case", "linf", EPS) == Estimate(0.625)
    one_seed = PairResults([r for r in rows if r.seed == 0], ex)
    assert one_seed.estimate("tla", "worst_case", "linf", EPS) == Estimate(0.75), "one seed: the value alone"


def test_an_interval_is_cut_to_what_the_quantity_can_take():
    """Three seeds' t interval of a skewed cost or an accuracy near a bound leaves the quantity's range."""
    seconds = [35.0, 40.0, 2500.0]  # one slow seed: the t interval goes below 0 s
    low, high = t_interval(seconds)
    assert low < 0 < high
    assert lb._mean_str(seconds, ".1f") == f"{statistics.mean(seconds):.1f} [0.0, {high:.1f}]"
    near = [0.99, 1.0, 0.5]  # accuracies: the interval reaches above 100 %
    lo, hi = t_interval([100 * v for v in near])
    assert hi > 100 and lb._pct(near) == f"{100 * statistics.mean(near):.1f} [{max(lo, 0):.1f}, 100.0]"
    low, high = t_interval([-1.0, -2.0, -6.0])
    assert lb._mean_ci([-1.0, -2.0, -6.0], ".1f") == f"-3.0 [{low:.1f}, {high:.1f}]", "unbounded by default"


def test_withheld_defenses_at_the_headline_only():
    rows = [
        row("a", flags="no_adaptive_attack"),
        row("b", flags="x;no_adaptive_attack", eps=EPS + 5e-10),
        row("c", flags="no_adaptive_attack", eps=2 * EPS),
        row("d", "pgd", flags="no_adaptive_attack"),
        row("e", flags="no_adaptive_attack", norm="l2"),
        row("f", flags="ignores_reject_option"),
        row("g", flags="no_adaptive_attack", norm="l2", eps=1.0),  # a norm without a headline budget
    ]
    assert lb._unranked(PairResults(rows), HL) == {"a", "b"}
    assert lb._unranked(PairResults(rows), {"linf": EPS, "l2": EPS}) == {"a", "b", "e"}


def test_the_ranking_table():
    rows = [
        row("finetune", robust=0.5, clean=0.9),
        row("finetune", "pgd", 0.6, clean=0.9),
        row("tla", robust=0.7, clean=0.8),
        row("tla", "pgd", 0.75, clean=0.8),
        row("tla", "fgsm", 0.9, eps=2 * EPS),
        row("off", robust=0.95, clean=0.85, flags="no_adaptive_attack"),
        row("q", "never", None, clean=0.1),
    ]
    res = PairResults(rows)
    lines = lb._ranking("p", res, HL, ["tla", "finetune", "off"], {"off"})
    assert lines == [
        "## p: S -> T (cnn, 10 target test examples)",
        "",
        "`clean cost`: clean accuracy minus plain fine-tuning's (points).",
        "",
        "| rank | defense | clean | clean cost | worst_case linf 16/255 | pgd 16/255 |",
        "|---|---|---|---|---|---|",
        "| 1 | tla | 80.0 | -10.0 | 70.0 | 75.0 |",
        "| 2 | finetune | 90.0 | +0.0 | 50.0 | 60.0 |",
        "| - | off | 85.0 | -5.0 | 95.0 | - |",
    ], "no column for an attack without values at the headline (fgsm at 32/255, q's)"
    without = lb._ranking("p", PairResults([r for r in rows if r.defense != "finetune"]), HL, ["tla"], set())
    assert without[2:4] == ["| rank | defense | clean | worst_case linf 16/255 | pgd 16/255 |", "|---|---|---|---|---|"]
    assert without[4] == "| 1 | tla | 80.0 | 70.0 | 75.0 |"


def test_the_leaderboard_ranks_withheld_defenses_last_and_lists_the_warnings():
    rows = [
        row("off", robust=0.95, flags="no_adaptive_attack"),
        row("tla", robust=0.7),
        row("finetune", robust=0.5),
        Row(
            pair="q",
            source="S2",
            target="T2",
            model="m",
            defense="d",
            attack="worst_case",
            robust_acc=0.1,
            eps=EPS,
            norm="linf",
            threat_model="white-box",
            clean_acc=0.5,
            n_examples=3,
        ),
    ]
    text = lb.leaderboard(rows, {"linf": EPS}, "success_ratio", ["w1", "w2"])
    lines = text.splitlines()
    assert lines[0] == "# Leaderboard: exp" and "XXXX" not in text
    ranks = [
        line for line in lines if line.startswith("| ") and line.split(" | ")[1] in ("off", "tla", "finetune", "d")
    ]
    assert ranks[:4] == [
        "| 1 | tla | 90.0 | +0.0 | 70.0 |",
        "| 2 | finetune | 90.0 | +0.0 | 50.0 |",
        "| - | off | 90.0 | +0.0 | 95.0 |",
        "| 1 | d | 50.0 | 10.0 |",
    ]
    assert lines.index("## p: S -> T (cnn, 10 target test examples)") < lines.index(
        "## q: S2 -> T2 (m, 3 target test examples)"
    )
    assert text.endswith("## Sanity checks\n\n- WARNING: w1\n- WARNING: w2\n")
    assert "## Findings" not in text and "Verdicts about methods" not in text
    item = {"claim": "c", "pair": "p", "higher": "a", "lower": "b", "attack": "x", "norm": "linf",
            "eps_label": "16/255", "per_seed": [], "verdict": "not in this run"}  # fmt: skip
    quiet = lb.leaderboard(
        rows[1:3], HL, "success_ratio", [], found=[{**item, "source": "s", "metric": "robust", "seeds": 0}]
    )
    assert quiet.startswith("# Leaderboard: exp\n") and "| c (s) | p | a | b | x linf 16/255 | - |" in quiet
    assert quiet.endswith(
        "| not in this run | - |\n\n## Sanity checks\n\nNo check failed: iterative attacks are at least as strong as "
        "single-step ones, white-box at least as strong as transfer, and robust accuracy falls with epsilon "
        "(tolerance 1 points).\n"
    )
    assert "## Findings\n\n" in quiet and "No rows to test." not in quiet


def test_the_leaderboard_sections_read_the_headline_the_ranking_and_the_form():
    """Detection, rejecting models and transferability: each section gets the pair's headline budgets, the ranked
    defenses and the configured transferability form."""
    rows = [
        row("tla", "pgd", 0.5, detection_auroc=0.75),
        row("tla", robust=0.5),
        row("diff", "pgd", 0.25, false_rejection_rate=0.1, clean_acc_accepted=0.9, defense_rate=0.8,
            adv_rejection_rate=0.3),
        row("diff", robust=0.25),
        row("tla", "transfer", 0.6, threat="transfer", transferability=0.4),
    ]  # fmt: skip
    text = lb.leaderboard(rows, HL, "accuracy_drop", [])
    assert "Computed on" not in text, "no machine given"
    where = {"cpu": "Some CPU", "isa": "AVX2", "torch": "2.x", "gpu": None, "threads": 1}
    assert machine_line(where) in lb.leaderboard(rows, HL, "accuracy_drop", [], machine=where)
    detection = "| defense | pgd 16/255 | worst_case linf 16/255 |\n|---|---|---|\n| tla | 75.0 | - |\n| diff | - | - |"
    assert detection in text, "at the headline, in ranked order"
    assert "| diff | 0 | pgd | linf 16/255 | 90.0 | 90.0 | 10.0 | 25.0 | 80.0 | 30.0 |" in text
    assert "T = accuracy_drop: (acc_B(x) - acc_B(x'_A))" in text
    assert "| defense | transfer 16/255 |\n|---|---|\n| tla | 0.40 |\n| diff | - |" in text, "in ranked order"


def test_a_model_trained_once_is_listed_after_the_ranked_defenses_without_a_rank():
    """The teacher (trained once beside methods trained per seed) comes last even when it is the most robust."""
    rows = [
        *(row("tla", robust=0.6, seed=s) for s in (0, 1)),
        *(row("finetune", robust=0.4, seed=s) for s in (0, 1)),
        row("teacher", robust=0.9),
    ]
    assert PairResults(rows).ranked(HL)[0] == "teacher", "the most robust by the ranking's rule"
    text = lb.leaderboard(rows, HL, "success_ratio", [])
    assert "|---|\n| 1 | tla | 90.0 | +0.0 | 60.0 |\n| 2 | finetune | 90.0 | +0.0 | 40.0 |\n| ref. | teacher |" in text


def test_the_clean_cost_interval_is_cut_to_the_range_of_a_difference_of_accuracies():
    """With two seeds the random-effects interval of the clean cost reaches past -100 and +100 points: it is cut to
    [-100, +100], what a difference of two accuracies can take."""
    from benchmark.results.statistics import random_effects_mean

    clean = {("tla", 0): [1, 1, 1, 1], ("tla", 1): [1, 0, 1, 0], ("finetune", 0): [0, 0, 0, 0],
             ("finetune", 1): [1, 1, 1, 1]}  # fmt: skip
    rows, ex = [], {}
    for (d, s), values in clean.items():
        r = row(d, seed=s, clean=sum(values) / 4, n=4, row_id=f"{d}/{s}")
        rows.append(r)
        ex[r.row_id] = {"clean": [float(v) for v in values], "robust": [0.5] * 4}
    cost = random_effects_mean(np.array([clean[("tla", s)] for s in (0, 1)]) - [clean[("finetune", s)] for s in (0, 1)])
    assert cost["ci_low"] < -1.01 and cost["ci_high"] > 1.01, "past the range on both sides"
    lines = lb._ranking("p", PairResults(rows, ex), HL, ["tla", "finetune"], set())
    assert lines[4].startswith("| rank | defense | clean | clean cost |") and lines[6].startswith("| 1 | tla | ")
    assert lines[6].split(" | ")[3] == f"{100 * cost['mean']:+.1f} [-100.0, +100.0]"


def test_a_value_that_is_not_finite_is_spelled_in_the_ranking_as_in_every_other_table():
    """results.csv may hold any float (`number` reads "inf"): the ranking's clean accuracy and clean cost write it
    with Python's own format, as the per-seed tables do (`_pct`, `_mean_ci`)."""
    assert lb._est(Estimate(math.inf)) == lb._pct([math.inf]) == f"{math.inf:.1f}"
    rows = [row("finetune", clean=0.9), row("odd", clean=math.inf)]
    lines = lb._ranking("p", PairResults(rows), HL, ["finetune", "odd"], set())
    assert lines[7].split(" | ")[1:4] == ["odd", lb._pct([math.inf]), f"{math.inf:+.1f}"]
