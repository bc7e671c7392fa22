"""The runner's sanity rules (benchmark/checks.py) and scoring (benchmark/stages/score.py), pinned on hand-made
outcomes and rows where each distinction shows: the boundaries of every tolerance, which rows a rule compares,
and every field a row gets. Written against the mutants `make mutate` (tests/mutation/mutate.py) found alive.
"""

from __future__ import annotations

import math

import pytest
import torch

from benchmark import checks
from benchmark.metrics import wilson_interval
from benchmark.stages.score import (
    abstention,
    head,
    metrics,
    outcome,
    per_example,
    size,
    targeted_success,
    transferability,
    worst_case,
)

REJECT = 9


def det(adv: list[bool], clean: list[bool] | None = None) -> dict:
    """A deterministic model's outcome (one draw)."""
    a = torch.tensor([adv])
    return {"clean": torch.ones_like(a) if clean is None else torch.tensor([clean]), "adv": a}


def robust(k: int, n: int) -> dict:
    """n examples, the first k robust."""
    return det([True] * k + [False] * (n - k))


def row(attack: str = "pgd", threat: str = "white-box", steps: int = 20, n: int = 8, eps: float = 0.1, **kw) -> dict:
    return {"pair": "p", "defense": "d", "seed": 0, "attack": attack, "threat_model": threat, "norm": "linf",
            "eps": eps, "eps_label": "x", "steps": steps, "n_examples": n, "flags": "", **kw}  # fmt: skip


def flags(rows: list[dict]) -> list[str]:
    return [r["flags"] for r in rows]


# ---- tolerance and flags -------------------------------------------------------------------------------------
def test_tolerance_is_two_examples_with_a_floor_of_one_point():
    assert [checks.tolerance(n) for n in (0, 1, 100, 200, 400)] == pytest.approx([2.0, 2.0, 0.02, 0.01, 0.01])


def test_a_flag_is_added_once_after_the_others():
    r = {}
    checks.add_flag(r, "unbounded_attack_not_chance")
    assert r["flags"] == "unbounded_attack_not_chance"
    checks.add_flag(r, "non_monotone_in_eps")
    checks.add_flag(r, "unbounded_attack_not_chance")
    checks.add_flag(r, "non_monotone_in_eps")
    assert r["flags"] == "unbounded_attack_not_chance;non_monotone_in_eps"
    none = {"flags": None}
    checks.add_flag(none, "non_monotone_in_eps")
    assert none["flags"] == "non_monotone_in_eps"
    with pytest.raises(KeyError, match="documented: iterative_weaker_than_single_step, transfer_stronger"):
        checks.add_flag(r, "made_up")


# ---- per-example rules ---------------------------------------------------------------------------------------
def test_transfer_flag_boundary_is_strict():
    # n = 8: tolerance 0.25. White-box leaves 6/8; transfer at 4/8 is within noise, at 3/8 stronger.
    at, below = row("transfer", "transfer"), row("transfer", "transfer")
    checks.transfer_vs_whitebox(at, robust(4, 8), [(row(steps=2), robust(6, 8))])
    checks.transfer_vs_whitebox(below, robust(3, 8), [(row(steps=2), robust(6, 8))])
    assert flags([at, below]) == ["", "transfer_stronger_than_whitebox"], "an attack with 2 steps is iterative"


def test_transfer_is_compared_only_at_its_norm_and_eps_and_every_matching_row_counts():
    wb = robust(8, 8)
    others = [(row(norm="l2"), wb), (row(eps=0.2), wb)]
    r = row("transfer", "transfer")
    checks.transfer_vs_whitebox(r, robust(0, 8), others)
    assert r["flags"] == "", "another norm or epsilon is another threat"
    checks.transfer_vs_whitebox(r, robust(0, 8), [*others, (row(), wb)])
    assert r["flags"] == "transfer_stronger_than_whitebox", "a non-matching row must not end the search"


@pytest.mark.parametrize("tr_eps, wb_eps", [(0.1, 0.1 + 3e-11), (0.1 + 3e-11, 0.1)])
def test_transfer_eps_match_ignores_float_noise_below_1e_10(tr_eps, wb_eps):
    r = row("transfer", "transfer", eps=tr_eps)
    checks.transfer_vs_whitebox(r, robust(0, 8), [(row(eps=wb_eps), robust(8, 8))])
    assert r["flags"] == "transfer_stronger_than_whitebox"


def test_transfer_is_compared_on_the_whitebox_examples_not_its_own():
    # the white-box attack ran on 16 examples (12 robust); the transfer attack on 64: none of the first 16 robust,
    # all 48 others. On the common 16 the transfer attack is far stronger; over its own 64 it is not.
    transfer = det([False] * 16 + [True] * 48)
    r = row("transfer", "transfer", n=64)
    checks.transfer_vs_whitebox(r, transfer, [(row(n=16), robust(12, 16))])
    assert r["flags"] == "transfer_stronger_than_whitebox"


def test_frozen_randomness_boundary_and_reference_on_common_examples():
    # frozen on 8 examples (tolerance 0.25); the randomized model's outcome covers 16, 4 of the first 8 robust
    randomized = det([True] * 4 + [False] * 4 + [False] * 8)
    at, above = row("sanity_frozen_randomness", "sanity"), row("sanity_frozen_randomness", "sanity")
    checks.frozen_randomness(at, robust(2, 8), randomized)
    checks.frozen_randomness(above, robust(3, 8), randomized)
    assert flags([at, above]) == ["", "frozen_randomness_attack_fails"]
    assert at["sanity_reference"] == pytest.approx(0.5), "the reference is on the frozen attack's 8 examples"


def test_converged_boundary_and_reference_on_common_examples():
    base = det([True] * 6 + [False] * 2 + [False] * 8)  # 6/8 on the doubled attack's 8 examples
    at, below = row("eot_x2"), row("eot_x2")
    checks.converged(at, robust(4, 8), base)
    checks.converged(below, robust(3, 8), base)
    assert flags([at, below]) == ["", "eot_attack_not_converged"]
    assert at["sanity_reference"] == pytest.approx(0.75)


def test_unbounded_boundary_uses_the_number_of_examples():
    at, above = row("sanity_unbounded", "sanity"), row("sanity_unbounded", "sanity")
    checks.unbounded(at, robust(2, 8))
    checks.unbounded(above, robust(3, 8))
    assert flags([at, above]) == ["", "unbounded_attack_not_chance"]
    # two draws of 8 examples: 4 robust draws of 16 is 0.25, within the tolerance of 8 examples
    two = {"clean": torch.ones(2, 8, dtype=torch.bool), "adv": torch.tensor([[True] * 2 + [False] * 6] * 2)}
    r = row("sanity_unbounded", "sanity")
    checks.unbounded(r, two)
    assert r["flags"] == ""


# ---- the reject option ---------------------------------------------------------------------------------------
class _Plain:
    pass


class _NotAware:
    reject_aware = False


class _Aware:
    reject_aware = True


def rejecting() -> dict:
    return outcome(torch.tensor([[0, REJECT]]), torch.tensor([[REJECT, 1]]), torch.tensor([0, 1]), REJECT)


def plain() -> dict:
    return outcome(torch.tensor([[0, 1]]), torch.tensor([[1, 1]]), torch.tensor([0, 1]))


def test_without_an_adaptive_attack_every_non_sanity_row_is_flagged():
    made = [(row(), plain(), _Plain()), (row("fgsm"), rejecting(), _NotAware()), (row("s", "sanity"), plain(), None)]
    worst = [row("worst_case"), row("worst_case", "sanity")]
    checks.abstaining_without_adaptive_attack(made, worst)
    assert flags([m[0] for m in made]) == ["no_adaptive_attack", "no_adaptive_attack", ""]
    assert flags(worst) == ["no_adaptive_attack", ""]


def test_a_model_that_never_rejects_gets_no_adaptive_flag():
    made = [(row(), plain(), _Plain())]
    checks.abstaining_without_adaptive_attack(made, [row("worst_case")])
    assert made[0][0]["flags"] == ""


def test_an_adaptive_attack_covers_its_norm_and_eps_only():
    made = [(row("aware"), rejecting(), _Aware()), (row(eps=0.2), rejecting(), _Plain())]
    worst = [row("worst_case"), row("worst_case", eps=0.2), row("worst_case", norm="l2"),
             row("worst_case", eps=0.1 + 3e-11)]  # fmt: skip
    checks.abstaining_without_adaptive_attack(made, worst)
    assert flags([m[0] for m in made]) == ["", ""], "with an adaptive attack only the worst case is judged"
    assert flags(worst) == ["", "no_adaptive_attack", "no_adaptive_attack", ""]
    shifted = [row("worst_case")]
    checks.abstaining_without_adaptive_attack([(row(eps=0.1 + 3e-11), rejecting(), _Aware())], shifted)
    assert shifted[0]["flags"] == ""


# ---- rules across rows ---------------------------------------------------------------------------------------
def rows_with(*specs: tuple[dict, float]) -> list[dict]:
    return [{**r, "robust_acc": acc} for r, acc in specs]


def test_iterative_weaker_than_single_step_boundary_and_two_steps():
    ok = rows_with((row("fgsm", steps=1), 0.5), (row(steps=2), 0.75))
    bad = rows_with((row("fgsm", steps=1), 0.5), (row(steps=2), 0.875))
    checks.cross_row_flags(ok)
    checks.cross_row_flags(bad)
    assert flags(ok) == ["", ""] and flags(bad) == ["", "iterative_weaker_than_single_step"]


def test_two_single_step_attacks_are_not_compared():
    rows = rows_with((row("fgsm", steps=1), 0.0), (row("rfgsm", steps=1), 1.0))
    checks.cross_row_flags(rows)
    assert flags(rows) == ["", ""]


@pytest.mark.parametrize(
    "other",
    [{"pair": "q"}, {"defense": "e"}, {"seed": 1}, {"norm": "l2"}, {"eps": 0.2}, {"threat_model": "transfer"}],
)
def test_single_step_is_compared_within_one_model_norm_eps_and_whitebox_only(other):
    rows = rows_with((row("fgsm", steps=1), 0.0), (row(**other), 1.0))
    checks.cross_row_flags(rows)
    assert "iterative_weaker_than_single_step" not in flags(rows)


def test_single_step_comparison_matches_seed_and_eps_across_types():
    rows = rows_with((row("fgsm", steps=1, seed="0"), 0.0), (row(eps=0.1 + 3e-11), 1.0))
    checks.cross_row_flags(rows)
    assert flags(rows) == ["", "iterative_weaker_than_single_step"]


def test_non_monotone_sorts_by_eps_and_uses_the_smaller_n():
    rows = rows_with((row(eps=0.2), 0.3), (row(eps=0.1), 0.4))  # given in falling eps: still monotone
    checks.cross_row_flags(rows)
    assert flags(rows) == ["", ""]
    at = rows_with((row(eps=0.1), 0.5), (row(eps=0.2), 0.75))
    above = rows_with((row(eps=0.1), 0.5), (row(eps=0.2), 0.875))
    small_n = rows_with((row(eps=0.1, n=8), 0.5), (row(eps=0.2, n=400), 0.7))
    for rs in (at, above, small_n):
        checks.cross_row_flags(rs)
    assert [flags(rs) for rs in (at, above, small_n)] == [["", ""], ["", "non_monotone_in_eps"], ["", ""]]


def test_sanity_and_worst_case_rows_take_no_cross_row_flag():
    # the frozen-randomness rows at two budgets and the worst-case rows rise with eps: not an attack series
    rows = rows_with(
        (row("sanity_frozen_randomness", "sanity", eps=0.1), 0.0),
        (row("sanity_frozen_randomness", "sanity", eps=0.2), 1.0),
        (row("worst_case", eps=0.1), 0.0),
        (row("worst_case", eps=0.2), 1.0),
        (row("fgsm", steps=1, eps=0.3), 0.0),
        (row("worst_case", eps=0.3), 1.0),
    )
    checks.cross_row_flags(rows)
    assert flags(rows) == [""] * 6


def test_flag_warnings_one_line_per_flag_without_repeats():
    r = {**row(eps_label="8/255"), "robust_acc": 0.5, "flags": "non_monotone_in_eps;;made_up"}
    quiet = [{**r, "flags": f} for f in ("", None)]
    assert checks.flag_warnings([r, *quiet, dict(r)]) == [
        "p/d/seed 0, pgd linf eps 8/255 (robust 0.500): robust accuracy rises with epsilon",
        "p/d/seed 0, pgd linf eps 8/255 (robust 0.500): made_up",
    ]


# ---- scoring -------------------------------------------------------------------------------------------------
def test_outcome_keeps_adversarial_predictions_and_rejections():
    pred_clean, pred_adv, y = torch.tensor([[0, 0, 1]]), torch.tensor([[0, 1, 0]]), torch.tensor([0, 1, 1])
    plain_out = outcome(pred_clean, pred_adv, y)
    assert set(plain_out) == {"clean", "adv", "pred_adv"} and torch.equal(plain_out["pred_adv"], pred_adv)
    out = outcome(pred_clean * 3, pred_adv * 3, y, reject_label=3)  # 3: the extra "reject" class
    assert out["clean_rejected"].tolist() == [[False, False, True]]
    assert out["adv_rejected"].tolist() == [[False, True, False]]
    assert out["adv"].tolist() == [[True, True, False]] and out["clean"].tolist() == [[True, False, False]]


def test_abstention_metrics_count_over_the_right_examples():
    # y = 0..5. Clean: 0-2 right, 3 wrong and accepted, 4-5 rejected. Under attack: 0 rejected, 1 right, 2 fooled,
    # 3 rejected (not attacked: wrong clean), 4 right (not attacked), 5 rejected (not attacked).
    y = torch.arange(6)
    out = outcome(torch.tensor([[0, 1, 2, 0, 9, 9]]), torch.tensor([[9, 1, 0, 9, 4, 9]]), y, REJECT)
    assert abstention(out) == pytest.approx(
        {"clean_acc_accepted": 3 / 4, "false_rejection_rate": 2 / 6, "defense_rate": 2 / 3, "adv_rejection_rate": 1 / 3}
    )
    assert abstention(plain()) == dict.fromkeys(
        ("clean_acc_accepted", "false_rejection_rate", "defense_rate", "adv_rejection_rate")
    )
    all_rejected = abstention(outcome(torch.full((1, 3), REJECT), torch.zeros(1, 3, dtype=torch.long), y[:3], REJECT))
    assert all_rejected["false_rejection_rate"] == 1.0
    assert all(math.isnan(all_rejected[k]) for k in ("clean_acc_accepted", "defense_rate", "adv_rejection_rate"))


def test_targeted_success_over_clean_correct_draws():
    y = torch.tensor([0, 1, 2, 1])
    out = outcome(torch.tensor([[0, 1, 2, 0]]), torch.tensor([[1, 1, 0, 2]]), y)
    targets = torch.tensor([1, 2, 0, 2, 5, 5])  # longer than the cell: the first n apply
    assert targeted_success(out, targets) == pytest.approx(2 / 3), "example 3 hits its target but was wrong clean"
    two_draws = outcome(torch.tensor([[0, 1, 2, 0]] * 2), torch.tensor([[1, 1, 0, 2], [0, 2, 0, 2]]), y)
    assert targeted_success(two_draws, targets) == pytest.approx(4 / 6), "per draw: 2 of 3 and 2 of 3"
    assert math.isnan(targeted_success(outcome(torch.ones(1, 2, dtype=torch.long), torch.zeros(1, 2), y[:2] * 0),
                                       targets))  # fmt: skip


def test_head_cuts_tensors_of_every_rank_and_keeps_the_rest():
    out = {"clean": torch.ones(2, 5, dtype=torch.bool), "adv": torch.ones(2, 5, dtype=torch.bool)}
    out |= {"score": torch.arange(5), "t": torch.tensor(3), "draws": 2}
    h = head(out, 3)
    assert h["clean"].shape == (2, 3) and h["score"].tolist() == [0, 1, 2]
    assert h["t"].item() == 3 and h["draws"] == 2
    assert size(out) == 5 and size(h) == 3


def test_per_example_passes_a_reduced_outcome_through():
    reduced = {"clean": torch.tensor([1.0]), "robust": torch.tensor([0.5]), "worst_of_k": torch.tensor([False])}
    assert per_example(reduced) is reduced


def test_metrics_fields_of_a_randomized_outcome():
    # 2 draws, 3 examples: robust draws (1 + 1 + 1) / 2 = 1.5 examples, clean 2.5
    out = outcome(torch.tensor([[0, 9, 2], [0, 1, 2]]), torch.tensor([[9, 1, 2], [0, 1, 9]]), torch.tensor([0, 1, 2]))
    m = metrics(out)
    assert set(m) == {"clean_acc", "robust_acc", "robust_acc_worst_of_k", "success_rate", "n_examples", "draws",
                      "robust_acc_ci_low", "robust_acc_ci_high", "clean_acc_accepted", "false_rejection_rate",
                      "defense_rate", "adv_rejection_rate"}  # fmt: skip
    lo, hi = wilson_interval(2, 3)  # round(1.5) robust examples
    assert (m["robust_acc_ci_low"], m["robust_acc_ci_high"]) == pytest.approx((lo, hi))
    assert m["clean_acc_accepted"] is None and m["n_examples"] == 3


def test_metrics_of_edge_outcomes():
    empty = metrics({"clean": torch.ones(1, 0, dtype=torch.bool), "adv": torch.ones(1, 0, dtype=torch.bool)})
    nan_keys = ("clean_acc", "robust_acc", "robust_acc_worst_of_k", "success_rate")
    assert all(math.isnan(empty[k]) for k in nan_keys) and empty["n_examples"] == 0
    one = metrics(det([False, False], clean=[True, False]))  # exactly one clean-correct example, broken
    assert one["success_rate"] == 1.0
    none_right = metrics(det([True, False], clean=[False, False]))
    assert math.isnan(none_right["success_rate"])
    assert metrics({**per_example(det([True])), "draws": 4})["draws"] == 4
    assert metrics(per_example(det([True])))["draws"] == 1


def test_transferability_on_common_examples_either_side_shorter():
    tr = det([False, True, True, True, False, False], clean=[True, True, True, False, True, True])
    wb = det([False, False, True, True], clean=[True, True, False, False])
    for a, b in ((tr, wb), (wb, tr)):
        t = transferability(a, b, "accuracy_drop")
        assert set(t) == {"transfer_acc", "transferability_success_ratio", "transferability_accuracy_drop",
                          "transferability", "transferability_form"}  # fmt: skip
        assert t["transferability"] == pytest.approx(t["transferability_accuracy_drop"], nan_ok=True)
        assert t["transferability_form"] == "accuracy_drop (our reading of Zhang et al. 2020; formula unverified)"
    t = transferability(tr, wb, "success_ratio")
    # on 4 examples, the transfer's clean mask [T, T, T, F]: white-box fools 0, 1 (of clean-correct); transfer 0
    assert t["transferability"] == pytest.approx(1 / 2) and t["transfer_acc"] == pytest.approx(2 / 4)
    assert transferability(tr, wb, "accuracy_drop")["transferability"] == pytest.approx(0.0), "(3 - 3) / (3 - 2)"


def test_worst_case_clean_from_the_longest_and_draws_from_the_most():
    short = {"clean": torch.tensor([[False, False]]), "adv": torch.tensor([[False, False]])}
    long = outcome(torch.zeros(3, 4, dtype=torch.long), torch.tensor([[0, 0, 1, 0]] * 3), torch.zeros(4))
    union = worst_case([short, long], 4)
    assert union["clean"].tolist() == [1.0] * 4 and union["draws"] == 3
    assert union["robust"].tolist() == [0.0, 0.0, 0.0, 1.0], "the short attack ran on 2; the long one breaks 2"
    assert union["worst_of_k"].tolist() == [False, False, False, True], "an attack that did not run breaks nothing"
    again = worst_case([union, det([True] * 4)], 4)
    assert again["draws"] == 3 and metrics(again)["draws"] == 3
    assert worst_case([{**per_example(long), "draws": 2}, det([True] * 4)], 4)["draws"] == 2
    assert worst_case([per_example(det([True] * 4)), det([True] * 4)], 4)["draws"] == 1, "reduced, no draws: one"
