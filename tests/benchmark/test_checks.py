"""The sanity rules (benchmark/checks.py) and the counting rule (benchmark/stages/score.py) on hand-made outcomes.

Each test pins a behaviour that decides a published number or flag, on outcomes where the distinction shows.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from benchmark import checks
from benchmark.detection import detection_auroc
from benchmark.records import Row
from benchmark.stages.score import metrics, outcome, per_example, worst_case


def det(adv: list[bool], clean: list[bool] | None = None) -> dict:
    """A deterministic model's outcome (one draw)."""
    a = torch.tensor([adv])
    c = torch.ones_like(a) if clean is None else torch.tensor([clean])
    return {"clean": c, "adv": a}


def row(attack: str, threat: str = "white-box", steps: int = 20, n: int = 8, eps: float = 16 / 255, **kw) -> Row:
    return Row(attack=attack, threat_model=threat, norm="linf", eps=eps, steps=steps, n_examples=n, flags="", **kw)


# ---- counting ------------------------------------------------------------------------------------------------
def test_one_counting_rule_per_draw():
    # 2 draws, 3 examples. Example 1 is wrong clean in draw 0 but right under attack there: not robust in draw 0.
    pred_clean = torch.tensor([[0, 9, 2], [0, 1, 2]])
    pred_adv = torch.tensor([[9, 1, 2], [0, 1, 9]])
    out = outcome(pred_clean, pred_adv, torch.tensor([0, 1, 2]))
    p = per_example(out)
    assert p["clean"].tolist() == [1.0, 0.5, 1.0]
    assert p["robust"].tolist() == [0.5, 0.5, 0.5], "robust in a draw = right clean AND under attack in that draw"
    assert p["worst_of_k"].tolist() == [False, False, False]
    m = metrics(out)
    assert m["robust_acc"] == pytest.approx(1.5 / 3) and m["clean_acc"] == pytest.approx(2.5 / 3)
    assert m["success_rate"] == pytest.approx(1 - 1.5 / 2.5)
    assert m["draws"] == 2


def test_deterministic_counting_needs_clean_and_adversarial_correct():
    out = det([True, True, False, False], clean=[True, False, True, False])
    m = metrics(out)
    assert m["robust_acc"] == pytest.approx(1 / 4), "an example wrong clean is never robust"
    assert m["success_rate"] == pytest.approx(1 / 2)


def test_success_rate_is_never_negative_for_a_randomized_model():
    # the attack happens to make draws right that were wrong clean: the old rule gave 1 - 1.0 / 0.5 < 0
    out = outcome(torch.tensor([[0, 9], [9, 1]]), torch.tensor([[0, 1], [0, 1]]), torch.tensor([0, 1]))
    assert metrics(out)["success_rate"] >= 0


def test_worst_of_k_is_the_worst_draw_and_worst_case_the_worst_attack():
    y = torch.tensor([0, 0])
    a = outcome(torch.zeros(3, 2, dtype=torch.long), torch.tensor([[0, 0], [0, 1], [0, 0]]), y)
    b = outcome(torch.zeros(3, 2, dtype=torch.long), torch.tensor([[1, 0], [1, 0], [0, 0]]), y)
    assert per_example(a)["worst_of_k"].tolist() == [True, False], "one wrong draw breaks the worst of K"
    assert metrics(a)["robust_acc_worst_of_k"] == pytest.approx(0.5)
    union = worst_case([a, b], 2)
    assert union["robust"].tolist() == pytest.approx([1 / 3, 2 / 3]), "per example, the lower robust fraction"
    assert union["worst_of_k"].tolist() == [False, False]


def test_worst_case_covers_the_whitebox_examples_and_pads_shorter_attacks():
    eot = det([True, True, True, False, True, True])
    aa = det([False, True])
    transfer = det([True] * 5 + [False] + [True] * 2)
    union = worst_case([transfer, eot, aa], 6)
    assert metrics(union)["n_examples"] == 6
    assert metrics(union)["robust_acc"] == pytest.approx(3 / 6), "example 0 by aa, 3 by eot, 5 by the transfer"


# ---- per-example checks ---------------------------------------------------------------------------------
def test_transfer_stronger_than_a_whitebox_attack_is_flagged_whatever_the_shortest_row():
    # EOT-PGD on 128 examples leaves 80 %; transfer on 128 leaves 45 %; AutoAttack-rand on 8 breaks all 8.
    eot = det([True] * 102 + [False] * 26)
    transfer = det([True] * 58 + [False] * 70)
    aa = det([False] * 8)
    tr_row = row("transfer_pgd_linf", "transfer", n=128)
    checks.transfer_vs_whitebox(tr_row, transfer, [(row("eot", n=128), eot), (row("aa", steps=100, n=8), aa)])
    assert tr_row.flags == "transfer_stronger_than_whitebox"


def test_transfer_check_compares_on_common_examples_only():
    wb = det([False, True, True, True])  # on the first 4 examples, breaks 1
    tr_row = row("transfer", "transfer")
    checks.transfer_vs_whitebox(tr_row, det([False, True, True, True] + [False] * 4), [(row("eot", n=4), wb)])
    assert tr_row.flags == "", "on the 4 common examples the transfer attack is not stronger"
    single = row("transfer", "transfer")
    checks.transfer_vs_whitebox(single, det([False] * 8), [(row("fgsm", steps=1), det([True] * 8))])
    assert single.flags == "", "a single-step white-box attack may be weaker than an iterative transfer"


def test_with_frozen_randomness_the_attack_must_succeed():
    randomized = det([True] * 10 + [False] * 22)
    healthy, masked = row("sanity_frozen_randomness", "sanity"), row("sanity_frozen_randomness", "sanity")
    checks.frozen_randomness(healthy, det([True] * 2 + [False] * 30), randomized)
    checks.frozen_randomness(masked, det([True] * 8 + [False] * 24), randomized)
    assert healthy.flags == "" and masked.flags == "frozen_randomness_attack_fails"
    assert masked.sanity_reference == pytest.approx(10 / 32)


def test_doubled_attack_lower_than_the_base_is_not_converged():
    base = det([True] * 16 + [False] * 16)
    ok, bad = row("eot_x2"), row("eot_x2")
    checks.converged(ok, det([True] * 15 + [False] * 17), base)
    checks.converged(bad, det([True] * 8 + [False] * 24), base)
    assert ok.flags == "" and bad.flags == "eot_attack_not_converged"


def test_unbounded_attack_must_break_every_example():
    # 32 examples: tolerance 2/32. 10 % left is chance for 10 classes, and still a failure of an unbounded attack.
    fails, passes = row("sanity_unbounded", "sanity"), row("sanity_unbounded", "sanity")
    checks.unbounded(fails, det([True] * 3 + [False] * 29))
    checks.unbounded(passes, det([True] * 1 + [False] * 31))
    assert fails.flags == "unbounded_attack_not_chance" and passes.flags == ""


def test_tolerance_shrinks_with_n():
    assert checks.tolerance(8) == pytest.approx(0.25)
    assert checks.tolerance(1000) == pytest.approx(0.01)


# ---- cross-row checks -------------------------------------------------------------------------------------------
def _rows(**robust) -> list[Row]:
    base = {"pair": "p", "defense": "d", "seed": 0, "eps_label": "x"}
    return [replace(r, **base, robust_acc=v) for r, v in robust.values()]


def test_iterative_weaker_than_single_step_uses_the_smaller_n():
    # pgd on 400 examples (tolerance 1 point) vs fgsm on 8: the tolerance of 8 examples (25 points) applies
    rows = _rows(
        fgsm=(row("fgsm", steps=1, n=8), 0.50),
        pgd=(row("pgd", n=400), 0.60),
    )
    checks.cross_row_flags(rows)
    assert all(r.flags == "" for r in rows)
    rows = _rows(fgsm=(row("fgsm", steps=1, n=400), 0.50), pgd=(row("pgd", n=400), 0.60))
    checks.cross_row_flags(rows)
    assert rows[1].flags == "iterative_weaker_than_single_step"


def test_non_monotone_in_eps():
    rows = _rows(
        a=(row("pgd", eps=8 / 255, n=100), 0.30),
        b=(row("pgd", eps=16 / 255, n=100), 0.40),
        c=(row("pgd", eps=32 / 255, n=100), 0.10),
    )
    checks.cross_row_flags(rows)
    assert [r.flags for r in rows] == ["", "non_monotone_in_eps", ""]


def test_every_flag_is_documented():
    r = Row()
    with pytest.raises(KeyError, match="undocumented flag"):
        checks.add_flag(r, "made_up")


# ---- detection -----------------------------------------------------------------------------------------------------
def test_detection_auroc_of_a_randomized_model_uses_draw_zero_only():
    # draw 0: examples 0, 1 clean-correct, example 1 fooled. Draw 1 says other things, which must not matter.
    out = {
        "clean": torch.tensor([[True, True, False], [False, True, True]]),
        "adv": torch.tensor([[True, False, False], [False, True, False]]),
        "score_clean": torch.tensor([0.1, 0.2, 0.3]),
        "score_adv": torch.tensor([0.5, 0.9, 0.0]),
    }
    assert detection_auroc(out) == pytest.approx(1.0), "negatives: clean 0 and 1 (0.1, 0.2); positive: adv 1 (0.9)"
    out["clean"][1] = torch.tensor([True, False, False])
    assert detection_auroc(out) == pytest.approx(1.0)
