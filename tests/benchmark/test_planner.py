"""The planner (benchmark/runner/planner.py) on small composed configs: every training stage's job, key and
dependencies, a data pair's evaluation subset, every cell's spec and key, the crafted sets, the sanity cells, the
CommonInit chain and a public teacher. No training, no attack. Some tests pin exact values found by mutation testing
(`make mutate`, tests/mutation/mutate.py).
"""

from __future__ import annotations

import copy

import pytest
import torch
from plan_budgets import SIXTEEN

from attacks.errors import ConfigError
from attacks.fgsm import FGSM
from attacks.pgd import PGD
from benchmark.components import job_key_spec, teacher_module_cfg
from benchmark.records import Budget, Job
from benchmark.runner.cache import stage_key
from benchmark.runner.config import compose
from benchmark.runner.plan import CraftStage, Plan, Stage, attack_modules, module_of
from benchmark.runner.planner import CELL_MODULES, make_plan, single_process_strategy

#: Never created: planning writes nothing.
WHERE = ["cache_dir=plan-tests-cache", "results_dir=plan-tests-results"]
#: A deterministic student and a randomized one that starts from an earlier stage (dropout from freeze); FGSM at two
#: budgets, a transfer attack (its white-box reference), mimicry (targeted, on 7 examples), EOT-PGD (on 6) with the
#: sanity checks (on 5), and PGD made to apply to every model (its early stop is turned off on the randomized one).
SWEEP = [
    "logger=none",
    "defense=[finetune,dropout]",
    "attack=[fgsm,transfer_pgd_linf,eot_pgd_linf,mimicry_linf,pgd_linf]",
    "attack.fgsm.epsilons=[8/255,16/255]",
    "attack.transfer_pgd_linf.epsilons=[16/255]",
    "attack.transfer_pgd_linf.attack.attack.steps=3",
    "attack.eot_pgd_linf.attack.steps=4",
    "attack.eot_pgd_linf.attack.eot=2",
    "attack.eot_pgd_linf.n_examples=6",
    "attack.mimicry_linf.epsilons=[8/255]",
    "attack.mimicry_linf.attack.steps=2",
    "attack.mimicry_linf.n_examples=7",
    "attack.pgd_linf.applies_to=all",
    "attack.pgd_linf.epsilons=[8/255]",
    "attack.pgd_linf.attack.steps=2",
    "eval.n_examples=10",
    "eval.draws=3",
    "eval.sanity_examples=5",
    *WHERE,
]
#: Composed once, at import (the composition is not under test); each test plans a copy.
CFG = compose(SWEEP)
SSL = compose(["experiment=digits_ssl", "logger=none", "defense=[commoninit,finetune]",
               "attack=[uap_feature,transfer_pgd_linf]", "attack.uap_feature.epsilons=[16/255]",
               "attack.transfer_pgd_linf.attack.attack.steps=3", "eval.n_examples=10", *WHERE])  # fmt: skip


def plan_of(cfg: dict = CFG, **changes):
    cfg = copy.deepcopy(cfg)
    for path, value in changes.items():
        *parents, last = path.split("__")
        d = cfg
        for p in parents:
            d = d[p]
        if value is KeyError:
            del d[last]
        else:
            d[last] = value
    return make_plan(cfg)


@pytest.fixture
def planned():
    """A plan per test, not per module: mutmut runs a mutant against the tests it saw call the mutated function, and
    a module-scoped plan would be seen by the first test only."""
    return plan_of()


def stages(plan: Plan) -> dict[str, Stage]:
    return {s.id: s for s in plan.stages}


def test_the_plan_carries_the_headline_budgets_parsed_once():
    """The headline of each norm, parsed by the config check, travels with the plan (its JSON included)."""
    plan = plan_of(report__headline__linf="8/255", report__headline__l2=0.5)[0]
    assert plan.headline == {"linf": pytest.approx(8 / 255), "l2": 0.5}
    assert Plan.from_json(plan.to_json()).headline == plan.headline


# ---- training stages ------------------------------------------------------------------------------------------
def test_single_process_strategy():
    ddp = {"devices": 1, "num_nodes": 1, "strategy": "ddp_spawn", "x": 1}
    assert single_process_strategy(ddp) == {**ddp, "strategy": "auto"}
    assert single_process_strategy({"strategy": "ddp"}) == {"strategy": "auto"}
    for kept in ({**ddp, "devices": 2}, {**ddp, "num_nodes": 2}, {**ddp, "strategy": "auto"}, {"strategy": None}):
        assert single_process_strategy(kept) == kept


def test_the_teachers_job_and_key(planned):
    plan, notes, warnings = planned
    assert plan.name == "digits"
    t = stages(plan)["digits/teacher"]
    job = t.job
    assert job == Job(
        kind="teacher",
        name="teacher",
        data_name="digits",
        data=CFG["data"]["digits"],
        data_fingerprint=plan.pairs["digits"]["fingerprint"],
        domain="source",
        model=CFG["model"],
        module=teacher_module_cfg(CFG["teacher"]),
        trainer={**CFG["trainer"], **CFG["teacher"]["trainer"]},
        seed=0,
        teacher_key=None,
        init_key=None,
        cache_dir="plan-tests-cache",
        numerics={"channels_last": True},
        key=job.key,
        wandb={**CFG["logger"], "group": "digits"},
    )
    modules = ["datamodules.digits", "lightning_modules.modules", "benchmark.runner.stages.train"]
    assert t.key == job.key == stage_key("teacher", job_key_spec(job), modules)
    assert (t.kind, t.deps, t.defense, t.seed) == ("teacher", [], "teacher", 0)
    assert warnings == []


def test_the_teachers_seed_and_its_default():
    seeded = stages(plan_of(teacher__seed=5)[0])["digits/teacher"]
    assert seeded.seed == seeded.job.seed == 5
    unset = stages(plan_of(teacher__seed=KeyError)[0])["digits/teacher"]
    assert unset.seed == unset.job.seed == 0, "a teacher config without a seed: seed 0"
    assert seeded.key != unset.key


def test_the_students_jobs_keys_and_earlier_stages(planned):
    plan = planned[0]
    by = stages(plan)
    teacher = by["digits/teacher"]
    ft, freeze, drop = by["digits/finetune/seed0"], by["digits/freeze/seed0"], by["digits/dropout/seed0"]
    assert list(by).index("digits/freeze/seed0") < list(by).index("digits/dropout/seed0"), "the earlier stage first"
    for s, name in ((ft, "finetune"), (freeze, "freeze"), (drop, "dropout")):
        job = s.job
        defense_cfg = {**CFG["defense"], **CFG["earlier_defenses"]}[name]
        assert (s.kind, s.defense, s.seed, s.id) == ("student", name, 0, f"digits/{name}/seed0")
        assert (job.kind, job.name, job.domain, job.teacher_key) == (
            "student",
            name,
            "target",
            teacher.key,
        )
        assert job.module == defense_cfg["module"] and job.trainer == {**CFG["trainer"], **defense_cfg["trainer"]}
        modules = ["datamodules.digits", module_of(defense_cfg["module"]["_target_"]), "benchmark.runner.stages.train"]
        assert s.key == job.key == stage_key("student", job_key_spec(job), modules)
    assert ft.deps == [teacher.id] and ft.job.init_key is None
    assert drop.deps == [teacher.id, freeze.id] and drop.job.init_key == freeze.key
    assert len({ft.key, freeze.key, drop.key, teacher.key}) == 4


def test_seeds_and_a_shared_earlier_stage():
    plan = plan_of(seeds=[0, 3], defense__freeze=copy.deepcopy(CFG["earlier_defenses"]["freeze"]))[0]
    by = stages(plan)
    students = [s.id for s in plan.stages if s.kind == "student"]
    assert students == [f"digits/{d}/seed{s}" for s in (0, 3) for d in ("finetune", "freeze", "dropout")], (
        "the earlier stage the sweep also runs is one stage, planned before the stage that starts from it"
    )
    assert by["digits/dropout/seed3"].job.seed == 3 and by["digits/freeze/seed3"].seed == 3
    assert by["digits/dropout/seed3"].job.init_key == by["digits/freeze/seed3"].key
    assert by["digits/dropout/seed3"].key != by["digits/dropout/seed0"].key
    assert "digits/freeze/seed3/fgsm/8/255" in by, "its cells too"


def test_without_a_logger_no_wandb_and_the_default_strategy():
    plan = plan_of(logger=None, trainer__strategy="ddp", trainer__devices=1)[0]
    for s in plan.stages:
        if s.kind in ("teacher", "student"):
            assert s.job.wandb is None and s.job.trainer["strategy"] == "auto"


def test_init_from_errors():
    with pytest.raises(ConfigError, match="^init_from names unknown defense 'nope'$"):
        plan_of(defense__dropout__init_from="nope", earlier_defenses={})
    with pytest.raises(
        ConfigError, match=r"^defense 'dropout' starts from itself: init_from chain dropout -> dropout$"
    ):
        plan_of(defense__dropout__init_from="dropout")
    loop = copy.deepcopy(CFG)
    loop["earlier_defenses"]["freeze"]["init_from"] = "dropout"
    with pytest.raises(
        ConfigError, match="^defense 'freeze' starts from itself: init_from chain dropout -> freeze -> dropout$"
    ):
        make_plan(loop)
    with pytest.raises(ConfigError, match="start_from 'nowhere'"):
        plan_of(defense__finetune__start_from="nowhere")
    with pytest.raises(ConfigError, match="^defense 'finetune' starts from the common model, but teacher.common is"):
        plan_of(defense__finetune__start_from="common")


# ---- a data pair ----------------------------------------------------------------------------------------------
def test_the_pairs_evaluation_subset(planned):
    info = planned[0].pairs["digits"]
    from benchmark.components import build_datamodule

    dm = build_datamodule(CFG["data"]["digits"])
    dm.setup()
    assert info["fingerprint"] == dm.fingerprint() and (info["source"], info["target"]) == (
        dm.source_name,
        dm.target_name,
    )
    assert info["num_classes"] == 10 and info["n"] == 10
    assert info["train_sizes"] == {"source": len(dm.splits("source").train), "target": len(dm.splits("target").train)}
    assert info["val_sizes"] == {"source": len(dm.splits("source").val), "target": len(dm.splits("target").val)}
    data = {
        k: v
        for k, v in CFG["data"]["digits"].items()
        if k not in ("root", "download", "num_workers", "eval_batch_size")
    }
    assert info["eval"] == {"data": data, "fingerprint": dm.fingerprint(), "seed": 0, "batch_size": 256,
                            "precision": "fp32", "detection": True, "detection_reference": 2000}  # fmt: skip
    n_test = len(dm.splits("target").test)
    for n in (None, n_test + 1):
        assert plan_of(eval__n_examples=n)[0].pairs["digits"]["n"] == n_test
    off = plan_of(eval__detection=False, eval__precision=KeyError, eval__seed=4)[0].pairs["digits"]["eval"]
    assert (off["detection"], off["detection_reference"], off["precision"], off["seed"]) == (False, None, "fp32", 4)


# ---- cells ----------------------------------------------------------------------------------------------------
def key_of(plan: Plan, cid: str) -> str:
    """A cell's key from what it reads: its model, its attack, the evaluation subset, its role, its crafted set."""
    c, info = plan.cell(cid), plan.pairs[c_pair(plan, cid)]
    attack = plan.attack(cid)
    spec = {
        "model": plan.stage(c.model).key,
        "attack": attack.config(),
        "eval": {**info["eval"], "n": c.n, "draws": c.draws},
        "frozen": c.role == "frozen",
        "craft": plan.stage(c.craft).key if c.craft else None,
    }
    return stage_key("attack", spec, [*attack_modules(attack), *CELL_MODULES])


def c_pair(plan: Plan, cid: str) -> str:
    return plan.cell(cid).pair


def test_every_cells_key_covers_what_it_reads(planned):
    plan = planned[0]
    for s in plan.stages:
        if s.kind == "cell":
            assert s.key == key_of(plan, s.id), s.id
    keys = [s.key for s in plan.stages]
    assert len(keys) == len(set(keys))


def test_a_white_box_cell(planned):
    plan = planned[0]
    c = plan.cell("digits/finetune/seed0/fgsm/16/255")
    assert (c.pair, c.model, c.defense, c.seed, c.entry, c.role, c.name) == (
        "digits", "digits/finetune/seed0", "finetune", 0, "fgsm", "attack", "fgsm")  # fmt: skip
    assert c.attack == {"cfg": CFG["attack"]["fgsm"]["attack"], "eps": SIXTEEN, "changes": {}}
    assert c.budget == Budget("linf", SIXTEEN, "16/255") and (c.threat_model, c.surrogate, c.steps) == (
        "white-box",
        "",
        1,
    )
    assert (c.crafted, c.transfer, c.targeted, c.reject_aware, c.n, c.randomized, c.draws) == (
        False, False, False, False, 10, False, 1)  # fmt: skip
    assert (c.craft, c.reference, c.base) == (None, None, None)
    assert plan.stage(c.id).deps == ["digits/finetune/seed0"]
    pgd = plan.cell("digits/finetune/seed0/pgd_linf/8/255")
    assert pgd.steps == 2 and pgd.attack["changes"] == {}, "a deterministic model keeps the early stop"


def test_a_transfer_cell_its_crafted_set_and_reference(planned):
    plan = planned[0]
    by = stages(plan)
    c = plan.cell("digits/finetune/seed0/transfer_pgd_linf/16/255")
    craft = by["digits/teacher/craft/transfer_pgd_linf/16/255"]
    assert (c.threat_model, c.surrogate, c.steps, c.crafted, c.transfer, c.targeted) == (
        "transfer", "teacher", 3, True, True, False)  # fmt: skip
    assert c.craft == craft.id and by[c.id].deps == ["digits/finetune/seed0", craft.id]
    attack = plan.attack(c.id)
    spec = {
        "teacher": by["digits/teacher"].key,
        "attack": attack.config(),
        "eval": {**plan.pairs["digits"]["eval"], "n": 10},
    }
    assert craft.key == stage_key("craft", spec, [*attack_modules(attack), "benchmark.runner.stages.attack"])
    assert craft == CraftStage(id=craft.id, kind="craft", key=craft.key, deps=["digits/teacher"], pair="digits",
                               teacher="digits/teacher", surrogates=["digits/teacher"], attack=c.attack,
                               n=10)  # fmt: skip
    assert plan.attack(craft.id) is plan.attack(by["digits/teacher/transfer_pgd_linf/16/255"].id), "built once"
    ref = plan.cell(c.reference)
    assert ref.id == c.id + "/reference" and (ref.role, ref.name, ref.entry, ref.threat_model) == (
        "reference", "transfer_pgd_linf", "transfer_pgd_linf", "white-box")  # fmt: skip
    inner = {k: v for k, v in CFG["attack"]["transfer_pgd_linf"]["attack"]["attack"].items() if k != "_partial_"}
    assert ref.attack == {"cfg": inner, "eps": SIXTEEN, "changes": {}} and ref.steps == 3 and ref.craft is None
    assert (ref.n, ref.draws, ref.randomized, ref.reference) == (10, 1, False, None)
    fewer = plan_of(attack__transfer_pgd_linf__n_examples=4)[0]
    assert fewer.cell(c.reference).n == fewer.cell(c.id).n == 4, "the reference scores the transfer cell's examples"
    drop = plan.cell("digits/dropout/seed0/transfer_pgd_linf/16/255")
    assert drop.reference is None and drop.randomized and drop.draws == 3, (
        "no white-box reference on a randomized model"
    )


def test_surrogates_the_attacker_trains_and_their_ensemble():
    """`surrogate: substitute` plans the attacker's own model (the scratch config with eval.attacker_seed, trained,
    never evaluated); a list crafts once on the ensemble of its members, whose keys enter the crafted set's key."""
    base = ["logger=none", "defense=[finetune]", "attack=[transfer_mi_fgsm]",
            "attack.transfer_mi_fgsm.epsilons=[16/255]", "cache_dir=plan-tests-cache"]  # fmt: skip
    cfg = compose([*base, "attack.transfer_mi_fgsm.attack.surrogate=[teacher,substitute]"])
    assert list(cfg["earlier_defenses"]) == ["scratch"], "the attacker's model is composed like an earlier stage"
    plan = make_plan(cfg)[0]
    by = stages(plan)
    sub = by["digits/scratch/seed1000"]
    assert sub.kind == "student" and sub.job.seed == cfg["eval"]["attacker_seed"] == 1000
    assert not plan.cells("digits/scratch/seed1000"), "the attacker's model is not evaluated"
    craft = by["digits/ensemble/craft/transfer_mi_fgsm/16/255"]
    assert craft.surrogates == craft.deps == ["digits/teacher", "digits/scratch/seed1000"]
    cell = plan.cell("digits/finetune/seed0/transfer_mi_fgsm/16/255")
    assert cell.surrogate == "teacher+substitute" and cell.craft == craft.id
    reseeded = compose([*base, "attack.transfer_mi_fgsm.attack.surrogate=[teacher,substitute]", "eval.attacker_seed=7"])
    other = stages(make_plan(reseeded)[0])
    assert other["digits/scratch/seed7"].key != sub.key and other["digits/teacher"].key == by["digits/teacher"].key
    assert other[craft.id].key != craft.key, "every member's key enters the ensemble's crafted set's key"
    alone = stages(make_plan(compose([*base, "attack.transfer_mi_fgsm.attack.surrogate=substitute"]))[0])
    crafted = alone["digits/scratch/seed1000/craft/transfer_mi_fgsm/16/255"]
    assert crafted.surrogates == ["digits/scratch/seed1000"] and crafted.key != craft.key
    with pytest.raises(ConfigError, match="eval.attacker_seed 0 is a training seed of the sweep"):
        make_plan(compose([*base, "attack.transfer_mi_fgsm.attack.surrogate=substitute", "eval.attacker_seed=0"]))
    with pytest.raises(ConfigError, match="unknown surrogate 'victim'; valid: probe, substitute, teacher"):
        make_plan(compose([*base, "attack.transfer_mi_fgsm.attack.surrogate=victim"]))
    with pytest.raises(ConfigError, match="an ensemble .teacher\\+substitute. has none: give one surrogate"):
        make_plan(compose(["logger=none", "defense=[finetune]", "attack=[transfer_ila]",
                           "attack.transfer_ila.attack.surrogate=[teacher,substitute]"]))  # fmt: skip


class CraftedWithoutASurrogateName(FGSM):
    """A newcomer's crafted attack (`Attack.crafted`) that names no surrogate."""

    crafted = True
    threat_model = "transfer"


def planned_with(attack: str, cls: type):
    """The plan of CFG with `attack`'s entry built from `cls` (a class of this module)."""
    cfg = copy.deepcopy(CFG)
    cfg["attack"][attack]["attack"]["_target_"] = f"{__name__}.{cls.__name__}"
    return make_plan(cfg)[0]


def test_a_crafted_attack_that_names_no_surrogate_is_crafted_on_the_teacher():
    plan = planned_with("fgsm", CraftedWithoutASurrogateName)
    cell = plan.cell("digits/finetune/seed0/fgsm/8/255")
    assert cell.crafted and cell.craft == "digits/teacher/craft/fgsm/8/255" and cell.surrogate == "", (
        "crafted on the teacher; its rows name no surrogate"
    )
    assert stages(plan)[cell.craft].surrogates == stages(plan)[cell.craft].deps == ["digits/teacher"]


class WhiteBoxWithASurrogateNameAndTargetClasses(FGSM):
    """A white-box attack with a surrogate's name and target classes, but neither crafted nor declared targeted."""

    surrogate_name = "teacher"

    def target_classes(self, x, y, num_classes):
        return (y + 1) % num_classes


def test_a_white_box_cell_names_no_surrogate_and_is_targeted_only_when_its_attack_says_so():
    cell = planned_with("fgsm", WhiteBoxWithASurrogateNameAndTargetClasses).cell("digits/finetune/seed0/fgsm/8/255")
    assert (cell.crafted, cell.craft, cell.surrogate, cell.targeted) == (False, None, "", False)


def test_a_reject_aware_cell_and_an_untargeted_mimicry_cell():
    cfg = compose(["logger=none", "defense=[finetune]", "attack=[pgd_reject_aware,mimicry_linf_untargeted]",
                   "attack.pgd_reject_aware.defenses=null", "attack.pgd_reject_aware.epsilons=[8/255]",
                   "attack.mimicry_linf_untargeted.epsilons=[8/255]", *WHERE])  # fmt: skip
    plan = make_plan(cfg)[0]
    reject = plan.cell("digits/finetune/seed0/pgd_reject_aware/8/255")
    assert reject.reject_aware and not reject.targeted
    mimicry = plan.cell("digits/finetune/seed0/mimicry_linf_untargeted/8/255")
    assert (mimicry.crafted, mimicry.targeted, mimicry.reject_aware) == (True, False, False)


class CraftedEOTPGD(PGD):
    """A newcomer's crafted EOT-PGD: the base of the sanity checks, which plan no teacher of their own."""

    crafted = True
    threat_model = "transfer"


def test_the_sanity_cells_of_a_crafted_eot_pgd_are_crafted_on_the_teacher():
    plan = planned_with("eot_pgd_linf", CraftedEOTPGD)
    base = "digits/dropout/seed0/eot_pgd_linf/16/255"
    for role in ("frozen", "x2", "unbounded"):
        cell = plan.cell(f"{base}/{role}")
        assert cell.base == base and stages(plan)[cell.craft].deps == ["digits/teacher"], role


def test_a_transfer_attacks_reference_is_the_named_white_box_cell_when_the_sweep_runs_it():
    base = ["logger=none", "defense=[finetune]", "attack.transfer_mi_fgsm.epsilons=[16/255]",
            "cache_dir=plan-tests-cache"]  # fmt: skip
    plan = make_plan(compose([*base, "attack=[pgd_linf,transfer_mi_fgsm]", "attack.pgd_linf.epsilons=[8/255,16/255]"]))[
        0
    ]
    cell = plan.cell("digits/finetune/seed0/transfer_mi_fgsm/16/255")
    assert cell.reference == "digits/finetune/seed0/pgd_linf/16/255", "the sweep's PGD cell, not a white-box MI-FGSM"
    assert not any("transfer_mi_fgsm/16/255/reference" in s.id for s in plan.stages)
    single = make_plan(compose([*base, "attack=[pgd_linf,transfer_mi_fgsm]", "attack.pgd_linf.epsilons=[16/255]"]))[0]
    assert single.cell(cell.id).reference == "digits/finetune/seed0/pgd_linf/16/255", "a named entry at one budget"
    unrun = compose([*base, "attack=[pgd_linf,transfer_mi_fgsm]", "attack.pgd_linf.epsilons=[16/255]",
                     "attack.pgd_linf.applies_to=randomized"])  # fmt: skip
    elsewhere = make_plan(unrun)[0]
    ref = elsewhere.cell(elsewhere.cell(cell.id).reference)
    assert (ref.role, ref.entry) == ("reference", "pgd_linf"), "named, though the sweep runs it on no such model"
    assert ref.attack == {"cfg": unrun["attack"]["pgd_linf"]["attack"], "eps": SIXTEEN, "changes": {}}
    own = make_plan(compose([*base, "attack=[transfer_mi_fgsm]"]))[0]
    ref = own.cell(own.cell("digits/finetune/seed0/transfer_mi_fgsm/16/255").reference)
    assert ref.entry == "transfer_mi_fgsm" and ref.attack["cfg"]["_target_"] == "attacks.transfer_families.MIFGSM"
    with pytest.raises(ConfigError, match="attack.transfer_mi_fgsm.reference 'nope'"):
        make_plan(compose([*base, "attack=[transfer_mi_fgsm]", "attack.transfer_mi_fgsm.reference=nope"]))
    with pytest.raises(ConfigError, match="attack.pgd_linf.reference: only a transfer attack"):
        make_plan(
            compose(["logger=none", "defense=[finetune]", "attack=[pgd_linf]", "++attack.pgd_linf.reference=fgsm"])
        )


def test_a_targeted_crafted_cell_on_its_examples(planned):
    plan = planned[0]
    c = plan.cell("digits/finetune/seed0/mimicry_linf/8/255")
    assert (c.threat_model, c.targeted, c.transfer, c.n, c.reference) == ("mimicry", True, False, 7, None)
    assert stages(plan)[c.craft].n == 7
    few = plan_of(eval__n_examples=5)[0]
    assert few.cell("digits/finetune/seed0/mimicry_linf/8/255").n == 5 and stages(few)[c.craft].n == 5


def test_cells_by_kind_of_model_and_what_is_left_out(planned):
    plan, notes, _ = planned
    ids = {s.id for s in plan.stages}
    assert "digits/dropout/seed0/fgsm/8/255" not in ids and "digits/finetune/seed0/eot_pgd_linf/16/255" not in ids
    assert notes == [
        "digits: not run on the deterministic models teacher, finetune (by design): eot_pgd_linf",
        "digits: not run on the randomized models dropout (by design): fgsm",
    ]
    seeds = plan_of(seeds=[0, 1])[1]
    assert seeds[0] == notes[0], "a defense is named once, whatever the number of seeds"
    rnd = plan.cell("digits/dropout/seed0/pgd_linf/8/255")
    assert rnd.attack["changes"] == {"early_stop": False} and (rnd.randomized, rnd.draws) == (True, 3)
    assert plan.attack(rnd.id).early_stop is False
    eot = plan.cell("digits/dropout/seed0/eot_pgd_linf/16/255")
    assert eot.attack["changes"] == {} and eot.n == 6 and eot.draws == 3


def test_an_attack_runs_only_on_the_models_it_names():
    plan, notes, _ = plan_of(attack__fgsm__defenses=["finetune"])
    assert {c.model for c in plan.cells() if c.entry == "fgsm"} == {"digits/finetune/seed0"}
    assert notes == [
        "digits: not run on the deterministic models teacher (by design): fgsm, eot_pgd_linf",
        "digits: not run on the deterministic models finetune (by design): eot_pgd_linf",
        "digits: not run on the randomized models dropout (by design): fgsm",
    ]


def test_a_model_of_two_kinds_is_named_by_both_in_the_notes(monkeypatch):
    from benchmark.runner import config

    declared = config._declarations

    def also_nondifferentiable(cfg):
        out = declared(cfg)
        drop = out["dropout"]
        return {**out, "dropout": config.Declared(drop.kinds | {"nondifferentiable"}, drop.freezable)}

    monkeypatch.setattr(config, "_declarations", also_nondifferentiable)
    notes = plan_of()[1]
    assert "digits: not run on the nondifferentiable and randomized models dropout (by design): fgsm" in notes


def test_the_sanity_cells_of_a_randomized_model(planned):
    plan = planned[0]
    base = "digits/dropout/seed0/eot_pgd_linf/16/255"
    frozen, x2, unbounded = (plan.cell(f"{base}/{r}") for r in ("frozen", "x2", "unbounded"))
    step = plan.attack(base).step_size
    assert frozen.attack["changes"] == {"eot": 1, "early_stop": False}
    assert x2.attack["changes"] == {"steps": 8, "eot": 4, "step_size": step / 2, "early_stop": False}
    assert unbounded.attack["changes"] == {"eps": 1.0, "step_size": 2.5 / 4, "early_stop": False}
    for c, name, threat, draws in ((frozen, "sanity_frozen_randomness", "sanity", 1), (x2, "eot_pgd_linf_x2",
                                    "white-box", 3), (unbounded, "sanity_unbounded", "sanity", 3)):  # fmt: skip
        assert (c.name, c.threat_model, c.draws, c.n, c.base, c.randomized, c.entry) == (
            name, threat, draws, 5, base, True, "eot_pgd_linf")  # fmt: skip
        assert c.attack["eps"] == SIXTEEN and c.attack["cfg"] == CFG["attack"]["eot_pgd_linf"]["attack"]
    assert frozen.budget == Budget("linf", SIXTEEN, "16/255") and unbounded.budget == Budget("linf", 1.0, "1")
    assert x2.steps == 8 and plan.attack(x2.id).eot == 4
    more = plan_of(eval__sanity_examples=50)[0]
    assert more.cell(f"{base}/x2").n == 10, "at most the evaluation subset"


def test_the_sanity_checks_take_the_budget_nearest_the_headline():
    plan = plan_of(attack__eot_pgd_linf__epsilons=["10/255", "18/255", "30/255"], report__headline__linf="16/255")[0]
    sanity = [c for c in plan.cells() if c.role in ("frozen", "x2", "unbounded")]
    assert {c.attack["eps"] for c in sanity} == {18 / 255} and len(sanity) == 3
    assert {c.base for c in sanity} == {"digits/dropout/seed0/eot_pgd_linf/18/255"}


def test_without_an_eot_attack_or_frozen_randomness_no_sanity_checks():
    for changes, missing in (
        ({"attack__eot_pgd_linf__attack__eot": 1}, "an EOT-PGD attack (eot > 1, L-inf, no BPDA)"),
        ({"attack__eot_pgd_linf__attack__norm": "l2"}, "an EOT-PGD attack (eot > 1, L-inf, no BPDA)"),
    ):
        plan, _, warnings = plan_of(**changes)
        assert warnings == [f"digits/dropout: randomness sanity checks not run: needs {missing}"]
        assert not [c for c in plan.cells() if c.role != "attack" and c.role != "reference"]


def test_sanity_checks_need_a_model_that_freezes(monkeypatch):
    from benchmark.runner import config

    declared = config._declarations

    def unfreezable(cfg):
        return {k: config.Declared(v.kinds, False) for k, v in declared(cfg).items()}

    monkeypatch.setattr(config, "_declarations", unfreezable)
    plan, _, warnings = plan_of()
    assert warnings == ["digits/dropout: randomness sanity checks not run: needs `frozen(seed)`"]


def test_a_bpda_eot_attack_is_no_sanity_base():
    plan, _, warnings = plan_of(attack__eot_pgd_linf__attack__bpda=True, defense__dropout__module__p=0.3)
    assert warnings and "needs an EOT-PGD attack" in warnings[0]


# ---- CommonInit: the common model, its students, attacks crafted on it --------------------------------------
@pytest.fixture
def ssl_planned():
    return plan_of(SSL)


def test_the_common_model_comes_first_and_starts_the_teacher(ssl_planned):
    plan = ssl_planned[0]
    by = stages(plan)
    common, teacher = by["digits/common"], by["digits/teacher"]
    assert list(by)[:2] == ["digits/common", "digits/teacher"]
    assert (common.kind, common.defense, common.deps, common.job.name) == (
        "teacher",
        "common",
        [],
        "common",
    )
    assert common.job.module == teacher_module_cfg(SSL["teacher"]["common"])
    assert common.job.init_key is None
    assert teacher.deps == ["digits/common"] and teacher.job.init_key == common.key
    assert teacher.job.init_kind == "teacher" and job_key_spec(teacher.job)["init_kind"] == "teacher"
    ci, ft = by["digits/commoninit/seed0"], by["digits/finetune/seed0"]
    assert ci.deps == ["digits/common"] and ci.job.teacher_key == common.key
    assert ft.deps == ["digits/teacher"] and ft.job.teacher_key == teacher.key
    assert "digits/common/uap_feature/16/255" in by, "the common model gets its own rows"


def test_attacks_crafted_on_the_common_model(ssl_planned):
    plan = ssl_planned[0]
    by = stages(plan)
    uap = plan.cell("digits/finetune/seed0/uap_feature/16/255")
    assert uap.craft == "digits/common/craft/uap_feature/16/255" and uap.surrogate == "common"
    assert by[uap.craft].teacher == "digits/common" and by[uap.craft].deps == ["digits/common"]
    transfer = plan.cell("digits/common/transfer_pgd_linf/16/255")
    assert transfer.craft == "digits/teacher/craft/transfer_pgd_linf/16/255", "crafted on the teacher"
    with pytest.raises(
        ConfigError, match="^attack 'uap_feature' is crafted on the common model, but teacher.common is"
    ):
        plan_of(CFG, attack__uap_feature=copy.deepcopy(SSL["attack"]["uap_feature"]))


# ---- a public teacher -----------------------------------------------------------------------------------------
def test_a_teacher_from_a_checkpoint_file(tmp_path):
    from benchmark.components import build_datamodule, build_model, checkpoint_spec

    dm = build_datamodule(CFG["data"]["digits"])
    dm.setup()
    torch.manual_seed(0)
    path = tmp_path / "teacher.pt"
    torch.save(build_model(CFG["model"], dm).state_dict(), path)
    plan, notes, _ = plan_of(teacher__checkpoint=str(path))
    job = stages(plan)["digits/teacher"].job
    spec = {k: v for k, v in job.checkpoint.items() if k != "digest"}
    assert job.public is True and spec == checkpoint_spec(str(path), "teacher.checkpoint", "auto")
    assert notes[0].startswith("digits/teacher: teacher.checkpoint: ") and len(notes) == 3
    assert job_key_spec(job)["checkpoint"] == job.checkpoint["digest"]  # the content of the tensors loaded
    ssl = plan_of(SSL, teacher__common__checkpoint=str(path))
    common = stages(ssl[0])["digits/common"].job
    assert common.public is True and common.checkpoint["where"] == "teacher.common.checkpoint"
    assert ssl[1][0].startswith("digits/common: teacher.common.checkpoint: ")
    teacher = stages(ssl[0])["digits/teacher"].job
    assert teacher.init_key == stages(ssl[0])["digits/common"].key and not teacher.public


def test_a_teacher_checkpoints_format_head_and_tensors_enter_its_stage(tmp_path):
    """`teacher.checkpoint_format` and `teacher.checkpoint_head` reach the checkpoint spec (`auto` when a config
    has none); the key follows the tensors the file puts into the model, not its path."""
    from benchmark.components import build_datamodule, build_model, checkpoint_spec

    dm = build_datamodule(CFG["data"]["digits"])
    dm.setup()
    path = tmp_path / "teacher.pt"
    torch.manual_seed(0)
    torch.save(build_model(CFG["model"], dm).state_dict(), path)
    chosen = plan_of(
        teacher__checkpoint=str(path), teacher__checkpoint_format="suite", teacher__checkpoint_head="fresh"
    )
    t = stages(chosen[0])["digits/teacher"]
    spec = {k: v for k, v in t.job.checkpoint.items() if k != "digest"}
    assert spec == checkpoint_spec(str(path), "teacher.checkpoint", "suite", "fresh")
    assert t.load_report["head"].startswith("fresh")
    unset = plan_of(
        teacher__checkpoint=str(path), teacher__checkpoint_format=KeyError, teacher__checkpoint_head=KeyError
    )
    job = stages(unset[0])["digits/teacher"].job
    assert (job.checkpoint["format"], job.checkpoint["head"]) == ("auto", "auto")
    before = stages(plan_of(teacher__checkpoint=str(path))[0])["digits/teacher"]
    moved = tmp_path / "moved.pt"
    path.rename(moved)
    assert stages(plan_of(teacher__checkpoint=str(moved))[0])["digits/teacher"].key == before.key
    torch.manual_seed(1)
    torch.save(build_model(CFG["model"], dm).state_dict(), moved)
    assert stages(plan_of(teacher__checkpoint=str(moved))[0])["digits/teacher"].key != before.key, (
        "other tensors in the file: another teacher"
    )


def test_a_teacher_from_timms_weights_in_a_local_file_is_reported(tmp_path):
    """`model.pretrained_file`: the plan notes what timm's weights put into the teacher and keeps the load report."""
    import timm

    torch.manual_seed(1)
    path = tmp_path / "resnet10t.pth"
    torch.save(timm.create_model("resnet10t", num_classes=1000).state_dict(), path)
    only = {"defense": {"finetune": CFG["defense"]["finetune"]}, "attack": {"fgsm": CFG["attack"]["fgsm"]}}
    plan, notes, _ = plan_of(**only, model__pretrained=True, model__backbone="resnet10t",
                             model__pretrained_file=str(path), earlier_defenses={})  # fmt: skip
    teacher = stages(plan)["digits/teacher"]
    assert teacher.job.public is True and teacher.load_report["path"] == str(path)
    assert teacher.load_report["head"].startswith("fresh"), "a head for the digits' classes"
    assert notes[0] == f"digits/teacher: model.pretrained_file: {teacher.load_report['line']}"


def test_a_teacher_with_timms_pretrained_weights():
    """`model.pretrained=true`: the first model of the chain is timm's weights (listed by timm; nothing downloads)."""
    only = {"defense": {"finetune": CFG["defense"]["finetune"]}, "attack": {"fgsm": CFG["attack"]["fgsm"]}}
    pretrained = {"model__pretrained": True, "model__backbone": "resnet18", "earlier_defenses": {}}
    job = stages(plan_of(**only, **pretrained)[0])["digits/teacher"].job
    assert job.public is True and job.checkpoint is None and job.init_key is None
    ssl = stages(plan_of(SSL, **only, **pretrained)[0])
    assert ssl["digits/common"].job.public is True
    assert not ssl["digits/teacher"].job.public, "the first model of the chain only"


def test_two_entries_with_one_recipe_share_the_crafted_set_and_the_cell():
    twice = plan_of(attack__transfer_again=copy.deepcopy(CFG["attack"]["transfer_pgd_linf"]))[0]
    crafts = [s.id for s in twice.stages if s.kind == "craft"]
    assert crafts == [s.id for s in plan_of()[0].stages if s.kind == "craft"]
    assert "digits/finetune/seed0/transfer_again/16/255" not in stages(twice), "the same cell: computed once"


def test_the_executor_of_the_planning_process_evaluates_on_the_planner_s_data(planned, monkeypatch):
    """The planner sets up each data pair; the executor in the same process (inline, or merging a launch) uses that
    one instead of building it again, and a plan read from JSON (a worker's) builds its own, with the same data."""
    import benchmark.runner.execute as execute
    from benchmark.runner.launchers.common import narrow

    plan, _, _ = planned
    dm = plan._data["digits"]
    assert dm.fingerprint() == plan.pairs["digits"]["fingerprint"]
    assert narrow(plan, set())._data == plan._data, "the merge's narrowed plan keeps them"
    built = []
    real = execute.build_datamodule
    monkeypatch.setattr(execute, "build_datamodule", lambda cfg: built.append(cfg) or real(cfg))
    assert execute.Executor(CFG, plan)._dm("digits") is dm and built == []
    from_json = Plan.from_json(plan.to_json())
    assert from_json._data == {}
    theirs = execute.Executor(CFG, from_json)._dm("digits")
    assert len(built) == 1 and theirs is not dm
    assert torch.equal(theirs.test_tensors("target")[0], dm.test_tensors("target")[0])


def test_plans_of_one_run_share_a_data_pair_set_up_once(monkeypatch):
    import benchmark.runner.planner as planner_mod

    built = []
    real = planner_mod.build_datamodule
    monkeypatch.setattr(planner_mod, "build_datamodule", lambda cfg: built.append(cfg) or real(cfg))
    data: dict = {}
    first, second = make_plan(copy.deepcopy(CFG), data)[0], make_plan(copy.deepcopy(SSL), data)[0]
    assert second._data["digits"] is first._data["digits"] and len(built) == 1, "the same pair: set up once"
    reordered = copy.deepcopy(CFG)
    reordered["data"]["digits"] = dict(reversed(list(CFG["data"]["digits"].items())))
    assert make_plan(reordered, data)[0]._data["digits"] is first._data["digits"] and len(built) == 1, (
        "the same recipe written in another key order: the same pair"
    )
    other = copy.deepcopy(CFG)
    other["data"]["digits"]["split_seed"] = 1
    assert make_plan(other, data)[0]._data["digits"] is not first._data["digits"] and len(built) == 2
    assert make_plan(copy.deepcopy(CFG))[0]._data["digits"] is not first._data["digits"], "alone: its own"
