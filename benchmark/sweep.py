"""One benchmark sweep: dataset pairs x (teacher + defenses x seeds) x attacks x epsilons.

Expensive work is done once and cached by content (see `benchmark.cache`): a teacher serves every
student built on it, a student every attack, and examples crafted on a teacher every student they are
transferred to. A rerun of a finished sweep trains and attacks nothing; adding an attack runs only it.
"""

from __future__ import annotations

import copy
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from attacks.base import Attack, check_adversarial, parse_eps
from attacks.transfer import TransferAttack
from benchmark.cache import Cache, stage_key
from benchmark.detection import RepresentationDetector, detection_auroc
from benchmark.errors import ConfigError, choose
from benchmark.metrics import (
    TRANSFERABILITY_FORMS,
    AttackSuccessRate,
    CleanAccuracy,
    RobustAccuracy,
    Transferability,
    wilson_interval,
)
from benchmark.stages import (
    NON_SEMANTIC_DATA_KEYS,
    build,
    build_datamodule,
    build_model,
    job_key_spec,
    load_trained,
    predict,
    run_attack,
    semantic,
    train_stage,
    whitebox,
)

#: Row fields that describe one attack's run; empty in the per-example worst-case rows.
PER_ATTACK_FIELDS = (
    "transfer_acc",
    "transferability",
    "transferability_form",
    "transferability_success_ratio",
    "transferability_accuracy_drop",
    "detection_auroc",
    "attack_seconds",
    "wall_seconds",
    "forward_passes",
    "backward_passes",
)
TEACHER_MODULE = {"_target_": "lightning_modules.modules.TeacherModule"}


@dataclass
class AttackEntry:
    """An attack config of the sweep, instantiated once per epsilon (which validates its values)."""

    name: str
    cfg: dict
    eps_labels: list[str]
    attacks: list[Attack]


@dataclass
class Target:
    """A model under evaluation: the teacher itself or a student of one defense and seed."""

    defense: str
    seed: int
    job: dict
    meta: dict = field(default_factory=dict)


@dataclass
class Context:
    """Per dataset pair: the fixed evaluation subset and the teacher."""

    data_name: str
    dm: Any
    x: torch.Tensor
    y: torch.Tensor
    eval_spec: dict
    teacher: Target | None
    teacher_model: torch.nn.Module | None = None
    crafted: dict = field(default_factory=dict)
    students: dict = field(default_factory=dict)


@dataclass
class Evaluated:
    """A model under evaluation with what every cell of it shares: clean predictions and detection scores."""

    target: Target
    model: torch.nn.Module
    pred_clean: torch.Tensor
    detector: RepresentationDetector | None
    score_clean: torch.Tensor | None


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def single_process_strategy(trainer: dict) -> dict:
    """One device on one node needs no DDP: train in-process (`trainer=ddp` with a `devices=1` stage)."""
    if (
        trainer.get("devices", 1) == 1
        and trainer.get("num_nodes", 1) == 1
        and str(trainer.get("strategy")).startswith("ddp")
    ):
        return {**trainer, "strategy": "auto"}
    return trainer


def flag_metrics(flags: dict) -> dict[str, float]:
    """Clean accuracy, robust accuracy (with its Wilson interval) and success rate from per-example flags."""
    c, a = flags["clean_correct"], flags["adv_correct"]
    clean, robust, asr = CleanAccuracy(), RobustAccuracy(), AttackSuccessRate()
    clean.update(c)
    robust.update(c, a)
    asr.update(c, a)
    lo, hi = wilson_interval(int(robust.robust), int(robust.total))
    return {
        "clean_acc": float(clean.compute()),
        "robust_acc": float(robust.compute()),
        "robust_acc_ci_low": lo,
        "robust_acc_ci_high": hi,
        "success_rate": float(asr.compute()),
        "n_examples": int(robust.total),
    }


class Sweep:
    """Validates a composed config, then runs its stages (cached) and returns one row per cell.

    Args:
        cfg: the composed config as a plain dict (see `benchmark/configs/config.yaml`).
        console: where progress and log lines go.
    """

    def __init__(self, cfg: dict, console: Console | None = None):
        self.cfg = cfg
        self.console = console or Console(stderr=True)
        self.cache = Cache(cfg["cache_dir"])
        self.device = _device(cfg["eval"]["device"])
        self.stats: Counter = Counter()
        self.rows: list[dict] = []
        self.attacks = self._validate()
        self._progress: Progress | None = None
        self._task = None

    # ---- validation (before any work) --------------------------------------------------------
    def _validate(self) -> list[AttackEntry]:
        cfg = self.cfg
        for key in ("data", "defense", "attack"):
            if not cfg.get(key):
                raise ConfigError(f"the sweep has no {key}; select at least one, e.g. {key}=<name>")
        seeds = cfg["seeds"] if isinstance(cfg["seeds"], list) else [cfg["seeds"]]
        if not seeds or not all(isinstance(s, int) for s in seeds):
            raise ConfigError(f"seeds must be a list of integers, got {cfg['seeds']}")
        self.seeds = seeds
        ev = cfg["eval"]
        if ev.get("n_examples") is not None and ev["n_examples"] < 1:
            raise ConfigError(f"eval.n_examples must be >= 1 or null, got {ev['n_examples']}")
        if ev["batch_size"] < 1:
            raise ConfigError(f"eval.batch_size must be >= 1, got {ev['batch_size']}")
        choose("report.transferability", cfg["report"]["transferability"], TRANSFERABILITY_FORMS)
        for dcfg in cfg["data"].values():
            dm = build_datamodule(dcfg)
            model = build_model(cfg["model"], dm)
            build(self._module_cfg(cfg["teacher"]), model=model)
            for dname, dfn in {**(cfg.get("stages") or {}), **cfg["defense"]}.items():
                self._check_trainer(dname, dfn.get("trainer") or {})
                build(dfn["module"], model=build_model(cfg["model"], dm), teacher_state=model.state_dict())
        self._check_trainer("teacher", cfg["teacher"].get("trainer") or {})
        entries = []
        for name, acfg in cfg["attack"].items():
            labels = [str(e) for e in acfg.get("epsilons") or []]
            if not labels:
                raise ConfigError(f"attack '{name}' has no epsilons")
            entries.append(
                AttackEntry(name, acfg["attack"], labels, [build(acfg["attack"], eps=parse_eps(e)) for e in labels])
            )
        return entries

    @staticmethod
    def _check_trainer(name: str, trainer: dict) -> None:
        epochs = trainer.get("max_epochs")
        if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
            raise ConfigError(f"{name}: trainer.max_epochs must be an integer >= 1, got {epochs}")

    @staticmethod
    def _module_cfg(teacher_cfg: dict) -> dict:
        return {**TEACHER_MODULE, **(teacher_cfg.get("module") or {})}

    # ---- progress --------------------------------------------------------------------------------
    def total_cells(self) -> int:
        per_model = sum(len(e.attacks) for e in self.attacks)
        return len(self.cfg["data"]) * (1 + len(self.cfg["defense"]) * len(self.seeds)) * per_model

    @contextmanager
    def _paused(self):
        """Stop the sweep's live progress while Lightning draws its own training bar."""
        if self._progress is not None:
            self._progress.stop()
        try:
            yield
        finally:
            if self._progress is not None:
                self._progress.start()

    def log(self, msg: str) -> None:
        (self._progress.console if self._progress else self.console).log(msg)

    # ---- stages -----------------------------------------------------------------------------------
    def _job(
        self,
        kind: str,
        name: str,
        ctx: Context,
        module: dict,
        trainer: dict | None,
        seed: int,
        teacher_key: str | None,
        init_key: str | None = None,
    ) -> dict:
        cfg = self.cfg
        job = {
            "kind": kind,
            "name": name,
            "data_name": ctx.data_name,
            "data": cfg["data"][ctx.data_name],
            "data_fingerprint": ctx.eval_spec["fingerprint"],
            "domain": "source" if kind == "teacher" else "target",
            "model": cfg["model"],
            "module": module,
            "trainer": single_process_strategy({**cfg["trainer"], **(trainer or {})}),
            "seed": seed,
            "teacher_key": teacher_key,
            "init_key": init_key,
            "cache_dir": str(cfg["cache_dir"]),
        }
        job["key"] = stage_key(kind, job_key_spec(job))
        if cfg.get("logger"):
            job["wandb"] = {**cfg["logger"], "group": cfg["name"]}
        return job

    def _train(self, target: Target) -> None:
        job = target.job
        if self.cache.meta(job["kind"], job["key"]) is None:
            self.log(f"training {job['kind']} [bold]{target.defense}[/] seed {target.seed} ({job['data_name']})")
            with self._paused():
                target.meta = train_stage(job, progress=self.cfg.get("progress", True))
            self.stats[f"{job['kind']}_trained"] += 1
            prep = target.meta.get("prep")
            self.log(
                f"  done in {target.meta['fit_seconds']:.1f}s; best {target.meta['selection_metric']} "
                f"{target.meta['best_value']:.3f} at epoch {target.meta['best_epoch']}"
                + (f"; preparation {prep['seconds']:.1f}s" + (" (cached)" if prep["cached"] else "") if prep else "")
            )
        else:
            target.meta = train_stage(job)
            self.stats["cache_hits"] += 1

    def _student(self, name: str, seed: int, ctx: Context, chain: tuple[str, ...] = ()) -> Target:
        """The trained student of a defense; a defense with `init_from` first trains the stage it starts from."""
        if (name, seed) in ctx.students:
            return ctx.students[(name, seed)]
        dcfg = self._defense_cfg(name)
        init_key = None
        if parent := dcfg.get("init_from"):
            if parent in (*chain, name):
                raise ConfigError(
                    f"defense '{name}' starts from itself: init_from chain {' -> '.join((*chain, name, parent))}"
                )
            init_key = self._student(parent, seed, ctx, (*chain, name)).job["key"]
        job = self._job(
            "student", name, ctx, dcfg["module"], dcfg.get("trainer"), seed, ctx.teacher.job["key"], init_key
        )
        target = Target(name, seed, job)
        self._train(target)
        if parent:  # the defense's training cost includes the stages it starts from
            earlier = ctx.students[(parent, seed)].meta["fit_seconds"]
            target.meta = {**target.meta, "fit_seconds": target.meta["fit_seconds"] + earlier}
        ctx.students[(name, seed)] = target
        return target

    def _defense_cfg(self, name: str) -> dict:
        """A defense of the sweep, or an earlier stage of one (`stages`: composed from its shipped config)."""
        found = self.cfg["defense"].get(name) or (self.cfg.get("stages") or {}).get(name)
        if found is None:
            raise ConfigError(f"init_from names unknown defense '{name}'")
        return found

    def _crafted(self, attack: TransferAttack, ctx: Context) -> tuple[torch.Tensor, dict, str]:
        """Examples crafted on the teacher: once per (teacher, attack, eps), then reused by every student."""
        spec = {"teacher": ctx.teacher.job["key"], "attack": attack.config(), "eval": ctx.eval_spec}
        key = stage_key("craft", spec)
        if key in ctx.crafted:
            return ctx.crafted[key]
        meta = self.cache.meta("craft", key)
        if meta is None:
            attack.surrogate = self._teacher_model(ctx)
            torch.manual_seed(self.cfg["eval"]["seed"])
            bs = self.cfg["eval"]["batch_size"]
            x_adv, cost = run_attack(attack, attack.surrogate, ctx.x, ctx.y, bs, self.device)
            meta = {**cost, "spec": spec}
            self.cache.put("craft", key, meta, {"x_adv": x_adv})
            self.stats["crafted"] += 1
        else:
            x_adv = self.cache.tensors("craft", key, "x_adv")
            check_adversarial(ctx.x, x_adv, attack.norm, attack.eps)  # cached examples are re-checked, not trusted
            self.stats["cache_hits"] += 1
        ctx.crafted[key] = (x_adv, meta, key)
        return ctx.crafted[key]

    def _teacher_model(self, ctx: Context) -> torch.nn.Module:
        if ctx.teacher_model is None:
            ctx.teacher_model = load_trained(ctx.teacher.job).deployed_model().to(self.device)
        return ctx.teacher_model

    def _cell(self, ev: Evaluated, attack: Attack, ctx: Context) -> tuple[dict, dict]:
        """Per-example flags (and detection scores) of one attack at one epsilon on one model (cached)."""
        spec = {"model": ev.target.job["key"], "attack": attack.config(), "eval": ctx.eval_spec}
        transfer = isinstance(attack, TransferAttack)
        if transfer:
            x_adv, craft_meta, spec["craft"] = self._crafted(attack, ctx)
        key = stage_key("attack", spec)
        meta = self.cache.meta("attack", key)
        if meta is not None:
            self.stats["cache_hits"] += 1
            meta["cached"] = True
            return self.cache.tensors("attack", key, "flags"), meta
        start = time.perf_counter()
        bs = self.cfg["eval"]["batch_size"]
        if transfer:
            cost = {k: craft_meta[k] for k in ("attack_seconds", "forward_passes", "backward_passes")}
        else:
            torch.manual_seed(self.cfg["eval"]["seed"])
            task = self._progress.add_task(f"  {attack.label}", total=len(ctx.x)) if self._progress else None
            on_batch = (lambda n: self._progress.advance(task, n)) if task is not None else None
            x_adv, cost = whitebox(attack, ev.model, ctx.x, ctx.y, bs, self.device, on_batch)
            if task is not None:
                self._progress.remove_task(task)
        pred_adv = predict(ev.model, x_adv, bs, self.device)
        flags = {"clean_correct": ev.pred_clean == ctx.y, "adv_correct": pred_adv == ctx.y}
        if ev.detector is not None:
            flags["score_clean"], flags["score_adv"] = ev.score_clean, ev.detector.scores(x_adv, pred_adv)
        meta = {**cost, "wall_seconds": time.perf_counter() - start, "spec": spec}
        self.cache.put("attack", key, meta, {"flags": flags})
        self.stats["attacks_run"] += 1
        meta["cached"] = False
        return flags, meta

    # ---- the sweep --------------------------------------------------------------------------------
    def run(self) -> list[dict]:
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        with Progress(*columns, console=self.console, transient=False) as progress:
            self._progress = progress
            self._task = progress.add_task("sweep cells", total=self.total_cells())
            try:
                for data_name in self.cfg["data"]:
                    self._run_pair(data_name)
            finally:
                self._progress = None
        return self.rows

    def _run_pair(self, data_name: str) -> None:
        cfg = self.cfg
        dm = build_datamodule(cfg["data"][data_name])
        dm.setup()
        x, y = dm.test_tensors("target", cfg["eval"]["n_examples"])
        eval_spec = {
            "data": semantic(cfg["data"][data_name], NON_SEMANTIC_DATA_KEYS),
            "fingerprint": dm.fingerprint(),
            "n": len(x),
            "seed": cfg["eval"]["seed"],
        }
        ctx = Context(data_name, dm, x, y, eval_spec, teacher=None)
        tcfg = cfg["teacher"]
        seed = tcfg.get("seed", 0)
        ctx.teacher = Target(
            "teacher",
            seed,
            self._job("teacher", "teacher", ctx, self._module_cfg(tcfg), tcfg.get("trainer"), seed, None),
        )
        self._train(ctx.teacher)
        self.log(f"[bold]{data_name}[/]: {dm.source_name} -> {dm.target_name}, {len(x)} target test examples")
        self._evaluate(ctx.teacher, ctx)
        for seed in self.seeds:
            for name in cfg["defense"]:
                self._evaluate(self._student(name, seed, ctx), ctx)

    def _evaluated(self, target: Target, ctx: Context) -> Evaluated:
        module = load_trained(target.job).to(self.device)
        model = module.deployed_model()
        bs = self.cfg["eval"]["batch_size"]
        pred_clean = predict(model, ctx.x, bs, self.device)
        detector = score_clean = None
        if self.cfg["eval"]["detection"]:
            ref_x, ref_y = ctx.dm.tensors("target", "train", self.cfg["eval"]["detection_reference"])
            detector = RepresentationDetector(module.representation, ref_x, ref_y, bs, self.device)
            score_clean = detector.scores(ctx.x, pred_clean)
        return Evaluated(target, model, pred_clean, detector, score_clean)

    def _evaluate(self, target: Target, ctx: Context) -> None:
        ev = self._evaluated(target, ctx)
        computed: list[tuple[dict, dict]] = []
        for entry in self.attacks:
            for eps_str, attack in zip(entry.eps_labels, entry.attacks):
                attack = copy.copy(attack)
                flags, meta = self._cell(ev, attack, ctx)
                row = self._row(target, ctx, entry.name, attack, eps_str, flags, meta)
                if isinstance(attack, TransferAttack):
                    wb_flags, _ = self._cell(ev, attack.whitebox_counterpart(), ctx)
                    row.update(self._transferability(flags, wb_flags))
                self.rows.append(row)
                computed.append((row, flags))
                if self._progress is not None:
                    self._progress.advance(self._task)
                self.log(
                    f"  {target.defense:>12} s{target.seed} {entry.name:>18} eps {eps_str:>7}: "
                    f"clean {row['clean_acc']:.3f} robust {row['robust_acc']:.3f}"
                    + (" (cached)" if meta["cached"] else "")
                )
        self.rows.extend(self._worst_case_rows(computed))

    def _row(
        self, target: Target, ctx: Context, name: str, attack: Attack, eps_str: str, flags: dict, meta: dict
    ) -> dict:
        transfer = isinstance(attack, TransferAttack)
        module_cfg = target.job["module"]
        return {
            "experiment": self.cfg["name"],
            "pair": ctx.data_name,
            "source": ctx.dm.source_name,
            "target": ctx.dm.target_name,
            "model": self.cfg["model"]["backbone"],
            "defense": target.defense,
            "mode": module_cfg.get("mode", "pretrain"),
            "seed": target.seed,
            "attack": name,
            "threat_model": "transfer" if transfer else "white-box",
            "surrogate": attack.surrogate_name if transfer else "",
            "norm": attack.norm,
            "eps": attack.eps,
            "eps_label": eps_str,
            **flag_metrics(flags),
            **{k: meta.get(k) for k in PER_ATTACK_FIELDS},
            "detection_auroc": detection_auroc(flags),
            "train_seconds": target.meta.get("fit_seconds"),
            "prep_seconds": (target.meta.get("prep") or {}).get("seconds"),
            "randomized_defense": target.meta.get("randomized", False),
            "cached": meta["cached"],
            "flags": "",
        }

    def _transferability(self, flags: dict, wb_flags: dict) -> dict:
        out = {"transfer_acc": flag_metrics(flags)["robust_acc"]}
        for form in ("success_ratio", "accuracy_drop"):
            m = Transferability(form)
            m.update(flags["clean_correct"], wb_flags["adv_correct"], flags["adv_correct"])
            out[f"transferability_{form}"] = float(m.compute())
        form = self.cfg["report"]["transferability"]
        out["transferability"] = out[f"transferability_{form}"]
        out["transferability_form"] = f"{form} (our reading of Zhang et al. 2020; formula unverified)"
        return out

    @staticmethod
    def _worst_case_rows(computed: list[tuple[dict, dict]]) -> list[dict]:
        """Per example, the worst case over every attack that shares a norm and epsilon (the union threat model)."""
        groups: dict[tuple, list[tuple[dict, dict]]] = {}
        for row, flags in computed:
            groups.setdefault((row["norm"], round(row["eps"], 10)), []).append((row, flags))
        rows = []
        for members in groups.values():
            if len(members) < 2:
                continue
            first, first_flags = members[0]
            union = {
                "clean_correct": first_flags["clean_correct"],
                "adv_correct": torch.stack([f["adv_correct"] for _, f in members]).all(0),
            }
            row = {**first, **flag_metrics(union), **dict.fromkeys(PER_ATTACK_FIELDS)}
            row.update(
                attack="worst_case",
                threat_model="union: " + "+".join(r["attack"] for r, _ in members),
                surrogate="",
                cached=all(r["cached"] for r, _ in members),
            )
            rows.append(row)
        return rows
