"""The claims (benchmark/results/claims.py) as the matrices their test reads: a claim of defense A against B (one paired
part), paper 2's rate at a clean-accuracy cost (two parts), "attack X is the strongest on every model" (a part per
model), the rows each one takes, and how the findings test their parts (intersection-union for support, Bonferroni for
the reverse). The reference values come from benchmark.results.statistics, tested against textbook formulas in
test_statistics.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hand_rows import EPS, HL, ones, row

from benchmark.results.claims import (
    NO_OUTCOMES,
    NOT_IN_RUN,
    Claim,
    Part,
    RateClaim,
    StrongestAttackClaim,
    clean_outcomes,
    outcomes,
    run_claims,
    stacked,
)
from benchmark.results.statistics import random_effects_mean
from benchmark.results.verdicts import claim_test, findings
from benchmark.runner.config import shipped_defenses

RATE = RateClaim("stops 90 %", "paper 2", defense="diff", base="student", attack="adaptive")


def rows_of(per: dict, seeds=(0,), **kw) -> tuple[list, dict]:
    """Rows and per_example.json of {(defense, attack): outcomes} in every seed."""
    rows, ex = [], {}
    for s in seeds:
        for (defense, attack), outcome in per.items():
            r = row(defense, attack, seed=s, **kw)
            rows.append(r)
            ex[r.row_id] = outcome
    return rows, ex


def test_a_claims_part_is_the_paired_difference_on_the_examples_every_row_covers():
    rows, ex = rows_of({("a", "pgd"): {"robust": ones(6, 10)}, ("b", "pgd"): {"robust": ones(2, 8)}}, seeds=(0, 2))
    (part,) = Claim("t", "s", "a", "b", "pgd").parts(rows, ex, "p", EPS)
    assert part.seeds == ("0", "2") and part.values.shape == (2, 8) and part.sign == 1 and part.null == 0
    assert part.label == "a - b"
    assert part.values[0].tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert Claim("t", "s", "a", "c", "pgd").parts(rows, ex, "p", EPS) == NOT_IN_RUN
    ex[rows[1].row_id] = {"robust": []}
    assert Claim("t", "s", "a", "b", "pgd").parts(rows, ex, "p", EPS) == NO_OUTCOMES


def test_a_defenses_rows_are_its_attack_at_its_budget_and_pair():
    keep = [row("a"), row("a", seed=1), row("a", eps=EPS + 5e-10)]
    noise = [row("a", pair="q"), row("a", threat="sanity"), row("a", attack="fgsm"), row("a", norm="l2"),
             row("a", eps=2 * EPS), row("c")]  # fmt: skip
    ex = {r.row_id: {"robust": [float(i)]} for i, r in enumerate(keep + noise)}
    found = outcomes(keep + noise, ex, "p", "a", "pgd", "linf", EPS)
    assert found == {"0": [2.0], "1": [1.0]}, "the last matching row of a seed"
    assert stacked({"10": [1, 2, 3], "2": [4, 5]}).tolist() == [[4, 5], [1, 2]], "seeds in numeric order"


def test_seeds_are_ordered_as_numbers_negative_ones_included_then_names_by_name():
    by_seed = {"10": [10], "2": [2], "-1": [-1], "b": [0.5], "X1": [0.25]}
    assert stacked(by_seed).tolist() == [[-1], [2], [10], [0.25], [0.5]]


def test_outcomes_written_as_booleans_are_compared_as_zeros_and_ones():
    rows, ex = rows_of({("a", "pgd"): {"robust": [True, True, False]}, ("b", "pgd"): {"robust": [False, True, False]}})
    (part,) = Claim("t", "s", "a", "b", "pgd").parts(rows, ex, "p", EPS)
    assert part.values.tolist() == [[1.0, 0.0, 0.0]]
    assert stacked({"0": [1, 0]}).dtype == np.float64


def test_every_shape_of_claim_reads_only_the_rows_at_its_budget():
    kept = {EPS: {"pgd": 9, "fgsm": 10}, 2 * EPS: {"pgd": 3, "fgsm": 5}}  # examples a keeps; b keeps 1 under pgd
    rows, ex = [], {}
    for e, by in kept.items():
        for d, a in (("a", "pgd"), ("a", "fgsm"), ("b", "pgd")):
            r = row(d, a, eps=e)
            rows.append(r)
            ex[r.row_id] = {"clean": ones(12, 12), "robust": ones(by[a] if d == "a" else 1, 12)}
    at = kept[EPS]
    (pair,) = Claim("t", "s", "a", "b", "pgd").parts(rows, ex, "p", EPS)
    assert pair.values.sum() == at["pgd"] - 1
    rate, _ = RateClaim("r", "s", defense="a", base="b", attack="pgd", rate=0.5).parts(rows, ex, "p", EPS)
    assert rate.values.sum() == pytest.approx(at["pgd"] - 0.5 * 12)
    (strongest,) = StrongestAttackClaim("x", "s", attack="pgd", attacks=("pgd", "fgsm")).parts(rows, ex, "p", EPS)
    assert strongest.values.sum() == at["fgsm"] - at["pgd"]


def test_the_rate_part_is_above_zero_exactly_when_the_defense_rate_beats_the_threshold():
    clean, robust, base = ones(16, 20), ones(15, 20), ones(18, 20)
    rows, ex = rows_of({("diff", "adaptive"): {"clean": clean, "robust": robust}, ("student", "pgd"): {"clean": base}})
    rate, loss = RATE.parts(rows, ex, "p", EPS)
    assert rate.values[0] == pytest.approx(np.asarray(robust) - 0.9 * np.asarray(clean))
    assert rate.scale == pytest.approx(20 / 16) and rate.sign == 1
    assert rate.values.mean() * rate.scale == pytest.approx(15 / 16 - 0.9), "the shown difference: rate - 90 %"
    assert loss.values[0] == pytest.approx(np.asarray(base) - np.asarray(clean))
    assert (loss.null, loss.sign) == (0.1, -1)
    (f,) = findings(rows, ex, HL, [RATE])
    want = [random_effects_mean(rate.values), random_effects_mean(loss.values, 0.1)]
    assert f["p_support"] == pytest.approx(max(want[0]["p_above"], want[1]["p_below"])), "intersection-union"
    assert f["p_contra"] == pytest.approx(min(1.0, 2 * min(want[0]["p_below"], want[1]["p_above"]))), "Bonferroni"
    assert [p["label"] for p in f["parts"]] == ["defense rate - 90 %", "clean loss vs student - 10 points"]
    assert f["difference"] == f["parts"][0]["difference"] == pytest.approx(15 / 16 - 0.9), "the rate's distance"
    assert f["parts"][1]["difference"] == pytest.approx(0.1 - 0.1)
    assert [p["p"] for p in f["parts"]] == pytest.approx([w["p"] for w in want]), "each part's own two-sided p"


def test_each_seeds_difference_is_its_distance_to_the_null_times_the_parts_scale():
    rows, ex = rows_of(
        {
            ("diff", "adaptive"): {"clean": ones(16, 20), "robust": ones(15, 20)},
            ("student", "pgd"): {"clean": ones(19, 20)},
        },
        seeds=(0, 1),
    )
    (f,) = findings(rows, ex, HL, [RATE])
    rate, loss = (f["parts"][i]["label"] for i in range(2))
    shown = {(t["part"], t["seed"]): t["difference"] for t in f["per_seed"]}
    assert shown == pytest.approx({(rate, "0"): 15 / 16 - 0.9, (rate, "1"): 15 / 16 - 0.9,
                                   (loss, "0"): 3 / 20 - 0.1, (loss, "1"): 3 / 20 - 0.1})  # fmt: skip


def test_a_rates_seeds_are_in_numeric_order_and_its_examples_those_every_row_covers():
    per = {
        ("diff", "adaptive"): {"clean": ones(16, 20), "robust": ones(15, 20)},
        ("student", "pgd"): {"clean": ones(18, 30)},
    }
    rows, ex = rows_of(per, seeds=(10, 2))
    rate, loss = RATE.parts(rows, ex, "p", EPS)
    assert rate.seeds == loss.seeds == ("2", "10")
    assert rate.values.shape == loss.values.shape == (2, 20)
    assert loss.values[0] == pytest.approx(np.asarray(ones(18, 20)) - ones(16, 20))


def test_a_rate_with_no_clean_correct_example_has_no_scale():
    rows, ex = rows_of(
        {("diff", "adaptive"): {"clean": ones(0, 4), "robust": ones(0, 4)}, ("student", "pgd"): {"clean": ones(4, 4)}}
    )
    rate, _ = RATE.parts(rows, ex, "p", EPS)
    assert math.isnan(rate.scale)
    (f,) = findings(rows, ex, HL, [RATE])
    assert math.isnan(f["difference"]), "no defense rate without a clean-correct example"


def test_a_high_rate_at_a_small_loss_is_supported_a_low_rate_contradicted_a_large_loss_withholds():
    def verdict(clean_def: int, robust_def: int, clean_base: int, seeds=(0, 1, 2)) -> dict:
        per = {("diff", "adaptive"): {"clean": ones(clean_def, 200), "robust": ones(robust_def, 200)},
               ("student", "pgd"): {"clean": ones(clean_base, 200)}}  # fmt: skip
        rows, ex = rows_of(per, seeds=seeds)
        for s, r in enumerate(rows):  # a little seed-to-seed spread
            if r.defense == "diff":
                ex[r.row_id] = {"clean": ones(clean_def - s, 200), "robust": ones(robust_def - 2 * s, 200)}
        return findings(rows, ex, HL, [RATE])[0]

    assert verdict(176, 174, 180)["verdict"] == "supported"
    assert verdict(176, 88, 180)["verdict"] == "contradicted"
    assert verdict(120, 120, 180)["verdict"] == "contradicted", "a 30-point loss reverses the loss part"
    assert verdict(176, 174, 180, seeds=(0,))["verdict"] == "supported", "one seed: about these models"


def test_the_guarded_models_clean_outcomes_come_from_its_longest_row():
    rows = [row("student", "pgd"), row("student", "fgsm"), row("student", "x", pair="q"), row("student", "y")]
    ex = {rows[0].row_id: {"clean": ones(2, 3)}, rows[1].row_id: {"clean": ones(1, 6)},
          rows[2].row_id: {"clean": ones(8, 8)}, rows[3].row_id: {"clean": []}}  # fmt: skip
    assert clean_outcomes(rows, ex, "p", "student") == {"0": ones(1, 6)}
    tie, untested = row("student", "z"), row("student", "w")  # as long as the longest; without any outcome
    ex[tie.row_id] = {"clean": ones(5, 6)}
    assert clean_outcomes([*rows, tie, untested], ex, "p", "student") == {"0": ones(1, 6)}, "the first longest row"


def test_a_rate_claim_without_its_rows_or_outcomes():
    both = {
        ("diff", "adaptive"): {"clean": ones(4, 4), "robust": ones(4, 4)},
        ("student", "pgd"): {"clean": ones(4, 4)},
    }
    rows, ex = rows_of(both)
    assert RATE.parts(rows[:1], ex, "p", EPS) == NOT_IN_RUN, "no guarded model"
    assert RATE.parts(rows[1:], ex, "p", EPS) == NOT_IN_RUN
    ex[rows[0].row_id] = {"clean": ones(4, 4), "robust": []}
    assert RATE.parts(rows, ex, "p", EPS) == NO_OUTCOMES


def test_the_strongest_attack_is_computed_per_model_and_must_win_on_every_one():
    claim = StrongestAttackClaim("uap", "r", attack="uap", attacks=("uap", "ssp", "l4a"), exclude=("teacher",))
    per = {"a": {"uap": ones(0, 12), "ssp": ones(9, 12), "l4a": ones(5, 12) + [1.0] * 28},
           "teacher": {"uap": ones(0, 12), "ssp": ones(12, 12)}, "b": {"uap": ones(3, 12)},
           "c": {"uap": ones(6, 12), "ssp": ones(2, 12)}}  # fmt: skip
    rows, ex = [], {}
    for d, by in per.items():
        for a, robust in by.items():
            r = row(d, a)
            rows.append(r)
            ex[r.row_id] = {"robust": robust}
    other_seed = row("a", "ssp", seed=1)
    ex[other_seed.row_id] = {"robust": ones(0, 12)}
    parts = claim.parts([*rows, other_seed], ex, "p", EPS)
    assert [p.label for p in parts] == ["a: l4a - uap", "c: ssp - uap"], "the strongest other attack per model"
    assert parts[0].values[0].tolist() == (np.asarray(ones(5, 12)) - ones(0, 12)).tolist()
    test = claim_test(parts)
    assert test["p_support"] == pytest.approx(max(t["p_above"] for t in test["tests"]))
    (f,) = findings([*rows, other_seed], ex, HL, [claim])
    assert f["verdict"] == "not supported", "ssp is stronger than uap on c"
    assert StrongestAttackClaim("x", "r", attack="uap", attacks=("uap",)).parts(rows, ex, "p", EPS) == NOT_IN_RUN


def test_the_strongest_other_attack_is_the_lowest_mean_whatever_its_name_on_the_examples_all_cover():
    claim = StrongestAttackClaim("uap", "r", attack="uap", attacks=("uap", "ssp", "l4a"))
    rows, ex = rows_of(
        {
            ("a", "uap"): {"robust": ones(2, 20)},
            ("a", "ssp"): {"robust": ones(0, 12)},
            ("a", "l4a"): {"robust": ones(6, 12)},
        },
        seeds=(10, 2),
    )
    (part,) = claim.parts(rows, ex, "p", EPS)
    assert part.label == "a: ssp - uap" and part.seeds == ("2", "10") and part.values.shape == (2, 12)
    assert part.values.sum(axis=1).tolist() == [-2.0, -2.0]


def test_the_strongest_attack_claim_leaves_out_models_without_the_attack_and_rows_without_outcomes():
    claim = StrongestAttackClaim("uap", "r", attack="uap", attacks=("uap", "ssp"))
    rows, ex = rows_of({("a", "uap"): {"robust": ones(2, 12)}, ("a", "ssp"): {"robust": ones(0, 12)},
                        ("b", "ssp"): {"robust": ones(0, 12)}})  # fmt: skip
    no_outcome = row("a", "uap", seed=1)
    (part,) = claim.parts([*rows, no_outcome], ex, "p", EPS)
    assert part.label == "a: ssp - uap" and part.seeds == ("0",)


def test_a_part_claims_its_mean_above_the_null_only_with_a_positive_sign():
    values = np.array([[1.0, 2.0, 3.0, 2.0]])
    above = claim_test([Part("x", values, ("0",), sign=1)])
    assert above["p_support"] < 0.05 < above["p_contra"]
    for sign in (-1, 0):
        below = claim_test([Part("x", values, ("0",), sign=sign)])
        assert (below["p_support"], below["p_contra"]) == (above["p_contra"], above["p_support"]), sign


def test_bonferronis_p_against_a_claim_of_several_parts_is_at_most_one():
    up = Part("x", np.array([[1.0, 2.0, 3.0, 2.0]]), ("0",))
    test = claim_test([up, up])
    assert test["tests"][0]["p_below"] > 0.5 and test["p_contra"] == 1.0


def test_the_shipped_claims_have_every_shape_and_each_its_own_place():
    claims = run_claims(shipped_defenses())  # every defense config's and those about attacks
    kinds = {type(c).__name__ for c in claims}
    assert {"RateClaim", "StrongestAttackClaim", "Claim"} <= kinds
    assert len({c.text + c.attack for c in claims}) == len(claims)
    assert len({c.order for c in claims}) == len(claims) and None not in {c.order for c in claims}


def test_the_strongest_attack_claim_is_over_every_seed_of_a_model():
    claim = StrongestAttackClaim("uap", "r", attack="uap", attacks=("uap", "ssp", "l4a"))
    per = {("a", "uap"): [6, 6, 6], ("a", "ssp"): [2, 10, 10], ("a", "l4a"): [5, 5, 5],
           ("b", "uap"): [4, 4], ("b", "ssp"): [1, 1, 1]}  # fmt: skip
    rows, ex = [], {}
    for (d, a), hits in per.items():
        for seed, k in enumerate(hits):
            r = row(d, a, seed=seed)
            rows.append(r)
            ex[r.row_id] = {"robust": ones(k, 12)}
    a, b = claim.parts(rows, ex, "p", EPS)
    assert a.label == "a: l4a - uap", "the strongest by the mean over seeds, not seed 0's (ssp there)"
    assert a.seeds == ("0", "1", "2") and a.values.shape == (3, 12)
    assert a.values.sum(axis=1).tolist() == [-1.0, -1.0, -1.0]
    assert b.seeds == ("0", "1") and b.values.sum(axis=1).tolist() == [-3.0, -3.0], "the seeds with the claimed attack"
