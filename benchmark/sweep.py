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
from attacks.errors import ConfigError, choose
from attacks.transfer import TransferAttack
from benchmark.cache import Cache, stage_key
from benchmark.checks import add_flag
from benchmark.detection import RepresentationDetector, detection_auroc
from benchmark.metrics import (
    SANITY_TOL,
    TRANSFERABILITY_FORMS,
    AttackSuccessRate,
    CleanAccuracy,
    ExpectedAccuracy,
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

#: Which models an attack entry runs on, by what the model declares (`randomized`, `nondifferentiable`):
#: every model; models declaring neither (plain gradients suffice); randomized ones (EOT); ones with
#: non-differentiable steps (BPDA); ones declaring either (adaptive attacks such as BPDA + EOT).
APPLIES_TO = ("all", "deterministic", "randomized", "nondifferentiable", "adaptive")


def declared(module: Any) -> frozenset[str]:
    """What a module (or its deployed model) declares about itself: a subset of {randomized, nondifferentiable}."""
    return frozenset(k for k in ("randomized", "nondifferentiable") if getattr(module, k, False))


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
    """An attack config of the sweep, instantiated once per epsilon (which validates its values).

    `applies_to`: one of APPLIES_TO, matched against what the model declares.
    `n_examples`: run on the first n evaluation examples only (expensive attacks); None: all of them.
    `defenses`: run only on these models (defense names, `teacher`); None: on every model.
    """

    name: str
    cfg: dict
    eps_labels: list[str]
    attacks: list[Attack]
    applies_to: str = "all"
    n_examples: int | None = None
    defenses: list[str] | None = None

    def applies(self, kinds: frozenset[str], defense: str) -> bool:
        if self.defenses is not None and defense not in self.defenses:
            return False
        if self.applies_to in ("randomized", "nondifferentiable"):
            return self.applies_to in kinds
        return {"all": True, "deterministic": not kinds, "adaptive": bool(kinds)}[self.applies_to]


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
    """A model under evaluation with what every cell of it shares: clean predictions and detection scores.

    For a randomized model `pred_clean` holds K draws (K, n); otherwise one (n,).
    """

    target: Target
    model: torch.nn.Module
    pred_clean: torch.Tensor
    detector: RepresentationDetector | None
    score_clean: torch.Tensor | None
    randomized: bool = False
    kinds: frozenset[str] = frozenset()
    draws: int = 1


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
    """Clean accuracy, robust accuracy (with its Wilson interval) and success rate from per-example flags.

    Deterministic models: paper 1's counting (robust = correct when clean and when attacked). Randomized models
    (flags carry `clean_frac` / `adv_frac`, the fractions of K fresh draws that are correct): every example is
    attacked; robust accuracy is the accuracy on the fixed adversarial examples averaged over the draws, and
    `robust_acc_worst_of_k` counts an example only if all K draws are correct.
    """
    c, a = flags["clean_correct"], flags["adv_correct"]
    clean, robust, asr = CleanAccuracy(), RobustAccuracy(), AttackSuccessRate()
    clean.update(c)
    robust.update(c, a)
    asr.update(c, a)
    out = {
        "clean_acc": float(clean.compute()),
        "robust_acc": float(robust.compute()),
        "robust_acc_worst_of_k": float(robust.compute()),
        "success_rate": float(asr.compute()),
        "n_examples": int(robust.total),
        "draws": 1,
    }
    if "adv_frac" in flags:
        clean_exp, robust_exp, worst = ExpectedAccuracy(), ExpectedAccuracy(), ExpectedAccuracy()
        clean_exp.update(flags["clean_frac"])
        robust_exp.update(flags["adv_frac"])
        worst.update(a)
        out.update(
            clean_acc=float(clean_exp.compute()),
            robust_acc=float(robust_exp.compute()),
            robust_acc_worst_of_k=float(worst.compute()),
            draws=int(flags["draws"]),
        )
        out["success_rate"] = 1 - out["robust_acc"] / out["clean_acc"] if out["clean_acc"] > 0 else float("nan")
    lo, hi = wilson_interval(round(out["robust_acc"] * out["n_examples"]), out["n_examples"])
    return {**out, "robust_acc_ci_low": lo, "robust_acc_ci_high": hi}


def _padded(v: torch.Tensor, n: int, fill) -> torch.Tensor:
    """v extended to length n with `fill` (an attack that did not run on an example cannot have broken it)."""
    return torch.cat([v, torch.full((n - len(v),), fill, dtype=v.dtype, device=v.device)])


def slice_flags(flags: dict, n: int) -> dict:
    """The flags of the first n examples."""
    return {k: v[:n] if torch.is_tensor(v) and v.ndim else v for k, v in flags.items()}


def whitebox_vs_transfer(computed: list[tuple[dict, dict]]) -> None:
    """Flag a transfer row that beats every white-box attack at its norm and epsilon, compared per example on
    the examples both ran on (an expensive white-box attack may run on the first n only)."""
    for row, flags in computed:
        if row["threat_model"] != "transfer":
            continue
        budget = (row["norm"], row["eps"])
        whitebox = [f for r, f in computed if r["threat_model"] == "white-box" and (r["norm"], r["eps"]) == budget]
        if not whitebox:
            continue
        n = min(len(f["adv_correct"]) for f in [flags, *whitebox])
        transfer = flag_metrics(slice_flags(flags, n))["robust_acc"]
        strongest = min(flag_metrics(slice_flags(f, n))["robust_acc"] for f in whitebox)
        if transfer < strongest - max(SANITY_TOL, 2 / n):
            add_flag(row, "transfer_stronger_than_whitebox")


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
        self.declared: dict[str, frozenset[str]] = {}  # filled by the validation, which builds every defense
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
                module = build(dfn["module"], model=build_model(cfg["model"], dm), teacher_state=model.state_dict())
                self.declared[dname] = declared(module)
        self._check_trainer("teacher", cfg["teacher"].get("trainer") or {})
        from benchmark.run import options

        entries = []
        for name, acfg in cfg["attack"].items():
            labels = [str(e) for e in acfg.get("epsilons") or []]
            if not labels:
                raise ConfigError(f"attack '{name}' has no epsilons")
            applies_to = acfg.get("applies_to", "all")
            choose(f"attack.{name}.applies_to", applies_to, APPLIES_TO)
            n = acfg.get("n_examples")
            if n is not None and (not isinstance(n, int) or n < 1):
                raise ConfigError(f"attack.{name}.n_examples must be an integer >= 1 or null, got {n}")
            defenses = acfg.get("defenses")
            for d in defenses or []:  # names of any defense config: narrowing the sweep must not break it
                choose(f"attack.{name}.defenses entry", d, ["teacher", *options("defense")])
            attacks = [build(acfg["attack"], eps=parse_eps(e)) for e in labels]
            entries.append(
                AttackEntry(name, acfg["attack"], labels, attacks, applies_to, n, list(defenses) if defenses else None)
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
        def cells(defense: str) -> int:
            kinds = self.declared.get(defense, frozenset())
            return sum(len(e.attacks) for e in self.attacks if e.applies(kinds, defense))

        per_pair = cells("teacher") + len(self.seeds) * sum(cells(d) for d in self.cfg["defense"])
        return len(self.cfg["data"]) * per_pair

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

    def _predict(self, ev: Evaluated, x: torch.Tensor) -> torch.Tensor:
        """Predictions: (n,) for a deterministic model, (K, n) over K fresh draws for a randomized one."""
        bs = self.cfg["eval"]["batch_size"]
        if not ev.randomized:
            return predict(ev.model, x, bs, self.device)
        return torch.stack([predict(ev.model, x, bs, self.device) for _ in range(ev.draws)])

    def _flags(self, ev: Evaluated, pred_adv: torch.Tensor, y: torch.Tensor) -> dict:
        n = len(y)
        if not ev.randomized:
            return {"clean_correct": ev.pred_clean[:n] == y, "adv_correct": pred_adv == y}
        clean_frac = (ev.pred_clean[:, :n] == y).float().mean(0)
        adv_frac = (pred_adv == y).float().mean(0)
        return {
            "clean_correct": clean_frac == 1,
            "adv_correct": adv_frac == 1,
            "clean_frac": clean_frac,
            "adv_frac": adv_frac,
            "draws": torch.tensor(ev.draws),
        }

    def _cell(
        self,
        ev: Evaluated,
        attack: Attack,
        ctx: Context,
        n: int | None = None,
        model: torch.nn.Module | None = None,
        tag: str = "",
    ) -> tuple[dict, dict]:
        """Per-example flags (and detection scores) of one attack at one epsilon on one model (cached).

        Deterministic models: white-box attacks run on the clean-correct examples (paper 1's counting), with
        early stopping. Randomized models: every example is attacked, without early stopping, and the fixed
        adversarial examples are scored over K fresh draws (evaluate after optimizing). `model` replaces the
        deployed model for the attack and the scoring (the sanity check with frozen randomness), `tag` names it.
        """
        n = len(ctx.x) if n is None else min(n, len(ctx.x))
        x, y = ctx.x[:n], ctx.y[:n]
        if ev.randomized and getattr(attack, "early_stop", False):
            attack.early_stop = False
        spec = {
            "model": ev.target.job["key"],
            "attack": attack.config(),
            "eval": {**ctx.eval_spec, "n": n},
            "draws": ev.draws,
            "tag": tag,
        }
        transfer = isinstance(attack, TransferAttack)
        if transfer:
            x_adv, craft_meta, spec["craft"] = self._crafted(attack, ctx)
            x_adv = x_adv[:n]
        key = stage_key("attack", spec)
        meta = self.cache.meta("attack", key)
        if meta is not None:
            self.stats["cache_hits"] += 1
            meta["cached"] = True
            return self.cache.tensors("attack", key, "flags"), meta
        start = time.perf_counter()
        bs = self.cfg["eval"]["batch_size"]
        target_model = model if model is not None else ev.model
        if transfer:
            cost = {k: craft_meta[k] for k in ("attack_seconds", "forward_passes", "backward_passes")}
        else:
            torch.manual_seed(self.cfg["eval"]["seed"])
            task = self._progress.add_task(f"  {attack.label}", total=n) if self._progress else None
            on_batch = (lambda k: self._progress.advance(task, k)) if task is not None else None
            if ev.randomized:
                x_adv, cost = run_attack(attack, target_model, x, y, bs, self.device, on_batch=on_batch)
            else:
                x_adv, cost = whitebox(attack, target_model, x, y, bs, self.device, on_batch)
            if task is not None:
                self._progress.remove_task(task)
        if model is None:
            pred = self._predict(ev, x_adv)  # the scoring passes; the detector reuses the first draw
            flags = self._flags(ev, pred, y)
            if ev.detector is not None:
                flags["score_clean"] = ev.score_clean[:n]
                flags["score_adv"] = ev.detector.scores(x_adv, pred[0] if ev.randomized else pred)
        else:  # a deterministic stand-in (frozen randomness): one pass decides
            flags = {
                "clean_correct": predict(model, x, bs, self.device) == y,
                "adv_correct": predict(model, x_adv, bs, self.device) == y,
            }
        meta = {
            **cost,
            "wall_seconds": time.perf_counter() - start,
            "spec": spec,
            "attack_flags": list(getattr(attack, "flags", [])),
        }
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
        kinds = declared(module)
        randomized = "randomized" in kinds
        draws = self.cfg["eval"]["draws"] if randomized else 1
        ev = Evaluated(target, model, torch.empty(0), None, None, randomized, kinds, draws)
        ev.pred_clean = self._predict(ev, ctx.x)
        if self.cfg["eval"]["detection"]:
            ref_x, ref_y = ctx.dm.tensors("target", "train", self.cfg["eval"]["detection_reference"])
            ev.detector = RepresentationDetector(
                module.representation, ref_x, ref_y, self.cfg["eval"]["batch_size"], self.device
            )
            ev.score_clean = ev.detector.scores(ctx.x, ev.pred_clean[0] if randomized else ev.pred_clean)
        return ev

    def _evaluate(self, target: Target, ctx: Context) -> None:
        ev = self._evaluated(target, ctx)
        computed: list[tuple[dict, dict]] = []
        kind = " and ".join(sorted(ev.kinds)) or "deterministic"
        skipped = [e.name for e in self.attacks if not e.applies(ev.kinds, target.defense)]
        if skipped:
            self.log(f"  {target.defense:>12}: not run on this {kind} model: {', '.join(skipped)}")
        for entry in self.attacks:
            if not entry.applies(ev.kinds, target.defense):
                continue
            for eps_str, attack in zip(entry.eps_labels, entry.attacks):
                attack = copy.deepcopy(attack)
                flags, meta = self._cell(ev, attack, ctx, entry.n_examples)
                row = self._row(target, ctx, entry.name, attack, eps_str, flags, meta)
                if isinstance(attack, TransferAttack) and ev.randomized:
                    # The white-box reference of a randomized model is an EOT attack (on fewer examples), not
                    # the transfer attack's plain counterpart: no transferability ratio, the accuracy only.
                    row["transfer_acc"] = row["robust_acc"]
                elif isinstance(attack, TransferAttack):
                    wb_flags, _ = self._cell(ev, attack.whitebox_counterpart(), ctx, entry.n_examples)
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
        if ev.randomized:
            computed += self._randomness_checks(ev, ctx)
        whitebox_vs_transfer(computed)
        self.rows.extend(self._worst_case_rows(computed))

    def _randomness_checks(self, ev: Evaluated, ctx: Context) -> list[tuple[dict, dict]]:
        """The sanity checks of a randomized defense (evaluation.md section 2), as rows with threat_model
        `sanity`, built from the sweep's EOT attack at the headline L-inf budget:

        - frozen randomness: the same attack without EOT on the model with its randomness fixed;
        - convergence: twice the steps and twice the EOT samples (a valid, stronger attack: it joins the
          per-example worst case);
        - unbounded: the attack with eps = 1 (the whole image box), which must reach chance.
        White-box against transfer is checked with the other rows.
        """
        base = next(
            (
                e
                for e in self.attacks
                if e.applies(ev.kinds, ev.target.defense)
                and e.attacks[0].eot > 1
                and not e.attacks[0].bpda
                and e.attacks[0].norm == "linf"
            ),
            None,
        )
        if base is None or not hasattr(ev.model, "frozen"):
            missing = (
                "an EOT attack (eot > 1, L-inf, no BPDA) in the sweep"
                if base is None
                else "`frozen(seed)` on the deployed model"
            )
            self.log(f"  {ev.target.defense:>12}: randomness sanity checks not run: needs {missing}")
            return []
        headline = parse_eps(self.cfg["report"]["headline"]["linf"])
        attack = min(base.attacks, key=lambda a: abs(a.eps - headline))
        eps_str = base.eps_labels[base.attacks.index(attack)]
        n = self.cfg["eval"]["sanity_examples"]
        tol = max(SANITY_TOL, 2 / n)
        frozen = copy.deepcopy(attack)
        frozen.eot = 1
        with ev.model.frozen(self.cfg["eval"]["seed"]) as fixed:
            flags, meta = self._cell(ev, frozen, ctx, n, model=fixed, tag="frozen")
        row = self._sanity_row(ev, ctx, "sanity_frozen_randomness", frozen, eps_str, flags, meta)
        if row["robust_acc"] > 0.5 * row["clean_acc"]:
            add_flag(row, "frozen_randomness_attack_fails")
        checks = [row]

        stronger = copy.deepcopy(attack)
        stronger.steps, stronger.eot, stronger.step_size = 2 * attack.steps, 2 * attack.eot, attack.step_size / 2
        flags, meta = self._cell(ev, stronger, ctx, n)
        row = self._row(ev.target, ctx, f"{base.name}_x2", stronger, eps_str, flags, meta)
        base_flags, _ = self._cell(ev, copy.deepcopy(attack), ctx, base.n_examples)  # cached: the sweep's own cell
        reference = flag_metrics(slice_flags(base_flags, len(flags["adv_correct"])))["robust_acc"]
        row["sanity_reference"] = reference
        if row["robust_acc"] < reference - tol:
            add_flag(row, "eot_attack_not_converged")
        self.rows.append(row)
        checks.append(row)
        strong_flags = flags

        unbounded = copy.deepcopy(attack)
        unbounded.eps, unbounded.step_size = 1.0, 2.5 / attack.steps
        flags, meta = self._cell(ev, unbounded, ctx, n)
        row = self._sanity_row(ev, ctx, "sanity_unbounded", unbounded, "1", flags, meta)
        if row["robust_acc"] > 1 / ctx.dm.num_classes + tol:
            add_flag(row, "unbounded_attack_not_chance")
        checks.append(row)
        self.log(
            f"  {ev.target.defense:>12} sanity: "
            + ", ".join(
                f"{r['attack']} {r['robust_acc']:.3f}" + (f" [{r['flags']}]" if r["flags"] else "") for r in checks
            )
        )
        return [(checks[1], strong_flags)]

    def _sanity_row(self, ev, ctx, name, attack, eps_str, flags, meta) -> dict:
        row = {**self._row(ev.target, ctx, name, attack, eps_str, flags, meta), "threat_model": "sanity"}
        self.rows.append(row)
        return row

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
            "steps": getattr(attack, "steps", 1),
            **flag_metrics(flags),
            **{k: meta.get(k) for k in PER_ATTACK_FIELDS},
            "detection_auroc": detection_auroc(flags),
            "train_seconds": target.meta.get("fit_seconds"),
            "prep_seconds": (target.meta.get("prep") or {}).get("seconds"),
            "randomized_defense": target.meta.get("randomized", False),
            "nondifferentiable_defense": target.meta.get("nondifferentiable", False),
            "sanity_reference": None,
            "cached": meta["cached"],
            "flags": ";".join(meta.get("attack_flags") or []),
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
        """Per example, the worst case over every attack that shares a norm and epsilon (the union threat model).

        The row covers the examples that a white-box attack ran on (the first n of the white-box attack with the
        most examples): an example that only a transfer attack reached would otherwise count as robust against
        the weakest threat. An attack run on fewer examples (an expensive one) joins the worst case of those.
        """
        groups: dict[tuple, list[tuple[dict, dict]]] = {}
        for row, flags in computed:
            groups.setdefault((row["norm"], round(row["eps"], 10)), []).append((row, flags))
        rows = []
        for members in groups.values():
            if len(members) < 2:
                continue
            first = members[0][0]
            whitebox = [f for r, f in members if r["threat_model"] == "white-box"] or [f for _, f in members]
            longest = max(whitebox, key=lambda f: len(f["adv_correct"]))
            n = len(longest["adv_correct"])
            members = [(r, slice_flags(f, n)) for r, f in members]

            union = {
                "clean_correct": longest["clean_correct"],
                "adv_correct": torch.stack([_padded(f["adv_correct"], n, True) for _, f in members]).all(0),
            }
            if "adv_frac" in longest:
                union.update(
                    clean_frac=longest["clean_frac"],
                    draws=longest["draws"],
                    adv_frac=torch.stack([_padded(f["adv_frac"], n, 1.0) for _, f in members]).amin(0),
                )
            row = {**first, **flag_metrics(union), **dict.fromkeys(PER_ATTACK_FIELDS)}
            row.update(
                attack="worst_case",
                threat_model="union: " + "+".join(r["attack"] for r, _ in members),
                surrogate="",
                cached=all(r["cached"] for r, _ in members),
            )
            rows.append(row)
        return rows
