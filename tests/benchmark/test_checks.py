"""The sanity rules (benchmark/runner/checks.py) and the counting rule (benchmark/runner/stages/score.py) on hand-made
outcomes and rows: the tolerance and the flags, the per-example rules, the reject option, the rules across rows, the
dispatch of one model's checks and AutoAttack's flags.

Each test pins a behaviour that decides a published number or flag, on outcomes where the distinction shows: the
boundaries of every tolerance, which rows a rule compares. Some tests pin exact values found by mutation testing
(`make mutate`, tests/mutation/mutate.py).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hand_cells import cell

from benchmark.records import Row
from benchmark.runner import checks
from benchmark.runner.detection import detection_auroc
from benchmark.runner.stages.score import metrics, outcome, per_example, worst_case


def det(adv: list[bool], clean: list[bool] | None = None) -> dict:
    """A deterministic model's outcome (one draw)."""
    a = torch.tensor([adv])
    c = torch.ones_like(a) if clean is None else torch.tensor([clean])
    return {"clean": c, "adv": a}


def bare_row(attack: str, threat: str = "white-box", steps: int = 20, n: int = 8, eps: float = 16 / 255, **kw) -> Row:
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
    tr_row = bare_row("transfer_pgd_linf", "transfer", n=128)
    checks.transfer_vs_whitebox(tr_row, transfer, [(bare_row("eot", n=128), eot), (bare_row("aa", steps=100, n=8), aa)])
    assert tr_row.flags == "transfer_stronger_than_whitebox"


def test_transfer_check_compares_on_common_examples_only():
    wb = det([False, True, True, True])  # on the first 4 examples, breaks 1
    tr_row = bare_row("transfer", "transfer")
    checks.transfer_vs_whitebox(tr_row, det([False, True, True, True] + [False] * 4), [(bare_row("eot", n=4), wb)])
    assert tr_row.flags == "", "on the 4 common examples the transfer attack is not stronger"
    single = bare_row("transfer", "transfer")
    checks.transfer_vs_whitebox(single, det([False] * 8), [(bare_row("fgsm", steps=1), det([True] * 8))])
    assert single.flags == "", "a single-step white-box attack may be weaker than an iterative transfer"


def test_with_frozen_randomness_the_attack_must_succeed():
    randomized = det([True] * 10 + [False] * 22)
    healthy, masked = bare_row("sanity_frozen_randomness", "sanity"), bare_row("sanity_frozen_randomness", "sanity")
    checks.frozen_randomness(healthy, det([True] * 2 + [False] * 30), randomized)
    checks.frozen_randomness(masked, det([True] * 8 + [False] * 24), randomized)
    assert healthy.flags == "" and masked.flags == "frozen_randomness_attack_fails"
    assert masked.sanity_reference == pytest.approx(10 / 32)


def test_doubled_attack_lower_than_the_base_is_not_converged():
    base = det([True] * 16 + [False] * 16)
    ok, bad = bare_row("eot_x2"), bare_row("eot_x2")
    checks.converged(ok, det([True] * 15 + [False] * 17), base)
    checks.converged(bad, det([True] * 8 + [False] * 24), base)
    assert ok.flags == "" and bad.flags == "eot_attack_not_converged"


def test_unbounded_attack_must_break_every_example():
    # 32 examples: tolerance 2/32. 10 % left is chance for 10 classes, and still a failure of an unbounded attack.
    fails, passes = bare_row("sanity_unbounded", "sanity"), bare_row("sanity_unbounded", "sanity")
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
        fgsm=(bare_row("fgsm", steps=1, n=8), 0.50),
        pgd=(bare_row("pgd", n=400), 0.60),
    )
    checks.cross_row_flags(rows)
    assert all(r.flags == "" for r in rows)
    rows = _rows(fgsm=(bare_row("fgsm", steps=1, n=400), 0.50), pgd=(bare_row("pgd", n=400), 0.60))
    checks.cross_row_flags(rows)
    assert rows[1].flags == "iterative_weaker_than_single_step"


def test_non_monotone_in_eps():
    rows = _rows(
        a=(bare_row("pgd", eps=8 / 255, n=100), 0.30),
        b=(bare_row("pgd", eps=16 / 255, n=100), 0.40),
        c=(bare_row("pgd", eps=32 / 255, n=100), 0.10),
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


REJECT = 9


def robust(k: int, n: int) -> dict:
    """n examples, the first k robust."""
    return det([True] * k + [False] * (n - k))


def row(attack: str = "pgd", threat: str = "white-box", steps: int = 20, n: int = 8, eps: float = 0.1, **kw) -> Row:
    fields = {"pair": "p", "defense": "d", "seed": 0, "attack": attack, "threat_model": threat, "norm": "linf",
              "eps": eps, "eps_label": "x", "steps": steps, "n_examples": n, "flags": "", **kw}  # fmt: skip
    return Row(**fields)


def read_back(r: Row, **text: str) -> Row:
    """The row as results.csv gives it back (every column a string; `text` replaces some)."""
    return Row.from_csv({**{k: str(v) for k, v in r.csv().items()}, **text})


def flags(rows: list[Row]) -> list[str]:
    return [r.flags for r in rows]


# ---- tolerance and flags -------------------------------------------------------------------------------------
def test_tolerance_is_two_examples_with_a_floor_of_one_point():
    assert [checks.tolerance(n) for n in (0, 1, 100, 200, 400)] == pytest.approx([2.0, 2.0, 0.02, 0.01, 0.01])


def test_a_flag_is_added_once_after_the_others():
    r = Row()
    checks.add_flag(r, "unbounded_attack_not_chance")
    assert r.flags == "unbounded_attack_not_chance"
    checks.add_flag(r, "non_monotone_in_eps")
    checks.add_flag(r, "unbounded_attack_not_chance")
    checks.add_flag(r, "non_monotone_in_eps")
    assert r.flags == "unbounded_attack_not_chance;non_monotone_in_eps"
    none = read_back(Row(), flags="None")  # a results.csv row read back without flags
    checks.add_flag(none, "non_monotone_in_eps")
    assert none.flags == "non_monotone_in_eps"
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
    assert r.flags == "", "another norm or epsilon is another threat"
    checks.transfer_vs_whitebox(r, robust(0, 8), [*others, (row(), wb)])
    assert r.flags == "transfer_stronger_than_whitebox", "a non-matching row must not end the search"


@pytest.mark.parametrize("tr_eps, wb_eps", [(0.1, 0.1 + 3e-11), (0.1 + 3e-11, 0.1)])
def test_transfer_eps_match_ignores_float_noise_below_1e_10(tr_eps, wb_eps):
    r = row("transfer", "transfer", eps=tr_eps)
    checks.transfer_vs_whitebox(r, robust(0, 8), [(row(eps=wb_eps), robust(8, 8))])
    assert r.flags == "transfer_stronger_than_whitebox"


def test_transfer_is_compared_on_the_whitebox_examples_not_its_own():
    # the white-box attack ran on 16 examples (12 robust); the transfer attack on 64: none of the first 16 robust,
    # all 48 others. On the common 16 the transfer attack is far stronger; over its own 64 it is not.
    transfer = det([False] * 16 + [True] * 48)
    r = row("transfer", "transfer", n=64)
    checks.transfer_vs_whitebox(r, transfer, [(row(n=16), robust(12, 16))])
    assert r.flags == "transfer_stronger_than_whitebox"


def test_frozen_randomness_boundary_and_reference_on_common_examples():
    # frozen on 8 examples (tolerance 0.25); the randomized model's outcome covers 16, 4 of the first 8 robust
    randomized = det([True] * 4 + [False] * 4 + [False] * 8)
    at, above = row("sanity_frozen_randomness", "sanity"), row("sanity_frozen_randomness", "sanity")
    checks.frozen_randomness(at, robust(2, 8), randomized)
    checks.frozen_randomness(above, robust(3, 8), randomized)
    assert flags([at, above]) == ["", "frozen_randomness_attack_fails"]
    assert at.sanity_reference == pytest.approx(0.5), "the reference is on the frozen attack's 8 examples"


def test_converged_boundary_and_reference_on_common_examples():
    base = det([True] * 6 + [False] * 2 + [False] * 8)  # 6/8 on the doubled attack's 8 examples
    at, below = row("eot_x2"), row("eot_x2")
    checks.converged(at, robust(4, 8), base)
    checks.converged(below, robust(3, 8), base)
    assert flags([at, below]) == ["", "eot_attack_not_converged"]
    assert at.sanity_reference == pytest.approx(0.75)


def test_unbounded_boundary_uses_the_number_of_examples():
    at, above = row("sanity_unbounded", "sanity"), row("sanity_unbounded", "sanity")
    checks.unbounded(at, robust(2, 8))
    checks.unbounded(above, robust(3, 8))
    assert flags([at, above]) == ["", "unbounded_attack_not_chance"]
    # two draws of 8 examples: 4 robust draws of 16 is 0.25, within the tolerance of 8 examples
    two = {"clean": torch.ones(2, 8, dtype=torch.bool), "adv": torch.tensor([[True] * 2 + [False] * 6] * 2)}
    r = row("sanity_unbounded", "sanity")
    checks.unbounded(r, two)
    assert r.flags == ""


# ---- the reject option ---------------------------------------------------------------------------------------
def aware(r: Row, reject_aware: bool = True) -> Row:
    """The row with a cell: one aimed at the reject decision (`reject_aware`), or not."""
    return replace(r, cell=cell(r.norm, r.eps, reject_aware=reject_aware))


def rejecting() -> dict:
    return outcome(torch.tensor([[0, REJECT]]), torch.tensor([[REJECT, 1]]), torch.tensor([0, 1]), REJECT)


def plain() -> dict:
    return outcome(torch.tensor([[0, 1]]), torch.tensor([[1, 1]]), torch.tensor([0, 1]))


def test_without_an_adaptive_attack_every_non_sanity_row_is_flagged():
    made = [(row(), plain()), (aware(row("fgsm"), False), rejecting()), (row("s", "sanity"), plain())]
    worst = [row("worst_case"), row("worst_case", "sanity")]
    checks.abstaining_without_adaptive_attack(made, worst)
    ignores = "ignores_reject_option;no_adaptive_attack"  # white-box attacks that ignore the reject option
    assert flags([m[0] for m in made]) == [ignores, ignores, ""]
    assert flags(worst) == ["no_adaptive_attack", ""]


def test_a_model_that_never_rejects_gets_no_adaptive_flag():
    made = [(row(), plain())]
    checks.abstaining_without_adaptive_attack(made, [row("worst_case")])
    assert made[0][0].flags == ""


def test_an_adaptive_attack_covers_its_norm_and_eps_only():
    made = [(aware(row("aware")), rejecting()), (row(eps=0.2), rejecting())]
    worst = [row("worst_case"), row("worst_case", eps=0.2), row("worst_case", norm="l2"),
             row("worst_case", eps=0.1 + 3e-11)]  # fmt: skip
    checks.abstaining_without_adaptive_attack(made, worst)
    assert flags([m[0] for m in made]) == ["", "ignores_reject_option"], (
        "with an adaptive attack only the worst case is judged; the plain white-box row ignores the reject option"
    )
    assert flags(worst) == ["", "no_adaptive_attack", "no_adaptive_attack", ""]
    shifted = [row("worst_case")]
    checks.abstaining_without_adaptive_attack([(aware(row(eps=0.1 + 3e-11)), rejecting())], shifted)
    assert shifted[0].flags == ""


# ---- rules across rows ---------------------------------------------------------------------------------------
def rows_with(*specs: tuple[Row, float]) -> list[Row]:
    return [replace(r, robust_acc=acc) for r, acc in specs]


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
    # a row read back from results.csv (seed and eps parsed from text) against one made in memory
    rows = rows_with((read_back(row("fgsm", steps=1)), 0.0), (row(eps=0.1 + 3e-11), 1.0))
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
    r = row(eps_label="8/255", robust_acc=0.5, flags="non_monotone_in_eps;;made_up")
    quiet = [replace(r, flags=""), read_back(r, flags="None")]
    assert checks.flag_warnings([r, *quiet, replace(r)]) == [
        "p/d/seed 0, pgd linf eps 8/255 (robust 0.500): robust accuracy rises with epsilon",
        "p/d/seed 0, pgd linf eps 8/255 (robust 0.500): made_up",
    ]


# ---- one model's per-example checks: which rule each cell goes to -------------------------------------------
def test_model_checks_sends_each_cell_to_its_rule_with_its_base(monkeypatch):
    calls = []
    for name in ("transfer_vs_whitebox", "frozen_randomness", "converged", "unbounded"):
        monkeypatch.setattr(checks, name, lambda *a, name=name: calls.append((name, *a)))
    monkeypatch.setattr(checks, "abstaining_without_adaptive_attack", lambda *a: calls.append(("abstain", *a)))
    base = cell(label="b")
    made = [
        (wb := row(cell=base), o_wb := robust(4, 8)),
        (tr := row("transfer", "transfer", cell=cell(label="t", crafted=True, threat_model="transfer")), o_tr := {}),
        (fr := row("frozen", "sanity", cell=cell(label="f", role="frozen", base=base.id)), o_fr := {}),
        (x2 := row("x2", "sanity", cell=cell(label="x", role="x2", base=base.id)), o_x2 := {}),
        (ub := row("unb", "sanity", cell=cell(label="u", role="unbounded", base="nowhere")), o_ub := {}),
    ]
    outcomes = {base.id: o_wb}
    worst = [(w := row("worst_case", cell=None), {})]
    checks.model_checks(made, worst, outcomes)
    assert [c[0] for c in calls] == ["transfer_vs_whitebox", "frozen_randomness", "converged", "unbounded", "abstain"]
    assert calls[0][1] is tr and calls[0][2] is o_tr and calls[0][3] == [(wb, o_wb)], "the white-box rows only"
    assert calls[1][1:] == (fr, o_fr, o_wb) and calls[2][1:] == (x2, o_x2, o_wb), "each against its base's outcome"
    assert calls[3][1:] == (ub, o_ub)
    assert calls[4][1] is made and calls[4][2] == [w]


def test_model_checks_without_a_base_passes_none_and_a_white_box_cell_goes_nowhere(monkeypatch):
    calls = []
    monkeypatch.setattr(checks, "converged", lambda *a: calls.append(a))
    monkeypatch.setattr(checks, "transfer_vs_whitebox", lambda *a: calls.append(("transfer", *a)))
    monkeypatch.setattr(checks, "abstaining_without_adaptive_attack", lambda *a: None)
    x2 = row("x2", "sanity", cell=cell(label="x", role="x2"))  # no base: looked up as "" (absent)
    checks.model_checks([(row(cell=cell()), {}), (x2, {})], [], {"": "the empty id's outcome"})
    assert calls == [(x2, {}, "the empty id's outcome")], "a missing base is looked up under the empty id"
    calls.clear()
    checks.model_checks([(row(cell=cell()), {})], [], {})
    assert calls == []


def test_autoattack_flags_are_each_flag_once_in_the_order_raised():
    messages = [
        "the model looks like a dynamic defense; see the flags",
        "Square Attack has decreased the robust accuracy of 2.0 %",
        "it seems to be a randomized defense",
        "dynamic defense again",
        "nothing to report",
    ]
    assert checks.autoattack_flags(messages) == [
        "autoattack_dynamic",
        "autoattack_square_helps",
        "autoattack_randomized",
    ]
    assert checks.autoattack_flags([]) == [] and checks.autoattack_flags(["unrelated"]) == []
