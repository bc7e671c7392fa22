"""The rows of a sweep (benchmark/runner/rows.py) from a hand-made plan and hand-made outcomes: every field a row takes
from its model, its cell and its outcome, the transferability, the targeted success, the per-example worst case and the
per-example lists. No training, no attack. Some tests pin exact values found by mutation testing (`make mutate`,
tests/mutation/mutate.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from hand_cells import cell, train_stage
from hand_rows import EPS

from benchmark.records import CellSpec, budget_key
from benchmark.runner.execute import Executed
from benchmark.runner.plan import CellStage, Plan, Stage, TrainStage
from benchmark.runner.rows import _rounded, make_rows, row_id
from benchmark.runner.stages.score import outcome, target_hits, targeted_success

Y = torch.tensor([0, 1, 2, 0, 1, 2])


def out(clean: list[int], adv: list[int], n: int = 6, reject: int | None = None, **extra) -> dict:
    """A deterministic outcome on the first n examples from its clean and adversarial predictions."""
    o = outcome(torch.tensor([clean]), torch.tensor([adv]), Y[:n], reject)
    return {**o, **extra}


class Targets:
    """A targeted attack's `target_classes`, recording what it was given."""

    def __init__(self):
        self.calls = []

    def target_classes(self, x, y, num_classes):
        self.calls.append((x, y, num_classes))
        return (y + 1) % num_classes


def model_stage(sid: str, kind: str, defense: str, key: str, deps=(), mode: str | None = None) -> TrainStage:
    module = {"_target_": "m.M", **({"mode": mode} if mode else {})}
    return train_stage(sid, *deps, kind=kind, key=key, defense=defense, module=module)


def cell_stage(x: CellSpec) -> CellStage:
    return CellStage(id=x.id, kind="cell", key=x.id, deps=[x.model], cell=x)


def c(model: str, name: str, eps: float = EPS, label: str = "8/255", **kw) -> CellSpec:
    defense = model.split("/")[1]
    return cell(
        "linf", eps, label, **{"id": f"{model}/{name}/{label}", "model": model, "defense": defense, "name": name, **kw}
    )


@pytest.fixture
def sweep():
    """A teacher, a student with no cells, a fine-tuned student (PGD at a second budget, white-box PGD on 4 examples,
    FGSM on 2, a transfer attack on 6 after its white-box reference) and a two-stage randomized student (a
    transfer attack without reference, a targeted mimicry attack, a sanity cell)."""
    ft, two = "p/finetune/seed0", "p/two/seed0"
    cells = {
        "teacher": c("p/teacher", "pgd", n=6),
        "pgd2": c(ft, "pgd", eps=0.2, label="0.2", n=6),
        "pgd": c(ft, "pgd", steps=10, n=4),
        "fgsm": c(ft, "fgsm", label="0.0313725", steps=1, n=2),  # the same budget under another label
        "reference": c(ft, "reference", role="reference", n=6),
        "transfer": c(ft, "transfer", threat_model="transfer", surrogate="teacher", crafted=True, transfer=True,
                      reference=f"{ft}/reference/8/255", n=6, steps=10),
        "t2": c(two, "transfer", threat_model="transfer", crafted=True, transfer=True, n=6, randomized=True, draws=3),
        "mimicry": c(two, "mimicry", threat_model="mimicry", crafted=True, targeted=True, n=4, randomized=True),
        "unbounded": c(two, "sanity_unbounded", threat_model="sanity", role="unbounded", n=6, randomized=True),
    }  # fmt: skip
    stages = [
        model_stage("p/teacher", "teacher", "teacher", "kt"),
        model_stage("p/empty/seed0", "student", "empty", "ke", ["p/teacher"], "freeze"),
        model_stage(ft, "student", "finetune", "kf", ["p/teacher"], "finetune"),
        model_stage(two, "student", "two", "k2", ["p/teacher", ft, "p/empty/seed0"], "finetune"),
        Stage(id="p/teacher/craft", kind="craft", key="kc", deps=[]),
        *map(cell_stage, cells.values()),
    ]
    plan = Plan("exp", {"p": {"source": "S", "target": "T", "num_classes": 3}}, stages)
    targets = Targets()
    plan._attacks[cells["mimicry"].id] = targets
    noisy = {"clean": torch.tensor([[1, 1, 1, 1, 1, 1], [1, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]).bool(),
             "adv": torch.tensor([[1, 0, 1, 1, 0, 0], [1, 1, 0, 1, 0, 0], [1, 1, 1, 0, 0, 0]]).bool()}  # fmt: skip
    outcomes = {
        "teacher": out([0, 1, 2, 0, 1, 2], [0, 1, 2, 0, 1, 2]),
        "pgd": out([0, 1, 2, 1], [0, 2, 2, 1], 4),  # clean 3/4; robust examples 0, 2
        "fgsm": out([0, 1], [0, 2], 2, score_clean=torch.tensor([0.1, 0.2]), score_adv=torch.tensor([0.9, 0.8])),
        # transfer: robust 0, 1, 3 of the 4; example 3 wrong clean but right under the transfer attack
        "transfer": out([0, 1, 2, 1, 1, 2], [0, 1, 0, 0, 1, 0]),
        "reference": out([0, 1, 2, 1, 1, 2], [1, 0, 2, 1, 1, 2]),
        "pgd2": out([0, 1, 2, 0, 1, 2], [0, 0, 0, 0, 0, 0]),
        "t2": noisy,
        "mimicry": {**out([0, 1, 2, 0], [1, 2, 2, 0], 4), "clean": torch.ones(1, 4).bool()},
        "unbounded": out([0, 1, 2, 0, 1, 2], [0, 1, 2, 1, 2, 0]),
    }
    metas = {x.id: {"cached": True} for x in cells.values()}
    metas[cells["pgd"].id] = {"cached": True, "attack_seconds": 1.5, "forward_passes": 40, "wall_seconds": 2.0,
                              "attack_flags": ["a", "b"], "detection_auroc": 0.123, "not_a_field": 1}  # fmt: skip
    metas[cells["fgsm"].id] = {"cached": False}
    trained = {
        "p/teacher": {"fit_seconds": 100.0},
        ft: {"fit_seconds": 2.0, "prep": {"seconds": 1.5}},
        two: {"fit_seconds": 3.0, "randomized": True, "nondifferentiable": 1},
    }
    done = Executed(
        trained=trained,
        outcomes={cells[k].id: v for k, v in outcomes.items()},
        metas=metas,
        data={"p": (torch.arange(6.0)[:, None], Y)},
    )
    cfg = {"name": "exp", "model": {"backbone": "small_cnn"}, "report": {"transferability": "accuracy_drop"}}
    rows, examples = make_rows(cfg, plan, done)
    return {r.row_id: r for r in rows}, examples, targets, cells


def test_row_ids_and_order(sweep):
    rows, examples, _, _ = sweep
    assert row_id("p", "d", 3, "a", "l2", "0.5") == "p/d/seed3/a/l2/0.5"
    assert list(rows) == [
        "p/teacher/seed0/pgd/linf/8/255",
        "p/finetune/seed0/pgd/linf/0.2",
        "p/finetune/seed0/pgd/linf/8/255",
        "p/finetune/seed0/fgsm/linf/0.0313725",
        "p/finetune/seed0/transfer/linf/8/255",
        "p/finetune/seed0/worst_case/linf/8/255",
        "p/two/seed0/transfer/linf/8/255",
        "p/two/seed0/mimicry/linf/8/255",
        "p/two/seed0/sanity_unbounded/linf/8/255",
        "p/two/seed0/worst_case/linf/8/255",
    ], "no row for a reference cell, none for a model without cells; worst cases after each model's rows"
    assert list(examples) == list(rows)


def test_a_models_fields(sweep):
    rows = sweep[0]
    teacher, ft, two = (rows[f"p/{d}/seed0/{a}/linf/8/255"] for d, a in (("teacher", "pgd"), ("finetune", "pgd"),
                                                                     ("two", "transfer")))  # fmt: skip
    assert (teacher.experiment, teacher.pair, teacher.source, teacher.target, teacher.model) == (
        "exp", "p", "S", "T", "small_cnn")  # fmt: skip
    assert (teacher.defense, teacher.mode, teacher.seed, teacher.model_key) == ("teacher", "pretrain", 0, "kt")
    assert (ft.defense, ft.mode, ft.model_key, two.mode) == ("finetune", "finetune", "kf", "finetune")
    assert teacher.train_seconds == 100.0 and ft.train_seconds == 2.0, "the teacher's time is not the student's"
    assert two.train_seconds == 5.0, "a later stage adds the earlier student's time (one without a meta: 0)"
    assert ft.prep_seconds == 1.5 and teacher.prep_seconds is None and two.prep_seconds is None
    assert (ft.randomized_defense, ft.nondifferentiable_defense) == (False, False)
    assert two.randomized_defense is True and two.nondifferentiable_defense is True


def test_a_cells_fields_and_metrics(sweep):
    rows = sweep[0]
    pgd = rows["p/finetune/seed0/pgd/linf/8/255"]
    assert (pgd.attack, pgd.threat_model, pgd.surrogate, pgd.norm, pgd.eps, pgd.eps_label, pgd.steps) == (
        "pgd", "white-box", "", "linf", EPS, "8/255", 10)  # fmt: skip
    assert pgd.examples == "first 4 target test examples"
    assert (pgd.clean_acc, pgd.robust_acc, pgd.n_examples, pgd.draws) == (0.75, 0.5, 4, 1)
    assert (pgd.attack_seconds, pgd.forward_passes, pgd.wall_seconds, pgd.backward_passes) == (1.5, 40, 2.0, None)
    assert math.isnan(pgd.detection_auroc), "computed from the outcome, never taken from the meta"
    assert pgd.cached is True and pgd.cell is not None and pgd.cell.id == "p/finetune/seed0/pgd/8/255"
    assert pgd.flags == "a;b" and pgd.transfer_acc is None and pgd.targeted_success is None
    fgsm = rows["p/finetune/seed0/fgsm/linf/0.0313725"]
    assert fgsm.cached is False and fgsm.flags == "" and fgsm.detection_auroc == 1.0 and fgsm.steps == 1
    assert rows["p/finetune/seed0/pgd/linf/0.2"].eps == 0.2


def test_transferability_against_the_reference_cell(sweep):
    rows = sweep[0]
    t = rows["p/finetune/seed0/transfer/linf/8/255"]
    # clean right on 0, 1, 2, 4, 5; the reference fools 0, 1; the transfer attack 2, 5 (and makes 3 right)
    assert (t.threat_model, t.surrogate, t.transfer_acc) == ("transfer", "teacher", pytest.approx(3 / 6))
    assert t.transferability_success_ratio == pytest.approx(1.0)
    assert t.transferability_accuracy_drop == pytest.approx((5 - 4) / (5 - 3))
    assert t.transferability == t.transferability_accuracy_drop, "the configured form"
    assert t.transferability_form.startswith("accuracy_drop")
    two = rows["p/two/seed0/transfer/linf/8/255"]
    assert two.transfer_acc == two.robust_acc == pytest.approx(8 / 18) and two.transferability is None


def test_a_targeted_rows_success_from_the_recomputed_targets(sweep):
    rows, examples, targets, _ = sweep
    m = rows["p/two/seed0/mimicry/linf/8/255"]
    # targets (y + 1) % 3 = 1, 2, 0, 1; the attack gives 1, 2, 2, 0: two of four clean-correct draws hit
    assert m.targeted_success == pytest.approx(0.5)
    assert examples[m.row_id]["target_hit"] == [1.0, 1.0, 0.0, 0.0], "each example: right clean and hit"
    assert "target_hit" not in examples["p/two/seed0/transfer/linf/8/255"]
    ((x, y, k),) = targets.calls
    assert torch.equal(x, torch.arange(4.0)[:, None]) and torch.equal(y, Y[:4]) and k == 3
    assert rows["p/two/seed0/transfer/linf/8/255"].targeted_success is None


def test_the_worst_case_covers_the_whitebox_examples(sweep):
    rows, examples, _, _ = sweep
    w = rows["p/finetune/seed0/worst_case/linf/8/255"]
    assert (w.attack, w.threat_model, w.surrogate, w.norm, w.eps_label) == (
        "worst_case", "union: pgd+fgsm+transfer", "", "linf", "8/255")  # fmt: skip
    assert w.eps == budget_key("linf", EPS)[1] != EPS and w.steps == 10
    assert w.examples == "first 4 target test examples (each example: every attack that ran on it)"
    # robust: pgd 1 0 1 0, fgsm 1 1, transfer 1 1 0 1 -> 1 0 0 0 (not the transfer attack's 6 examples)
    assert (w.n_examples, w.robust_acc, w.clean_acc) == (4, 0.25, 0.75)
    assert examples[w.row_id] == {"clean": [1.0, 1.0, 1.0, 0.0], "robust": [1.0, 0.0, 0.0, 0.0]}
    assert w.cached is False, "one of its rows was computed"
    assert all(getattr(w, f) is None for f in ("transfer_acc", "attack_seconds", "forward_passes", "detection_auroc"))
    assert (w.model_key, w.train_seconds, w.flags, w.cell) == ("kf", 2.0, "", None)
    assert "p/finetune/seed0/worst_case/linf/0.2" not in rows, "one attack at a budget makes no worst case"


def test_a_worst_case_of_crafted_attacks_only_and_of_draws(sweep):
    rows, examples, _, _ = sweep
    w = rows["p/two/seed0/worst_case/linf/8/255"]
    assert w.threat_model == "union: transfer+mimicry", "no sanity cell"
    assert w.n_examples == 6 and w.cached is True and w.draws == 3 and w.steps == 20
    assert examples[w.row_id]["robust"] == [0.0, 0.0, 0.666667, 0.666667, 0.0, 0.0], "mimicry pads its 4"
    assert examples["p/two/seed0/transfer/linf/8/255"] == {
        "clean": [1.0, 0.666667, 1.0, 1.0, 1.0, 1.0],
        "robust": [1.0, 0.333333, 0.666667, 0.666667, 0.0, 0.0],
    }


def test_checks_run_on_the_rows(sweep):
    rows = sweep[0]
    assert rows["p/two/seed0/sanity_unbounded/linf/8/255"].flags == "unbounded_attack_not_chance"
    assert rows["p/finetune/seed0/pgd/linf/0.2"].flags == "", "falls with epsilon"


def test_without_the_data_or_predictions_no_targets():
    from benchmark.runner.rows import _targets

    x = c("p/two/seed0", "mimicry", targeted=True)
    plan = Plan("exp", {"p": {"num_classes": 3}}, [])
    plan._attacks[x.id] = Targets()
    o = out([0, 1, 2, 0, 1, 2], [0, 1, 2, 0, 1, 2])
    assert _targets(plan, Executed(data={}), x, o) is None
    no_pred = {k: v for k, v in o.items() if k != "pred_adv"}
    assert _targets(plan, Executed(data={"p": (torch.zeros(6, 1), Y)}), x, no_pred) is None
    targets = _targets(plan, Executed(data={"p": (torch.zeros(6, 1), Y)}), x, o)
    assert targets.tolist() == ((Y + 1) % 3).tolist()
    assert targeted_success(o, targets) == 0.0


def test_the_targets_of_more_than_one_batch_pair_each_image_with_its_label():
    from benchmark.runner.rows import _targets

    n = 300  # more than the 256 images recomputed at a time
    y = torch.arange(n) % 3
    x = c("p/two/seed0", "mimicry", targeted=True, n=n)
    plan = Plan("exp", {"p": {"num_classes": 3}}, [])
    plan._attacks[x.id] = targets = Targets()
    hit = outcome(y[None], ((y + 1) % 3)[None], y, None)  # every example sent to its target
    targets_of = _targets(plan, Executed(data={"p": (torch.arange(n + 5.0)[:, None], torch.arange(n + 5) % 3)}), x, hit)
    assert targeted_success(hit, targets_of) == 1.0
    assert target_hits(hit, targets_of).all(), "every example: right clean and sent to its target"
    assert [(len(xb), len(yb)) for xb, yb, _ in targets.calls] == [(256, 256), (44, 44)]
    assert torch.equal(torch.cat([xb for xb, _, _ in targets.calls])[:, 0], torch.arange(n + 0.0)), "the first n"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bool])
def test_the_per_example_lists_are_each_value_rounded_as_round_would(dtype):
    g = torch.Generator().manual_seed(0)
    fractions = torch.randint(0, 21, (400,), generator=g) / 7  # fractions of draws: few distinct values
    values = torch.cat([fractions, torch.rand(100, generator=g), torch.tensor([math.nan, 0.5, 1e-7, 2 / 3])])
    values = values.to(dtype) if dtype != torch.bool else values > 0.5
    expected = [round(float(v), 6) for v in values]
    got = _rounded(values)
    assert [repr(v) for v in got] == [repr(v) for v in expected]  # repr: the same floats, NaN included
    assert all(type(v) is float for v in got)


def test_the_transfer_attacks_have_their_own_worst_case():
    from benchmark.records import Row
    from benchmark.runner.rows import _worst_case

    def made(attack: str, threat: str, adv: list[int], n: int = 6) -> tuple[Row, dict]:
        r = Row(pair="p", defense="d", seed=0, attack=attack, threat_model=threat, norm="linf", eps=EPS,
                eps_label="8/255", steps=20, n_examples=n)  # fmt: skip
        return r, out([0, 1, 2, 0, 1, 2][:n], adv, n)

    rows = [
        made("pgd", "white-box", [1, 1, 2, 0, 1, 2], n=6),  # robust on 2-5
        made("transfer_a", "transfer", [0, 0, 2, 0, 1, 2], n=6),  # fools 1
        made("transfer_b", "transfer", [0, 1, 0, 0, 1], n=5),  # fools 2, on 5 examples
        made("mimicry", "mimicry", [0, 1, 2, 1, 1, 2], n=6),  # fools 3, not a transfer attack
    ]
    fields = {"pair": "p", "defense": "d", "seed": 0}
    unions = {r.attack: (r, o) for r, o in _worst_case(rows, fields)}
    assert set(unions) == {"worst_case", "worst_transfer"}
    row, o = unions["worst_transfer"]
    assert row.threat_model == "union: transfer_a+transfer_b" and row.n_examples == 6 and row.steps == 20
    assert o["robust"].tolist() == [1.0, 0.0, 0.0, 1.0, 1.0, 1.0], "per example: what any transfer attack broke"
    assert row.robust_acc == pytest.approx(4 / 6) and row.row_id == "p/d/seed0/worst_transfer/linf/8/255"
    assert unions["worst_case"][1]["robust"].tolist() == [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
    alone = {r.attack for r, _ in _worst_case(rows[:2], fields)}
    assert alone == {"worst_case"}, "one transfer attack is its own worst case"


def test_a_transfer_row_names_its_reference_only_when_it_is_another_entry_of_the_sweep():
    """`transfer_reference`: the sweep's entry whose white-box cell the transferability is relative to (`reference`
    in the attack's config), None when the reference cell is the transfer attack's own inner attack (its own entry)."""
    m = "p/finetune/seed0"
    named, own = f"{m}/pgd_linf/reference", f"{m}/transfer_b/reference"
    transfer = {"threat_model": "transfer", "surrogate": "teacher", "crafted": True, "transfer": True, "n": 6}
    cells = [
        c(m, "pgd_linf", entry="pgd_linf", n=6),
        c(m, "pgd_linf", entry="pgd_linf", role="reference", n=6, id=named),
        c(m, "transfer_a", entry="transfer_a", reference=named, **transfer),
        c(m, "transfer_b", entry="transfer_b", role="reference", n=6, id=own),
        c(m, "transfer_b", entry="transfer_b", reference=own, **transfer),
    ]
    stages = [
        model_stage(m, "student", "finetune", "kf"),
        *map(cell_stage, cells),
    ]
    plan = Plan("exp", {"p": {"source": "S", "target": "T", "num_classes": 3}}, stages)
    done = Executed(
        trained={m: {"fit_seconds": 1.0}},
        outcomes={x.id: out([0, 1, 2, 0, 1, 2], [0, 1, 2, 0, 0, 0]) for x in cells},
        metas={x.id: {"cached": True} for x in cells},
        data={},
    )
    cfg = {"name": "exp", "model": {"backbone": "small_cnn"}, "report": {"transferability": "success_ratio"}}
    rows = {r.attack: r for r in make_rows(cfg, plan, done)[0]}
    assert rows["transfer_a"].transfer_reference == "pgd_linf", "relative to the sweep's PGD, named"
    assert rows["transfer_b"].transfer_reference is None, "relative to its own inner attack"
    assert rows["pgd_linf"].transfer_reference is None, "a white-box row has no reference"
