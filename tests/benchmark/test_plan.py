"""The plan (benchmark/runner/plan.py): its stages, lookups and JSON on hand-made stages, the attacks it builds once per
recipe; on small composed configs (no training needed) the cache keys it carries. Some tests pin exact values found
by mutation testing (`make mutate`, tests/mutation/mutate.py).
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path

import pytest
import torch
from hand_cells import cell, train_stage
from plan_budgets import EIGHT, SIXTEEN

from attacks.fgsm import FGSM
from attacks.pgd import PGD
from attacks.transfer import TransferAttack
from benchmark.records import Budget
from benchmark.runner import cache as cache_mod
from benchmark.runner.config import compose
from benchmark.runner.plan import CellStage, CraftStage, Plan, attack_modules, make_attack, module_of
from benchmark.runner.planner import make_plan

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("attacks", "benchmark", "datamodules", "defenses", "lightning_modules")
SMALL = [
    "logger=none",
    "defense=[finetune,purifier]",
    "attack=[fgsm,pgd_linf,transfer_pgd_linf,eot_pgd_linf]",
    "eval.n_examples=32",
]


def plan_of(tmp: Path, *extra: str):
    return make_plan(compose([*SMALL, f"cache_dir={tmp / 'cache'}", f"results_dir={tmp / 'r'}", *extra]))


def test_plan_is_json_in_dependency_order(tmp_path):
    plan, notes, _ = plan_of(tmp_path)
    data = json.loads(plan.to_json())
    seen = set()
    for stage in data["stages"]:
        assert set(stage["deps"]) <= seen, f"{stage['id']} comes before what it needs"
        seen.add(stage["id"])
    kinds = [s.kind for s in plan.stages]
    assert kinds.count("teacher") == 1 and kinds.count("craft") == 4, "transfer examples crafted once per eps"
    ids = [s.id for s in plan.stages]
    assert len(ids) == len(set(ids)) and len({s.key for s in plan.stages}) == len(ids)
    roles = {c.role for c in plan.cells() if c.defense == "purifier"}
    assert {"attack", "frozen", "x2", "unbounded"} <= roles
    assert any("not run on the randomized models " in n and "(by design): fgsm, pgd_linf" in n for n in notes)


def test_a_composed_plan_through_json_gives_equal_stages(tmp_path):
    """Worker processes and cluster jobs read the plan back from its JSON: the same typed stages, jobs and cells; the
    JSON keeps the stages' keys (a field left at its default is left out)."""
    plan, _, _ = plan_of(tmp_path)
    text = plan.to_json()
    back = Plan.from_json(text)
    assert back.stages == plan.stages and back == plan and back.to_json() == text
    assert {type(s).__name__ for s in back.stages} == {"TrainStage", "CraftStage", "CellStage"}
    stages = {s["id"]: s for s in json.loads(text)["stages"]}
    teacher, student = stages["digits/teacher"], stages["digits/finetune/seed0"]
    assert list(teacher) == list(student) == ["id", "kind", "key", "deps", "job", "defense", "seed"]
    assert set(teacher["job"]) == {"kind", "name", "data_name", "data", "data_fingerprint", "domain", "model", "module",
                                   "trainer", "seed", "teacher_key", "init_key", "cache_dir", "numerics", "key",
                                   "wandb"}  # fmt: skip
    craft = next(s for s in stages.values() if s["kind"] == "craft")
    assert list(craft) == ["id", "kind", "key", "deps", "pair", "teacher", "surrogates", "attack", "n"]
    assert list(stages[plan.cells()[0].id]) == ["id", "kind", "key", "deps", "cell"]


def test_transfer_reference_is_the_sweeps_own_whitebox_cell(tmp_path):
    plan, _, _ = plan_of(tmp_path, "attack.pgd_linf.attack.steps=20", "attack.transfer_pgd_linf.attack.attack.steps=20")
    transfer = [c for c in plan.cells() if c.entry == "transfer_pgd_linf"]
    for finetuned in (c for c in transfer if c.defense == "finetune"):
        ref = plan.cell(finetuned.reference)
        assert ref.entry == "pgd_linf" and ref.role == "attack", "the same attack is computed once"
    assert all(c.reference is None for c in transfer if c.defense == "purifier")


@pytest.mark.parametrize("order", ["eot_pgd_linf,autoattack_rand", "autoattack_rand,eot_pgd_linf"])
def test_sanity_cells_come_from_eot_pgd_whatever_the_attack_order(tmp_path, order):
    plan, _, _ = plan_of(tmp_path, f"attack=[{order}]")
    sanity = [c for c in plan.cells() if c.role in ("frozen", "x2", "unbounded")]
    assert len(sanity) == 3 and {c.entry for c in sanity} == {"eot_pgd_linf"}


def test_cell_keys_cover_every_value_the_cell_reads(tmp_path):
    def keys(*extra):
        plan, _, _ = plan_of(tmp_path, *extra)
        return {s.id: s.key for s in plan.stages}

    base = keys()
    for override in ("eval.detection=false", "eval.detection_reference=100", "eval.draws=4", "eval.seed=1"):
        changed = keys(override)
        cells = [i for i in base if "/pgd_linf/" in i or "/eot_pgd_linf/" in i]
        assert any(base[i] != changed[i] for i in cells), override
    teacher = [i for i in base if i == "digits/teacher"]
    assert keys("eval.detection=false")[teacher[0]] == base[teacher[0]], "evaluation settings do not retrain"


def test_keys_change_with_library_versions(tmp_path, monkeypatch):
    base = {s.id: s.key for s in plan_of(tmp_path)[0].stages}
    versions = {**cache_mod.library_versions(), "pyautoattack": "9.9"}
    monkeypatch.setattr(cache_mod, "library_versions", lambda: versions)
    changed = {s.id: s.key for s in plan_of(tmp_path)[0].stages}
    assert all(base[i] != changed[i] for i in base)


def _copy_tree(dst: Path) -> Path:
    for p in PACKAGES:
        shutil.copytree(ROOT / p, dst / p, ignore=shutil.ignore_patterns("__pycache__", "configs"))
    return dst


def test_editing_a_line_invalidates_exactly_the_stages_it_can_change(tmp_path, monkeypatch):
    base = {s.id: s.key for s in plan_of(tmp_path)[0].stages}
    copy = _copy_tree(tmp_path / "src")
    pgd = copy / "attacks" / "pgd.py"
    pgd.write_text(pgd.read_text().replace("return x_adv\n", "return x  # broken\n", 1))
    monkeypatch.setattr(cache_mod, "ROOT", copy)
    changed = {s.id: s.key for s in plan_of(tmp_path)[0].stages}
    moved = {i for i in base if base[i] != changed[i]}
    assert any("/pgd_linf/" in i for i in moved) and any("/craft/transfer_pgd_linf/" in i for i in moved)
    assert not any("/fgsm/" in i for i in moved), "FGSM does not run pgd.py"
    assert "digits/teacher" not in moved and "digits/finetune/seed0" not in moved
    assert "digits/purifier/seed0" in moved, "AToP's purifier trains with PGD code (its validation attack)"


# ---- the plan on hand-made stages -------------------------------------------------------------------------------
def test_module_of_and_the_modules_of_an_attack():
    assert module_of("a.b.C") == "a.b" and module_of("C") == "C"
    assert attack_modules(FGSM(0.1)) == ["attacks.fgsm"]
    transfer = TransferAttack(0.1, attack=functools.partial(PGD, steps=2))
    assert attack_modules(transfer) == ["attacks.transfer", "attacks.pgd"]


def test_make_attack_at_its_epsilon_with_the_changes():
    cfg = {"_target_": "attacks.pgd.PGD", "steps": 4}
    plain = make_attack({"cfg": cfg, "eps": EIGHT})
    assert isinstance(plain, PGD) and plain.eps == pytest.approx(EIGHT) and plain.steps == 4
    changed = make_attack({"cfg": cfg, "eps": EIGHT, "changes": {"steps": 2, "early_stop": False}})
    assert (changed.steps, changed.early_stop, changed.eps) == (2, False, pytest.approx(EIGHT))
    assert make_attack({"cfg": cfg, "eps": 0.5, "changes": {}}).steps == 4


def test_make_attack_builds_each_recipe_once_and_never_shares_an_attack(monkeypatch):
    import benchmark.runner.plan as plan_module

    built = []
    real_build = plan_module.build
    monkeypatch.setattr(plan_module, "_BUILT", {})
    monkeypatch.setattr(plan_module, "build", lambda cfg, **kw: built.append(cfg) or real_build(cfg, **kw))
    cfg = {
        "_target_": "attacks.transfer.TransferAttack",
        "surrogate": "teacher",
        "attack": {"_target_": "attacks.pgd.PGD", "_partial_": True, "steps": 3},
    }
    first, second = (make_attack({"cfg": cfg, "eps": EIGHT}) for _ in range(2))
    fresh = real_build(cfg, eps=EIGHT)
    assert len(built) == 1, "the same recipe is built once"
    assert first is not second and first.base is not second.base, "each caller gets its own attack and inner attack"
    assert first.config() == second.config() == fresh.config()
    first.base.forward_passes = 99
    first.surrogate = torch.nn.Identity()
    assert (second.base.forward_passes, second.surrogate) == (fresh.base.forward_passes, fresh.surrogate)
    assert make_attack({"cfg": cfg, "eps": SIXTEEN}).eps == pytest.approx(SIXTEEN) and len(built) == 2
    inner = dict(reversed(list(cfg["attack"].items())))
    reordered = {"attack": inner, "surrogate": "teacher", "_target_": cfg["_target_"]}
    assert make_attack({"cfg": reordered, "eps": EIGHT}).config() == fresh.config() and len(built) == 2, (
        "the same recipe with its keys in another order: built once"
    )
    pgd = {"cfg": cfg["attack"] | {"_partial_": False}, "eps": EIGHT}
    assert make_attack(pgd).early_stop and not make_attack({**pgd, "changes": {"early_stop": False}}).early_stop
    assert len(built) == 4, "another recipe: the changes are part of it"


def test_make_attack_builds_a_config_that_is_not_plain_data_each_time(monkeypatch):
    import numpy as np

    import benchmark.runner.plan as plan_module

    monkeypatch.setattr(plan_module, "_BUILT", {})
    three, five = ({"cfg": {"_target_": "attacks.pgd.PGD", "steps": np.int64(n)}, "eps": EIGHT} for n in (3, 5))
    assert (make_attack(three).steps, make_attack(five).steps, make_attack(three).steps) == (3, 5, 3)
    assert plan_module._BUILT == {}, "nothing memoized under a recipe that is not JSON"


def stage(sid: str, kind: str = "cell", key: str = "k", role: str = "attack", **kw):
    if kind == "cell":
        return CellStage(id=sid, kind=kind, key=key, deps=[], cell=cell(id=sid, role=role, **kw))
    return train_stage(sid, kind=kind, key=key)


def test_plan_lookups():
    p = Plan("x")
    assert len(p) == 0
    p.add(stage("m", kind="student", key="km"))
    p.add(stage("c1", key="k1", model="m"))
    p.add(stage("c2", key="k2", model="n"))
    assert len(p) == 3 and p.stage("c1").key == "k1" and p.cell("c2").model == "n"
    assert [c.id for c in p.cells()] == ["c1", "c2"] and [c.id for c in p.cells("m")] == ["c1"]
    assert p.cells("none") == []
    p.update_cell("c1", reference="r", n=3)
    assert (p.cell("c1").reference, p.cell("c1").n, p.cell("c1").model) == ("r", 3, "m")


def test_plan_attacks_are_built_once_from_the_cell_or_crafted_recipe():
    p = Plan("x")
    recipe = {"cfg": {"_target_": "attacks.fgsm.FGSM"}, "eps": EIGHT, "changes": {}}
    p.add(stage("c", key="kc", attack=recipe))
    p.add(CraftStage(id="t", kind="craft", key="kt", deps=[], pair="p", teacher="m", surrogates=["m"],
                     attack={**recipe, "eps": SIXTEEN}, n=8))  # fmt: skip
    made = FGSM(0.5)
    p.add(stage("given", key="kg"), made)
    first = p.attack("c")
    assert isinstance(first, FGSM) and first.eps == pytest.approx(EIGHT) and p.attack("c") is first
    assert p.attack("t").eps == pytest.approx(SIXTEEN) and p.attack("given") is made


def test_plan_add_one_stage_per_key_and_kind():
    p = Plan("x")
    assert p.add(stage("a", kind="student", key="k")) == "a"
    assert p.add(stage("b", kind="teacher", key="k")) == "b", "another kind"
    assert p.add(stage("a2", kind="student", key="k"), FGSM(0.1)) == "a" and len(p) == 2
    with pytest.raises(KeyError):
        p.attack("a2")
    # a transfer attack's white-box reference, then the same attack in the sweep: one cell, a row
    p.add(stage("ref", key="kr", role="reference", reference="of-ref", base="base-ref", n=5))
    assert p.add(stage("row", key="kr", role="attack", n=6)) == "ref"
    merged = p.cell("ref")
    assert (merged.id, merged.role, merged.n, merged.reference, merged.base) == (
        "ref",
        "attack",
        6,
        "of-ref",
        "base-ref",
    )
    # the other order: the row stays as it is
    p.add(stage("row2", key="kq", role="attack", n=6))
    assert p.add(stage("ref2", key="kq", role="reference", n=5)) == "row2" and p.cell("row2").role == "attack"
    assert p.add(stage("same", key="kq", role="attack")) == "row2" and p.cell("row2").n == 6
    for role in ("frozen", "x2", "unbounded"):
        with pytest.raises(RuntimeError, match=f"plan stages row2 and {role} compute the same thing"):
            p.add(stage(role, key="kq", role=role))
    p.add(stage("f", key="kf", role="frozen"))
    assert p.add(stage("f2", key="kf", role="frozen")) == "f", "the same sanity cell twice"


def test_a_plan_through_json():
    p = Plan("x", {"pair": {"n": 3}})
    p.add(stage("m", kind="student", key="km"))
    p.add(stage("c", key="kc", model="m", reference="r"))
    text = p.to_json()
    assert json.loads(text)["stages"][1]["cell"]["budget"] == {"norm": "linf", "eps": 0.1, "label": "x"}
    assert "\n " in text, "indented"
    back = Plan.from_json(text)
    assert (back.name, back.pairs, back.stages) == ("x", {"pair": {"n": 3}}, p.stages)
    assert isinstance(back.cell("c").budget, Budget) and back.stage("m") == p.stage("m")
