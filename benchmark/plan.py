"""The plan of a sweep: every stage and cell in dependency order, with its cache key, as plain JSON-able data.

config -> **plan** -> execute -> score -> checks -> rows -> report / tracking. The plan holds no tensors and no
models; its length is the progress total, and each stage names the stages it needs (`deps`), so a stage can be
handed to another process or cluster job. Stage kinds:

- `teacher`, `student`: training jobs (`job`: what `benchmark.stages.train` runs). The teacher may be a public
  model instead (`teacher.checkpoint=PATH`, a state-dict file loaded with `weights_only=True`, or timm's weights
  with `model.pretrained=true`): it is then loaded, not trained. With `teacher.common` (paper 1's CommonInit) a
  `common` stage (an SSL encoder, a supervised model, a checkpoint) comes first, the teacher is fine-tuned on the
  source from it, and a defense with `start_from: common` starts from it as well;
- `craft`: adversarial examples crafted once on the teacher (`Attack.crafted`: transfer attacks, universal
  perturbations; `surrogate: common` crafts on the common model), scored on every student;
- `cell`: one attack at one epsilon on one model. `role` says what it is for: `attack` (a row), `reference`
  (the white-box counterpart of a transfer attack, for transferability), and the sanity checks of a randomized
  model: `frozen` (randomness fixed), `x2` (twice the steps and EOT samples; a row that joins the worst case),
  `unbounded` (eps = 1).
Two stages with the same key are one stage (e.g. a transfer attack's white-box reference and the same attack
in the sweep).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from attacks.base import Attack, parse_eps
from attacks.pgd import PGD
from benchmark.cache import stage_key
from benchmark.config import AttackEntry, Declared, seeds_of, validate
from benchmark.stages.build import (
    NON_SEMANTIC_DATA_KEYS,
    build,
    build_datamodule,
    build_model,
    checkpoint_spec,
    job_key_spec,
    load_checkpoint,
    semantic,
    teacher_module_cfg,
)

#: The code a cell runs besides its attack (its model's code is in the model's key).
CELL_MODULES = ("benchmark.stages.attack", "benchmark.stages.score", "benchmark.detection")
ROLES = ("attack", "reference", "frozen", "x2", "unbounded")
#: Where a student starts (`start_from` in a defense config): the teacher, or the common model of CommonInit.
STARTS = ("teacher", "common")


def module_of(target: str) -> str:
    """`pkg.mod.Class` -> `pkg.mod`."""
    return target.rsplit(".", 1)[0]


def attack_modules(attack: Attack) -> list[str]:
    """The modules of an attack and of the attack it wraps (a transfer attack's inner attack)."""
    mods = [type(attack).__module__]
    if isinstance(getattr(attack, "base", None), Attack):
        mods.append(type(attack.base).__module__)
    return mods


def make_attack(spec: dict) -> Attack:
    """The attack of a plan entry: its config at its epsilon, with the plan's changes (`Attack.replace`)."""
    attack = build(spec["cfg"], eps=parse_eps(spec["eps"]))
    return attack.replace(**spec["changes"]) if spec.get("changes") else attack


@dataclass
class Plan:
    """The stages of a sweep in dependency order; `pairs` describes each data pair's evaluation subset."""

    name: str
    pairs: dict = field(default_factory=dict)
    stages: list[dict] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.stages)

    def stage(self, stage_id: str) -> dict:
        return self._index()[stage_id]

    def _index(self) -> dict:
        return {s["id"]: s for s in self.stages}

    def add(self, stage: dict) -> str:
        """Add a stage unless one with the same key is there; returns the id that stands for it."""
        for s in self.stages:
            if s["key"] == stage["key"] and s["kind"] == stage["kind"]:
                roles = {s.get("role"), stage.get("role")}
                if len(roles) > 1 and not roles <= {"attack", "reference"}:
                    raise RuntimeError(f"plan stages {s['id']} and {stage['id']} compute the same thing")
                if s.get("role") == "reference" and stage.get("role") == "attack":  # the sweep runs it too: a row
                    s.update(role="attack", entry=stage["entry"], attack=stage["attack"])
                return s["id"]
        self.stages.append(stage)
        return stage["id"]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


class Planner:
    """Builds the plan of a composed config (validated first: bad input fails before any work)."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.entries, self.declared = validate(cfg)
        self.seeds = seeds_of(cfg)
        self.plan = Plan(cfg["name"])
        self.notes: list[str] = []  # what the plan leaves out by design (the log shows them)
        self.warnings: list[str] = []  # checks the plan cannot run (every report shows them)
        self.teachers: dict[str, dict] = {}  # pair -> the teacher stage
        self.commons: dict[str, dict] = {}  # pair -> CommonInit's common model stage (teacher.common)

    def make(self) -> Plan:
        for pair in self.cfg["data"]:
            self._pair(pair)
        return self.plan

    # ---- training stages -------------------------------------------------------------------------
    def _job(self, kind, name, pair, module, trainer, seed, teacher_key, init_key=None, **extra) -> dict:
        cfg = self.cfg
        info = self.plan.pairs[pair]
        job = {
            "kind": kind,
            "name": name,
            "data_name": pair,
            "data": cfg["data"][pair],
            "data_fingerprint": info["fingerprint"],
            "domain": "source" if kind == "teacher" else "target",
            "model": cfg["model"],
            "module": module,
            "trainer": single_process_strategy({**cfg["trainer"], **(trainer or {})}),
            "seed": seed,
            "teacher_key": teacher_key,
            "init_key": init_key,
            "cache_dir": str(cfg["cache_dir"]),
            **extra,
        }
        modules = [module_of(job["data"]["_target_"]), module_of(module["_target_"]), "benchmark.stages.train"]
        job["key"] = stage_key(kind, job_key_spec(job), modules)
        if cfg.get("logger"):
            job["wandb"] = {**cfg["logger"], "group": cfg["name"]}
        return job

    def _defense_cfg(self, name: str) -> dict:
        """A defense of the sweep, or an earlier stage of one (`stages`: composed from its shipped config)."""
        from attacks.errors import ConfigError

        found = self.cfg["defense"].get(name) or (self.cfg.get("stages") or {}).get(name)
        if found is None:
            raise ConfigError(f"init_from names unknown defense '{name}'")
        return found

    def _student(self, pair: str, name: str, seed: int, teacher: dict, chain: tuple[str, ...] = ()) -> dict:
        """The training stage of a defense; a defense with `init_from` first gets the stage it starts from, one with
        `start_from: common` copies the common model instead of the teacher (CommonInit)."""
        from attacks.errors import ConfigError, choose

        sid = f"{pair}/{name}/seed{seed}"
        existing = self.plan._index().get(sid)
        if existing is not None:
            return existing
        dcfg = self._defense_cfg(name)
        start = dcfg.get("start_from", "teacher")
        choose(f"defense {name}: start_from", start, STARTS)
        if start == "common":
            teacher = self.commons.get(pair)
            if teacher is None:
                raise ConfigError(f"defense '{name}' starts from the common model, but teacher.common is not set")
        deps, init_key = [teacher["id"]], None
        if parent := dcfg.get("init_from"):
            if parent in (*chain, name):
                raise ConfigError(
                    f"defense '{name}' starts from itself: init_from chain {' -> '.join((*chain, name, parent))}"
                )
            earlier = self._student(pair, parent, seed, self.teachers[pair], (*chain, name))
            deps.append(earlier["id"])
            init_key = earlier["key"]
        job = self._job("student", name, pair, dcfg["module"], dcfg.get("trainer"), seed, teacher["key"], init_key)
        stage = {"id": sid, "kind": "student", "key": job["key"], "deps": deps, "job": job, "defense": name}
        stage["seed"] = seed
        self.plan.add(stage)
        return stage

    # ---- a data pair -----------------------------------------------------------------------------
    def _pair(self, pair: str) -> None:
        cfg = self.cfg
        dm = build_datamodule(cfg["data"][pair])
        dm.setup()
        n_test = len(dm.splits("target").test)
        n = n_test if cfg["eval"]["n_examples"] is None else min(cfg["eval"]["n_examples"], n_test)
        ev = cfg["eval"]
        self.plan.pairs[pair] = {
            "fingerprint": dm.fingerprint(),
            "source": dm.source_name,
            "target": dm.target_name,
            "num_classes": dm.num_classes,
            "n": n,
            "eval": {
                "data": semantic(cfg["data"][pair], NON_SEMANTIC_DATA_KEYS),
                "fingerprint": dm.fingerprint(),
                "seed": ev["seed"],
                "batch_size": ev["batch_size"],
                "precision": ev.get("precision", "fp32"),  # the attacks' autocast: crafted sets and cells differ
                "detection": bool(ev["detection"]),
                "detection_reference": ev["detection_reference"] if ev["detection"] else None,
            },
        }
        tcfg = cfg["teacher"]
        common = None
        if tcfg.get("common"):
            common = self._root(pair, "common", tcfg["common"], dm, None)
            self.commons[pair] = common
        teacher = self._root(pair, "teacher", tcfg, dm, common)
        self.teachers[pair] = teacher
        for root in (common, teacher) if common else (teacher,):
            self._cells(pair, root, Declared(frozenset(), False), teacher)
        for seed in self.seeds:
            for name in cfg["defense"]:
                self._cells(pair, self._student(pair, name, seed, teacher), self.declared[name], teacher)

    def _root(self, pair: str, name: str, tcfg: dict, dm, common: dict | None) -> dict:
        """The teacher (or CommonInit's common model): trained on the source domain (from the common model when
        there is one), or a public model loaded as it is: a checkpoint file, or timm's pretrained weights for the
        first model of the chain (`model.pretrained=true`)."""
        where = "teacher.checkpoint" if name == "teacher" else "teacher.common.checkpoint"
        if name == "common":  # the teacher's module is validated with the config; a bad SSL argument fails here
            build(teacher_module_cfg(tcfg), model=build_model(self.cfg["model"], dm))
        extra: dict = {}
        if tcfg.get("checkpoint"):
            spec = checkpoint_spec(tcfg["checkpoint"], where, tcfg.get("checkpoint_format", "auto"))
            extra = {"public": True, "checkpoint": spec}
            loaded = load_checkpoint(spec, build_model(self.cfg["model"], dm))  # a misfit fails before work
            self.notes.append(f"{pair}/{name}: {where}: {loaded.line()}")
        elif self.cfg["model"].get("pretrained") and common is None:
            extra = {"public": True}
        if common is not None and not extra:
            extra.update(init_key=common["key"], init_kind="teacher")
        seed = tcfg.get("seed", 0)
        job = self._job("teacher", name, pair, teacher_module_cfg(tcfg), tcfg.get("trainer"), seed, None, **extra)
        stage = {"id": f"{pair}/{name}", "kind": "teacher", "key": job["key"], "deps": [], "job": job}
        if extra.get("init_key"):
            stage["deps"] = [common["id"]]
        stage.update(defense=name, seed=seed)
        self.plan.add(stage)
        return stage

    # ---- cells -----------------------------------------------------------------------------------
    def _cells(self, pair: str, model: dict, declared: Declared, teacher: dict) -> None:
        randomized = "randomized" in declared.kinds
        draws = self.cfg["eval"]["draws"] if randomized else 1
        skipped = [e.name for e in self.entries if not e.applies(declared.kinds, model["defense"])]
        if skipped:
            kind = " and ".join(sorted(declared.kinds)) or "deterministic"
            self.notes.append(f"{pair}/{model['defense']}: not run on this {kind} model: {', '.join(skipped)}")
        base_cells = {}
        for entry in self.entries:
            if not entry.applies(declared.kinds, model["defense"]):
                continue
            for label, attack in zip(entry.eps_labels, entry.attacks):
                spec = {"cfg": entry.cfg, "eps": label, "changes": {}}
                if randomized and getattr(attack, "early_stop", False):
                    spec["changes"] = {"early_stop": False}  # one noisy pass must not decide (evaluate after)
                cell = self._cell(pair, model, entry, spec, "attack", entry.n_examples, randomized, draws, teacher)
                base_cells[(entry.name, label)] = cell
        if randomized:
            self._sanity_cells(pair, model, declared, draws, base_cells)

    def _cell(self, pair, model, entry, spec, role, n, randomized, draws, teacher, suffix="") -> dict:
        info = self.plan.pairs[pair]
        n = info["n"] if n is None else min(n, info["n"])
        attack = make_attack(spec)
        deps, craft = [model["id"]], None
        if attack.crafted:
            craft = self._craft(pair, entry, spec, self._surrogate(pair, entry, attack, teacher), attack)
            deps.append(craft["id"])
        key_spec = {
            "model": model["key"],
            "attack": attack.config(),
            "eval": {**info["eval"], "n": n, "draws": draws},
            "frozen": role == "frozen",  # the only role that changes what is computed (the model's randomness)
            "craft": craft["key"] if craft else None,
        }
        cell = {
            "id": f"{model['id']}/{entry.name}/{spec['eps']}{suffix}",
            "kind": "cell",
            "key": stage_key("attack", key_spec, [*attack_modules(attack), *CELL_MODULES]),
            "deps": deps,
            "pair": pair,
            "model": model["id"],
            "defense": model["defense"],
            "seed": model["seed"],
            "entry": entry.name,
            "attack": spec,
            "role": role,
            "n": n,
            "randomized": randomized,
            "draws": draws,
            "craft": craft["id"] if craft else None,
            "reference": None,
        }
        cell["id"] = self.plan.add(cell)
        if craft and attack.name == "transfer" and not randomized and role == "attack":
            # The white-box counterpart of the transfer attack on the same student, for transferability. (A
            # randomized model's white-box reference is an EOT attack on fewer examples: accuracy only.)
            inner = {k: v for k, v in spec["cfg"]["attack"].items() if k != "_partial_"}
            counterpart = {"cfg": inner, "eps": spec["eps"], "changes": {}}
            ref = self._cell(pair, model, entry, counterpart, "reference", n, False, 1, teacher, "/reference")
            self.plan.stage(cell["id"])["reference"] = ref["id"]
        return self.plan.stage(cell["id"])

    def _surrogate(self, pair: str, entry: AttackEntry, attack: Attack, teacher: dict | None) -> dict:
        """The stage a crafted attack is crafted on: the teacher, or the common model (`surrogate: common`)."""
        from attacks.errors import ConfigError

        teacher = teacher or self.teachers[pair]
        if getattr(attack, "surrogate_name", "teacher") != "common":
            return teacher
        if pair not in self.commons:
            raise ConfigError(f"attack '{entry.name}' is crafted on the common model, but teacher.common is not set")
        return self.commons[pair]

    def _craft(self, pair: str, entry: AttackEntry, spec: dict, teacher: dict, attack: Attack) -> dict:
        info = self.plan.pairs[pair]
        n = info["n"] if entry.n_examples is None else min(entry.n_examples, info["n"])  # what its cells score
        key_spec = {"teacher": teacher["key"], "attack": attack.config(), "eval": {**info["eval"], "n": n}}
        craft = {
            "id": f"{teacher['id']}/craft/{entry.name}/{spec['eps']}",
            "kind": "craft",
            "key": stage_key("craft", key_spec, [*attack_modules(attack), "benchmark.stages.attack"]),
            "deps": [teacher["id"]],
            "pair": pair,
            "teacher": teacher["id"],
            "attack": spec,
            "n": n,
        }
        craft["id"] = self.plan.add(craft)
        return self.plan.stage(craft["id"])

    def _sanity_cells(self, pair: str, model: dict, declared: Declared, draws: int, base_cells: dict) -> None:
        """The sanity checks of a randomized defense (evaluation.md section 2), from the sweep's EOT-PGD attack
        (L-inf, no BPDA) at the budget nearest the headline L-inf one, on `eval.sanity_examples` examples."""
        base = next(
            (
                (e, lbl, a)
                for e in self.entries
                for lbl, a in zip(e.eps_labels, e.attacks)
                if (e.name, lbl) in base_cells and isinstance(a, PGD) and a.eot > 1 and not a.bpda and a.norm == "linf"
            ),
            None,
        )
        if base is None or not declared.freezable:
            missing = "an EOT-PGD attack (eot > 1, L-inf, no BPDA)" if base is None else "`frozen(seed)`"
            self.warnings.append(f"{pair}/{model['defense']}: randomness sanity checks not run: needs {missing}")
            return
        entry = base[0]
        headline = parse_eps(self.cfg["report"]["headline"]["linf"])
        label, attack = min(zip(entry.eps_labels, entry.attacks), key=lambda la: abs(la[1].eps - headline))
        n = min(self.cfg["eval"]["sanity_examples"], self.plan.pairs[pair]["n"])
        steps, eot = attack.steps, attack.eot
        variants = {
            "frozen": {"eot": 1, "early_stop": False},
            "x2": {"steps": 2 * steps, "eot": 2 * eot, "step_size": attack.step_size / 2, "early_stop": False},
            "unbounded": {"eps": 1.0, "step_size": 2.5 / steps, "early_stop": False},
        }
        base_id = base_cells[(entry.name, label)]["id"]
        for role, changes in variants.items():
            spec = {"cfg": entry.cfg, "eps": label, "changes": changes}
            d = 1 if role == "frozen" else draws
            cell = self._cell(pair, model, entry, spec, role, n, True, d, None, f"/{role}")
            self.plan.stage(cell["id"])["base"] = base_id


def single_process_strategy(trainer: dict) -> dict:
    """One device on one node needs no DDP: train in-process (`trainer=ddp` with a `devices=1` stage)."""
    if (
        trainer.get("devices", 1) == 1
        and trainer.get("num_nodes", 1) == 1
        and str(trainer.get("strategy")).startswith("ddp")
    ):
        return {**trainer, "strategy": "auto"}
    return trainer


def make_plan(cfg: dict) -> tuple[Plan, list[str], list[str]]:
    """The validated plan of a composed config, the notes on what it leaves out by design (attacks that do not
    apply to a model) and the warnings (checks it cannot run)."""
    planner = Planner(cfg)
    return planner.make(), planner.notes, planner.warnings
