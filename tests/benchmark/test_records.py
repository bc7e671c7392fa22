"""The typed records from plan to report (benchmark/records.py): a cell is resolved once, a row keeps its types
through results.csv; the budget helpers, the headline budget per norm, the parse of a results.csv cell, the figures'
seed note. Some tests pin exact values found by mutation testing (`make mutate`, tests/mutation/mutate.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict

import pytest
from hand_cells import cell
from hand_rows import EPS

from benchmark.records import (
    COLUMNS,
    Budget,
    CellSpec,
    Row,
    _parse,
    budget_key,
    eps_axis,
    eps_str,
    headline_eps,
    same_eps,
)
from benchmark.results.files import read_csv, write_csv
from benchmark.runner import plan as plan_module
from benchmark.runner.config import compose

#: One deterministic and one randomized student, white-box, transfer and EOT attacks, on 16 test examples.
SWEEP = [
    "logger=none",
    "progress=false",
    "launcher=inline",
    "teacher.trainer.max_epochs=1",
    "defense=[finetune,dropout]",
    "defense.finetune.trainer.max_epochs=1",
    "defense.dropout.trainer.max_epochs=1",
    "++defense.freeze.trainer.max_epochs=1",
    "attack=[fgsm,transfer_pgd_linf,eot_pgd_linf,mimicry_linf]",
    "attack.fgsm.epsilons=[8/255]",
    "attack.transfer_pgd_linf.epsilons=[8/255]",
    "attack.transfer_pgd_linf.attack.attack.steps=2",
    "attack.eot_pgd_linf.attack.steps=2",
    "attack.eot_pgd_linf.attack.eot=2",
    "attack.mimicry_linf.epsilons=[8/255]",
    "attack.mimicry_linf.attack.steps=2",
    "eval.n_examples=16",
    "eval.draws=2",
    "eval.sanity_examples=4",
    "eval.detection=false",
]


@pytest.fixture(scope="module")
def planned(tmp_path_factory):
    from benchmark.runner.planner import make_plan

    tmp = tmp_path_factory.mktemp("records")
    cfg = compose([*SWEEP, f"cache_dir={tmp / 'cache'}", f"results_dir={tmp / 'results'}"])
    return cfg, make_plan(cfg)[0]


def test_every_cell_is_resolved_once_into_its_spec(planned):
    _, plan = planned
    cells = plan.cells()
    assert cells and all(isinstance(c, CellSpec) and isinstance(c.budget, Budget) for c in cells)
    by_name = {(c.defense, c.name): c for c in cells if c.role != "reference"}
    fgsm = by_name[("finetune", "fgsm")]
    assert (fgsm.budget.norm, fgsm.budget.label, fgsm.threat_model) == ("linf", "8/255", "white-box")
    assert fgsm.budget.eps == pytest.approx(8 / 255) and fgsm.steps == 1
    transfer = by_name[("finetune", "transfer_pgd_linf")]
    assert transfer.crafted and transfer.transfer and transfer.surrogate == "teacher" and transfer.reference
    assert by_name[("finetune", "mimicry_linf")].targeted
    # the unbounded sanity check carries its own budget: eps 1, label "1", not the EOT attack's 16/255
    unbounded = by_name[("dropout", "sanity_unbounded")]
    assert (unbounded.budget.eps, unbounded.budget.label, unbounded.threat_model) == (1.0, "1", "sanity")
    assert unbounded.base == by_name[("dropout", "eot_pgd_linf")].id


def test_the_plan_survives_json_with_its_specs(planned):
    _, plan = planned
    back = plan_module.Plan.from_json(plan.to_json())
    assert back.cells() == plan.cells()
    assert back.stages == plan.stages


@pytest.mark.slow
def test_no_attack_is_built_after_planning(planned, monkeypatch):
    """Execute and rows take every attack from the plan (`Plan.attack`): none is constructed again in this process."""
    from attacks.base import Attack
    from benchmark.runner.execute import Executor
    from benchmark.runner.rows import make_rows

    cfg, plan = planned
    built = []
    original = Attack.__init__

    def counted(self, *args, **kwargs):
        built.append(type(self).__name__)
        original(self, *args, **kwargs)

    monkeypatch.setattr(Attack, "__init__", counted)
    done = Executor(cfg, plan).run()
    rows, _ = make_rows(cfg, plan, done)
    assert not built, f"{len(built)} attack(s) built after planning: {sorted(set(built))}"
    assert {r.attack for r in rows} >= {"fgsm", "transfer_pgd_linf", "mimicry_linf", "sanity_unbounded"}
    unbounded = next(r for r in rows if r.attack == "sanity_unbounded")
    assert (unbounded.eps, unbounded.eps_label) == (1.0, "1")
    mimicry = next(r for r in rows if r.attack == "mimicry_linf" and r.defense == "finetune")
    assert mimicry.targeted_success is not None


def test_a_row_keeps_its_types_through_results_csv(tmp_path):
    row = Row(
        row_id="p/d/seed3/pgd/linf/8/255",
        seed=3,
        norm="linf",
        eps=8 / 255,
        eps_label="8/255",
        steps=20,
        clean_acc=0.75,
        robust_acc=math.nan,
        n_examples=128,
        draws=8,
        fooling_rate=None,
        forward_passes=1234,
        randomized_defense=True,
        flags="a;b",
    )
    write_csv([row, Row(row_id="x", eps=1.0)], tmp_path / "results.csv")
    back = read_csv(tmp_path / "results.csv")
    got = back[0]
    assert (got.seed, got.steps, got.n_examples, got.draws, got.forward_passes) == (3, 20, 128, 8, 1234)
    assert got.eps == 8 / 255 and got.clean_acc == 0.75 and math.isnan(got.robust_acc)
    assert got.fooling_rate is None and got.randomized_defense is True and got.flag_list == ["a", "b"]
    assert {k: repr(v) for k, v in got.csv().items()} == {k: repr(v) for k, v in row.csv().items()}
    assert back[1].transferability is None and back[1].randomized_defense is False


def test_one_grouping_rule_for_budgets():
    assert budget_key("linf", 16 / 255) == budget_key("linf", 16 / 255 + 1e-12)
    assert budget_key("linf", 16 / 255) != budget_key("l2", 16 / 255)
    rows = [Row(norm="linf", eps=e) for e in (4 / 255, 8 / 255, 16 / 255)] + [Row(norm="l2", eps=0.5)]
    assert headline_eps(rows, {"linf": 8 / 255}) == {"linf": 8 / 255, "l2": 0.5}
    assert headline_eps(rows, {"linf": 1.0}) == {"linf": budget_key("linf", 8 / 255)[1], "l2": 0.5}, "the median"


# ---- records ------------------------------------------------------------------------------------------------
def test_budget_helpers():
    assert budget_key("linf", "0.5") == ("linf", 0.5) and budget_key("l2", 1 / 3) == ("l2", 0.3333333333)
    assert Budget("linf", EPS, "8/255").key == budget_key("linf", EPS)
    assert same_eps(0.1, 0.1 + 9e-10) and not same_eps(0.1, 0.1 + 1.1e-9) and same_eps("0.1", 0.1)
    assert not same_eps(0.0, 1e-9), "closer than 1e-9"
    assert not same_eps(0.1 + 1.1e-9, 0.1)
    assert eps_str("linf", EPS) == "8/255" and eps_str("linf", 1.23456 / 255) == "1.235/255"
    assert eps_str("linf", 0.5 / 255) == "0.5/255" and eps_str("l2", 0.5) == "0.5" and eps_str("dssim", 1e-7) == "1e-07"
    assert eps_str("linf", math.nan) == "-" and eps_str("l2", 100000.0) == "100000"
    assert [eps_axis(n) for n in ("linf", "l2", "dssim", "patch", "l1")] == [
        "epsilon (x/255)", "epsilon (L2)", "DSSIM threshold P", "patch area (fraction)", "budget (l1)"]  # fmt: skip


def test_the_headline_budget_per_norm():
    rows = [Row(norm="l2", eps=e) for e in (0.25, 0.5)] + [Row(norm="linf", eps=e) for e in (1, 2, 3, 4, 4 + 1e-12)]
    assert list(headline_eps(rows, {})) == ["linf", "l2"], "L-inf first"
    for others in (["patch"], ["l2", "dssim", "patch"], ["dssim"]):
        mixed = [Row(norm=n, eps=0.5) for n in [*others, "linf"]]
        assert list(headline_eps(mixed, {}))[0] == "linf", others
    assert headline_eps(rows, {}) == {"linf": 3, "l2": 0.5}, "the upper median of the distinct swept values"
    assert headline_eps(rows, {"linf": 2, "l2": None}) == {"linf": 2, "l2": 0.5}
    assert headline_eps(rows, {"linf": 2 + 5e-10}) == {"linf": 2 + 5e-10, "l2": 0.5}, "the configured value"
    assert headline_eps(rows, {"linf": 5}) == {"linf": 3, "l2": 0.5}, "not swept: the median"
    assert headline_eps([Row(norm="dssim", eps=0.1)], {"linf": 1}) == {"dssim": 0.1}


def test_a_cell_spec_through_json_and_a_rows_columns():
    x = cell(craft="c", reference="r", base="b")
    assert CellSpec.from_json(asdict(x)) == x and isinstance(CellSpec.from_json(asdict(x)).budget, Budget)
    r = Row(norm="linf", eps=EPS, flags="a;;b", cell=x)
    assert r.flag_list == ["a", "b"] and Row().flag_list == [] and r.budget_key == budget_key("linf", EPS)
    assert list(r.csv()) == COLUMNS and "cell" not in COLUMNS and r.csv()["flags"] == "a;;b"
    back = Row.from_csv({"seed": "3", "eps": "0.5", "flags": "x"})
    assert (back.seed, back.eps, back.flags, back.attack, back.cell) == (3, 0.5, "x", "", None)


@pytest.mark.parametrize(
    "text, kind, want",
    [("", float | None, None), ("None", int | None, None), ("", str, ""), ("None", str, ""), ("", int, None),
     ("True", bool, True), ("False", bool, False), ("true", bool, False), ("3.0", int, 3), ("7", int | None, 7),
     ("0.5", float | None, 0.5), ("x", str | None, "x"), ("x", str, "x"), ("1", float, 1.0)],
)  # fmt: skip
def test_parse_a_results_csv_cell(text, kind, want):
    got = _parse(text, kind)
    assert got == want and type(got) is type(want)


def test_a_figures_seed_note_follows_the_number_of_seeds():
    from benchmark.records import seed_note

    one = "one training seed: one trained model per defense, not the method"
    assert seed_note(1, "band") == one and seed_note(0, "band") == one
    assert seed_note(2, "band: min-max over seeds") == "mean over 2 seeds; band: min-max over seeds"
    assert seed_note(3, "x") == "mean over 3 seeds; x"
