"""Builds the plan of a composed config (`make_plan`): the training stages of every pair (the teacher, the
common model of CommonInit, each defense and the earlier stages it starts from) and the cells of every model, each
resolved once into a `CellSpec` (`benchmark.runner.plan` describes what a plan holds).
"""

from __future__ import annotations

import json
from dataclasses import replace

from attacks.base import Attack
from attacks.errors import ConfigError, choose
from attacks.pgd import PGD
from attacks.transfer import ATTACKER_MODELS
from benchmark.components import (
    NON_SEMANTIC_DATA_KEYS,
    build_datamodule,
    build_model,
    checkpoint_spec,
    job_key_spec,
    load_checkpoint,
    pretrained_report,
    semantic,
    teacher_module_cfg,
)
from benchmark.numerics import stage_layout
from benchmark.records import Budget, CellSpec, Job
from benchmark.runner.cache import frozen_code, stage_key
from benchmark.runner.config import AttackEntry, Declared, seeds_of, validate
from benchmark.runner.plan import CellStage, CraftStage, Plan, TrainStage, attack_modules, make_attack, module_of

#: The code a cell runs besides its attack (its model's code is in the model's key).
CELL_MODULES = ("benchmark.runner.stages.attack", "benchmark.runner.stages.score", "benchmark.runner.detection")
#: The row name of each role's cells (None: the attack's own name); a `reference` cell makes no row.
ROW_NAMES = {"attack": None, "reference": None, "x2": "{entry}_x2", "frozen": "sanity_frozen_randomness",
             "unbounded": "sanity_unbounded"}  # fmt: skip
#: Where a student starts (`start_from` in a defense config): the teacher, or the common model of CommonInit.
STARTS = ("teacher", "common")


class Planner:
    """Builds the plan of a composed config (validated first: bad input fails before any work)."""

    def __init__(self, cfg: dict, data: dict | None = None):
        self.cfg = cfg
        self.data = {} if data is None else data  # set-up data pairs by their config (JSON)
        resolved = validate(cfg)
        self.entries, self.declared, self.headline = resolved.entries, resolved.declared, resolved.headline
        self.seeds = seeds_of(cfg)
        self.plan = Plan(cfg["name"], headline=self.headline)
        self.notes: list[str] = []  # what the plan leaves out by design (the log shows them)
        self._skipped: dict[tuple[str, str, str], list[str]] = {}  # (pair, kind, attacks) -> the models
        self.warnings: list[str] = []  # checks the plan cannot run (every report shows them)
        self.teachers: dict[str, TrainStage] = {}  # pair -> the teacher stage
        self.commons: dict[str, TrainStage] = {}  # pair -> CommonInit's common model stage (teacher.common)

    def make(self) -> Plan:
        for pair in self.cfg["data"]:
            self._pair(pair)
        for (pair, kind, attacks), models in self._skipped.items():  # one line per group, not per model
            self.notes.append(f"{pair}: not run on the {kind} models {', '.join(models)} (by design): {attacks}")
        return self.plan

    # ---- training stages -------------------------------------------------------------------------
    def _job(self, kind, name, pair, module, trainer, seed, teacher_key, init_key=None, **extra) -> Job:
        cfg = self.cfg
        info = self.plan.pairs[pair]
        job = Job(
            kind=kind,
            name=name,
            data_name=pair,
            data=cfg["data"][pair],
            data_fingerprint=info["fingerprint"],
            domain="source" if kind == "teacher" else "target",
            model=cfg["model"],
            module=module,
            trainer=single_process_strategy({**cfg["trainer"], **(trainer or {})}),
            seed=seed,
            teacher_key=teacher_key,
            init_key=init_key,
            cache_dir=str(cfg["cache_dir"]),
            numerics=stage_layout(cfg),
            key="",  # set below, from the other fields
            wandb={**cfg["logger"], "group": cfg["name"]} if cfg.get("logger") else None,
            **extra,
        )
        modules = [module_of(job.data["_target_"]), module_of(module["_target_"]), "benchmark.runner.stages.train"]
        return replace(job, key=stage_key(kind, job_key_spec(job), modules))

    def _defense_cfg(self, name: str) -> dict:
        """A defense of the sweep, or an earlier stage of one (`stages`: composed from its shipped config)."""
        found = self.cfg["defense"].get(name) or (self.cfg.get("earlier_defenses") or {}).get(name)
        if found is None:
            raise ConfigError(f"init_from names unknown defense '{name}'")
        return found

    def _student(self, pair: str, name: str, seed: int, teacher: TrainStage, chain: tuple[str, ...] = ()) -> TrainStage:
        """The training stage of a defense; a defense with `init_from` first gets the stage it starts from, one with
        `start_from: common` copies the common model instead of the teacher (CommonInit)."""
        sid = f"{pair}/{name}/seed{seed}"
        existing = self.plan._index().get(sid)
        if existing is not None:
            return existing
        defense_cfg = self._defense_cfg(name)
        start = defense_cfg.get("start_from", "teacher")
        choose(f"defense {name}: start_from", start, STARTS)
        if start == "common":
            teacher = self.commons.get(pair)
            if teacher is None:
                raise ConfigError(f"defense '{name}' starts from the common model, but teacher.common is not set")
        deps, init_key = [teacher.id], None
        if parent := defense_cfg.get("init_from"):
            if parent in (*chain, name):
                raise ConfigError(
                    f"defense '{name}' starts from itself: init_from chain {' -> '.join((*chain, name, parent))}"
                )
            earlier = self._student(pair, parent, seed, self.teachers[pair], (*chain, name))
            deps.append(earlier.id)
            init_key = earlier.key
        job = self._job(
            "student", name, pair, defense_cfg["module"], defense_cfg.get("trainer"), seed, teacher.key, init_key
        )
        stage = TrainStage(id=sid, kind="student", key=job.key, deps=deps, job=job, defense=name, seed=seed)
        self.plan.add(stage)
        return stage

    # ---- a data pair -----------------------------------------------------------------------------
    def _pair(self, pair: str) -> None:
        cfg = self.cfg
        recipe = json.dumps(cfg["data"][pair], sort_keys=True)
        if recipe not in self.data:
            self.data[recipe] = build_datamodule(cfg["data"][pair])
            self.data[recipe].setup()
        dm = self.plan._data[pair] = self.data[recipe]
        n_test = len(dm.splits("target").test)
        n = n_test if cfg["eval"]["n_examples"] is None else min(cfg["eval"]["n_examples"], n_test)
        evaluation = cfg["eval"]
        self.plan.pairs[pair] = {
            "fingerprint": dm.fingerprint(),
            "source": dm.source_name,
            "target": dm.target_name,
            "num_classes": dm.num_classes,
            "n": n,
            "train_sizes": {d: len(dm.splits(d).train) for d in ("source", "target")},  # for the time estimate
            "val_sizes": {d: len(dm.splits(d).val) for d in ("source", "target")},
            "eval": {
                "data": semantic(cfg["data"][pair], NON_SEMANTIC_DATA_KEYS),
                "fingerprint": dm.fingerprint(),
                "seed": evaluation["seed"],
                "batch_size": evaluation["batch_size"],
                "precision": evaluation.get(
                    "precision", "fp32"
                ),  # the attacks' autocast: crafted sets and cells differ
                "detection": bool(evaluation["detection"]),
                "detection_reference": evaluation["detection_reference"] if evaluation["detection"] else None,
            },
        }
        teacher_cfg = cfg["teacher"]
        common = None
        if teacher_cfg.get("common"):
            common = self._root(pair, "common", teacher_cfg["common"], dm, None)
            self.commons[pair] = common
        teacher = self._root(pair, "teacher", teacher_cfg, dm, common)
        self.teachers[pair] = teacher
        for root in (common, teacher) if common else (teacher,):
            self._cells(pair, root, Declared(frozenset(), False), teacher)
        for seed in self.seeds:
            for name in cfg["defense"]:
                self._cells(pair, self._student(pair, name, seed, teacher), self.declared[name], teacher)

    def _root(self, pair: str, name: str, teacher_cfg: dict, dm, common: TrainStage | None) -> TrainStage:
        """The teacher (or CommonInit's common model): trained on the source domain (from the common model when
        there is one), or a public model loaded as it is: a checkpoint file, or timm's pretrained weights for the
        first model of the chain (`model.pretrained=true`)."""
        where = "teacher.checkpoint" if name == "teacher" else "teacher.common.checkpoint"
        extra: dict = {}
        loaded = None
        if teacher_cfg.get("checkpoint"):
            fmt, head = teacher_cfg.get("checkpoint_format", "auto"), teacher_cfg.get("checkpoint_head", "auto")
            spec = checkpoint_spec(teacher_cfg["checkpoint"], where, fmt, head)
            loaded = load_checkpoint(spec, build_model(self.cfg["model"], dm))  # a misfit fails before work
            spec["digest"] = loaded.digest  # the key follows the tensors loaded
            extra = {"public": True, "checkpoint": spec}
        elif self.cfg["model"].get("pretrained") and common is None:
            extra = {"public": True}
            loaded = pretrained_report(self.cfg["model"], dm)  # timm's weights from a local file: what it loads
        if loaded is not None:
            self.notes.append(f"{pair}/{name}: {loaded.where}: {loaded.line()}")
        if common is not None and not extra:
            extra.update(init_key=common.key, init_kind="teacher")
        seed = teacher_cfg.get("seed", 0)
        job = self._job(
            "teacher", name, pair, teacher_module_cfg(teacher_cfg), teacher_cfg.get("trainer"), seed, None, **extra
        )
        stage = TrainStage(
            id=f"{pair}/{name}",
            kind="teacher",
            key=job.key,
            deps=[common.id] if extra.get("init_key") else [],
            job=job,
            defense=name,
            seed=seed,
            # --plan-json shows what the file puts into the model
            load_report=loaded.as_dict() if loaded is not None else None,
        )
        self.plan.add(stage)
        return stage

    # ---- cells -----------------------------------------------------------------------------------
    def _cells(self, pair: str, model: TrainStage, declared: Declared, teacher: TrainStage) -> None:
        randomized = "randomized" in declared.kinds
        draws = self.cfg["eval"]["draws"] if randomized else 1
        skipped = [e.name for e in self.entries if not e.applies(declared.kinds, model.defense)]
        if skipped:
            kind = " and ".join(sorted(declared.kinds)) or "deterministic"
            models = self._skipped.setdefault((pair, kind, ", ".join(skipped)), [])
            if model.defense not in models:  # once per defense, not per seed
                models.append(model.defense)
        base_cells = {}
        for entry in self.entries:
            if not entry.applies(declared.kinds, model.defense):
                continue
            for budget, attack in zip(entry.budgets, entry.attacks):
                spec = {"cfg": entry.cfg, "eps": budget.eps, "changes": {}}
                if randomized and getattr(attack, "early_stop", False):
                    spec["changes"] = {"early_stop": False}  # one noisy pass must not decide (evaluate after)
                cell = self._cell(pair, model, entry, spec, budget, "attack", entry.n_examples, randomized, draws,
                                  teacher)  # fmt: skip
                base_cells[(entry.name, budget.label)] = cell
        if randomized:
            self._sanity_cells(pair, model, declared, draws, base_cells)

    def _cell(self, pair, model, entry, spec, budget, role, n, randomized, draws, teacher, suffix="") -> CellSpec:
        """Resolve one cell into its `CellSpec`: the attack is built here, once, from its recipe `spec` at `budget`,
        and what the rows need of it is recorded (budget, threat model, steps...)."""
        info = self.plan.pairs[pair]
        n = info["n"] if n is None else min(n, info["n"])
        attack = make_attack(spec)
        deps, craft = [model.id], None
        if attack.crafted:
            craft = self._craft(pair, entry, spec, budget, self._surrogates(pair, entry, attack, teacher), attack)
            deps.append(craft.id)
        key_spec = {
            "model": model.key,
            "attack": attack.config(),
            "eval": {**info["eval"], "n": n, "draws": draws},
            "frozen": role == "frozen",  # the only role that changes what is computed (the model's randomness)
            "craft": craft.key if craft else None,
        }
        sanity = role in ("frozen", "unbounded")
        name = ROW_NAMES[role] or entry.name
        cell = CellSpec(
            id=f"{model.id}/{entry.name}/{budget.label}{suffix}",
            pair=pair,
            model=model.id,
            defense=model.defense,
            seed=model.seed,
            entry=entry.name,
            role=role,
            attack=spec,
            name=name.format(entry=entry.name),
            # the unbounded check's budget is its own (eps = 1), not the base attack's
            budget=Budget(budget.norm, attack.eps, "1") if role == "unbounded" else budget,
            threat_model="sanity" if sanity else attack.threat_model,
            surrogate=getattr(attack, "surrogate_name", "") if attack.crafted else "",
            steps=getattr(attack, "steps", getattr(getattr(attack, "base", None), "steps", 1)),
            crafted=attack.crafted,
            transfer=attack.name == "transfer",
            targeted=bool(getattr(attack, "targeted", False) and hasattr(attack, "target_classes")),
            reject_aware=bool(getattr(attack, "reject_aware", False)),
            n=n,
            randomized=randomized,
            draws=draws,
            craft=craft.id if craft else None,
        )
        key = stage_key("attack", key_spec, [*attack_modules(attack), *CELL_MODULES])
        sid = self.plan.add(CellStage(id=cell.id, kind="cell", key=key, deps=deps, cell=cell), attack)
        if craft and cell.transfer and not randomized and role == "attack":
            # The white-box counterpart of the transfer attack on the same student, for transferability: its inner
            # attack run white-box, or the sweep's entry it names (`reference`, at the same budget). (A randomized
            # model's white-box reference is an EOT attack on fewer examples: accuracy only.)
            named = next((e for e in self.entries if e.name == entry.reference and not e.attacks[0].crafted
                          and budget in e.budgets), None)  # fmt: skip
            if named is not None:
                counterpart, ref_entry = {"cfg": named.cfg, "eps": budget.eps, "changes": {}}, named
            else:
                inner = {k: v for k, v in spec["cfg"]["attack"].items() if k != "_partial_"}
                counterpart, ref_entry = {"cfg": inner, "eps": budget.eps, "changes": {}}, entry
            ref = self._cell(pair, model, ref_entry, counterpart, budget, "reference", n, False, 1, teacher,
                             "/reference")  # fmt: skip
            self.plan.update_cell(sid, reference=ref.id)
        return self.plan.cell(sid)

    def _surrogates(
        self, pair: str, entry: AttackEntry, attack: Attack, teacher: TrainStage | None
    ) -> list[TrainStage]:
        """The stages a crafted attack is crafted on: the teacher; the common model (`surrogate: common`); a model
        the attacker trains (`attacks.transfer.ATTACKER_MODELS`: a training stage of that defense config with
        `eval.attacker_seed`); several of them for an ensemble."""
        teacher = teacher or self.teachers[pair]
        out = []
        for name in getattr(attack, "surrogates", (getattr(attack, "surrogate_name", "teacher"),)):
            if name in ATTACKER_MODELS:
                seed = self.cfg["eval"]["attacker_seed"]
                if seed in self.seeds:
                    raise ConfigError(f"eval.attacker_seed {seed} is a training seed of the sweep; the attacker's "
                                      f"models need a seed of their own (seeds: {self.seeds})")  # fmt: skip
                out.append(self._student(pair, ATTACKER_MODELS[name], seed, self.teachers[pair]))
            elif name == "common":
                if pair not in self.commons:
                    raise ConfigError(f"attack '{entry.name}' is crafted on the common model, but teacher.common "
                                      "is not set")  # fmt: skip
                out.append(self.commons[pair])
            else:
                out.append(teacher)
        return out

    def _craft(self, pair: str, entry: AttackEntry, spec: dict, budget: Budget, surrogates: list[TrainStage],
               attack: Attack) -> CraftStage:  # fmt: skip
        info = self.plan.pairs[pair]
        n = info["n"] if entry.n_examples is None else min(entry.n_examples, info["n"])  # what its cells score
        keys = [s.key for s in surrogates]
        key_spec = {"teacher": keys[0] if len(keys) == 1 else keys, "attack": attack.config(),
                    "eval": {**info["eval"], "n": n}}  # fmt: skip
        where = surrogates[0].id if len(surrogates) == 1 else f"{pair}/ensemble"
        craft = CraftStage(
            id=f"{where}/craft/{entry.name}/{budget.label}",
            kind="craft",
            key=stage_key("craft", key_spec, [*attack_modules(attack), "benchmark.runner.stages.attack"]),
            deps=[s.id for s in surrogates],
            pair=pair,
            teacher=surrogates[0].id,
            surrogates=[s.id for s in surrogates],
            attack=spec,
            n=n,
        )
        return self.plan.stage(self.plan.add(craft, attack))  # the same recipe as its cells: one attack object

    def _sanity_cells(self, pair: str, model: TrainStage, declared: Declared, draws: int, base_cells: dict) -> None:
        """The sanity checks of a randomized defense (evaluation.md section 2), from the sweep's EOT-PGD attack
        (L-inf, no BPDA) at the budget nearest the headline L-inf one, on `eval.sanity_examples` examples."""
        base = next(
            (
                (e, b, a)
                for e in self.entries
                for b, a in zip(e.budgets, e.attacks)
                if (e.name, b.label) in base_cells
                and isinstance(a, PGD)
                and a.eot > 1
                and not a.bpda
                and a.norm == "linf"
            ),
            None,
        )
        if base is None or not declared.freezable:
            missing = "an EOT-PGD attack (eot > 1, L-inf, no BPDA)" if base is None else "`frozen(seed)`"
            self.warnings.append(f"{pair}/{model.defense}: randomness sanity checks not run: needs {missing}")
            return
        entry = base[0]
        headline = self.headline["linf"]
        budget, attack = min(zip(entry.budgets, entry.attacks), key=lambda ba: abs(ba[1].eps - headline))
        n = min(self.cfg["eval"]["sanity_examples"], self.plan.pairs[pair]["n"])
        steps, eot = attack.steps, attack.eot
        variants = {
            "frozen": {"eot": 1, "early_stop": False},
            "x2": {"steps": 2 * steps, "eot": 2 * eot, "step_size": attack.step_size / 2, "early_stop": False},
            "unbounded": {"eps": 1.0, "step_size": 2.5 / steps, "early_stop": False},
        }
        base_id = base_cells[(entry.name, budget.label)].id
        for role, changes in variants.items():
            spec = {"cfg": entry.cfg, "eps": budget.eps, "changes": changes}
            d = 1 if role == "frozen" else draws
            cell = self._cell(pair, model, entry, spec, budget, role, n, True, d, None, f"/{role}")
            self.plan.update_cell(cell.id, base=base_id)


def single_process_strategy(trainer: dict) -> dict:
    """One device on one node needs no DDP: train in-process (`trainer=ddp` with a `devices=1` stage)."""
    if (
        trainer.get("devices", 1) == 1
        and trainer.get("num_nodes", 1) == 1
        and str(trainer.get("strategy")).startswith("ddp")
    ):
        return {**trainer, "strategy": "auto"}
    return trainer


def make_plan(cfg: dict, data: dict | None = None) -> tuple[Plan, list[str], list[str]]:
    """The validated plan of a composed config, the notes on what it leaves out by design (attacks that do not
    apply to a model) and the warnings (checks it cannot run). `data`: set-up data pairs by config, shared by the
    plans of one run (fashion_shift and fashion_ssl plan on the same pair)."""
    planner = Planner(cfg, data)
    with frozen_code():  # the code does not change while it plans: each module set is fingerprinted once
        return planner.make(), planner.notes, planner.warnings
