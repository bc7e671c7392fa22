"""Execute a plan: each stage in order, from the cache when it is there (train, craft, attack cells).

The executor only computes; what the numbers mean is decided downstream (`benchmark.stages.score`,
`benchmark.checks`, `benchmark.rows`). A model is loaded only when one of its cells is not cached, so a rerun
of a finished sweep loads nothing and computes nothing.
"""

from __future__ import annotations

import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from attacks.base import check_adversarial
from benchmark.cache import Cache
from benchmark.detection import RepresentationDetector
from benchmark.plan import Plan, make_attack
from benchmark.stages.attack import compute_cell, predict_draws, run_attack
from benchmark.stages.build import build_datamodule
from benchmark.stages.score import metrics
from benchmark.stages.train import load_trained, train_stage


def device_of(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@dataclass
class Executed:
    """What a plan produced: training metas and cell outcomes by stage id, and the counts of what was done."""

    trained: dict[str, dict] = field(default_factory=dict)
    outcomes: dict[str, dict] = field(default_factory=dict)
    metas: dict[str, dict] = field(default_factory=dict)
    stats: Counter = field(default_factory=Counter)
    data: dict[str, Any] = field(default_factory=dict)  # pair -> (x, y) of the evaluation subset


@dataclass
class _Model:
    """A loaded model with what its cells share: clean predictions over its draws, the detector."""

    module: Any
    model: torch.nn.Module
    pred_clean: torch.Tensor
    detector: RepresentationDetector | None = None
    score_clean: torch.Tensor | None = None


class Executor:
    def __init__(self, cfg: dict, plan: Plan, console: Console | None = None):
        self.cfg, self.plan = cfg, plan
        self.console = console or Console(stderr=True)
        self.cache = Cache(cfg["cache_dir"])
        self.device = device_of(cfg["eval"]["device"])
        self.done = Executed()
        self._models: dict[str, _Model] = {}
        self._dms: dict[str, Any] = {}
        self._crafted: dict[str, torch.Tensor] = {}
        self._progress: Progress | None = None

    def log(self, msg: str) -> None:
        (self._progress.console if self._progress else self.console).log(msg)

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

    def run(self) -> Executed:
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        with Progress(*columns, console=self.console, transient=False) as progress:
            self._progress = progress
            task = progress.add_task("sweep stages", total=len(self.plan))
            try:
                for stage in self.plan.stages:
                    {"teacher": self._train, "student": self._train, "craft": self._craft, "cell": self._cell}[
                        stage["kind"]
                    ](stage)
                    progress.advance(task)
            finally:
                self._progress = None
        return self.done

    # ---- data and models -------------------------------------------------------------------------
    def _dm(self, pair: str):
        if pair not in self._dms:
            dm = build_datamodule(self.cfg["data"][pair])
            dm.setup()
            self._dms[pair] = dm
            self.done.data[pair] = dm.test_tensors("target", self.plan.pairs[pair]["n"])
        return self._dms[pair]

    def _xy(self, pair: str, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        self._dm(pair)
        x, y = self.done.data[pair]
        return x[:n], y[:n]

    def _model(self, stage_id: str, draws: int) -> _Model:
        if stage_id in self._models:
            return self._models[stage_id]
        stage = self.plan.stage(stage_id)
        pair = stage["job"]["data_name"]
        dm = self._dm(pair)
        module = load_trained(stage["job"]).to(self.device)
        model = module.deployed_model()
        x, _ = self._xy(pair, self.plan.pairs[pair]["n"])
        bs = self.cfg["eval"]["batch_size"]
        loaded = _Model(module, model, predict_draws(model, x, draws, bs, self.device))
        if self.cfg["eval"]["detection"]:
            ref_x, ref_y = dm.tensors("target", "train", self.cfg["eval"]["detection_reference"])
            loaded.detector = RepresentationDetector(module.representation, ref_x, ref_y, bs, self.device)
            loaded.score_clean = loaded.detector.scores(x, loaded.pred_clean[0])
        self._models[stage_id] = loaded
        return loaded

    # ---- stages ----------------------------------------------------------------------------------
    def _train(self, stage: dict) -> None:
        job = stage["job"]
        if self.cache.meta(job["kind"], job["key"]) is None:
            self.log(f"training {job['kind']} [bold]{job['name']}[/] seed {job['seed']} ({job['data_name']})")
            with self._paused():
                meta = train_stage(job, progress=self.cfg.get("progress", True))
            self.done.stats[f"{job['kind']}_trained"] += 1
            prep = meta.get("prep")
            self.log(
                f"  done in {meta['fit_seconds']:.1f}s; best {meta['selection_metric']} "
                f"{meta['best_value']:.3f} at epoch {meta['best_epoch']}"
                + (f"; preparation {prep['seconds']:.1f}s" + (" (cached)" if prep["cached"] else "") if prep else "")
            )
        else:
            meta = train_stage(job)
            self.done.stats["cache_hits"] += 1
        self.done.trained[stage["id"]] = meta

    def _craft(self, stage: dict) -> None:
        """Examples crafted on the teacher once per (teacher, attack, eps), then scored on every student."""
        x, y = self._xy(stage["pair"], stage["n"])
        attack = make_attack(stage["attack"])
        meta = self.cache.meta("craft", stage["key"])
        if meta is None:
            attack.surrogate = self._model(stage["teacher"], 1).model
            torch.manual_seed(self.cfg["eval"]["seed"])
            x_adv, cost = run_attack(attack, attack.surrogate, x, y, self.cfg["eval"]["batch_size"], self.device)
            meta = {**cost, "plan_id": stage["id"]}
            self.cache.put("craft", stage["key"], meta, {"x_adv": x_adv})
            self.done.stats["crafted"] += 1
        else:
            x_adv = self.cache.tensors("craft", stage["key"], "x_adv")
            check_adversarial(x, x_adv, attack.norm, attack.eps)  # cached examples are re-checked, not trusted
            self.done.stats["cache_hits"] += 1
        self._crafted[stage["id"]] = x_adv
        self.done.metas[stage["id"]] = meta

    def _cell(self, stage: dict) -> None:
        meta = self.cache.meta("attack", stage["key"])
        if meta is not None:
            out = self.cache.tensors("attack", stage["key"], "outcome")
            self.done.stats["cache_hits"] += 1
            meta["cached"] = True
        else:
            out, meta = self._compute(stage)
            self.cache.put("attack", stage["key"], meta, {"outcome": out})
            self.done.stats["attacks_run"] += 1
            meta["cached"] = False
        self.done.outcomes[stage["id"]] = out
        self.done.metas[stage["id"]] = meta
        if stage["role"] != "reference":
            m = metrics(out)
            self.log(
                f"  {stage['defense']:>12} s{stage['seed']} {stage['entry']:>18} {stage['role']:>9} eps "
                f"{stage['attack']['eps']:>7}: clean {m['clean_acc']:.3f} robust {m['robust_acc']:.3f}"
                + (" (cached)" if meta["cached"] else "")
            )

    def _compute(self, stage: dict) -> tuple[dict, dict]:
        start = time.perf_counter()
        x, y = self._xy(stage["pair"], stage["n"])
        attack = make_attack(stage["attack"])
        ev, bs = self.cfg["eval"], self.cfg["eval"]["batch_size"]
        # every cell of a randomized model (the frozen one too) shares the model's K clean draws
        loaded = self._model(stage["model"], ev["draws"] if stage["randomized"] else 1)
        crafted = self._crafted[stage["craft"]][: stage["n"]] if stage["craft"] else None
        task = self._progress.add_task(f"  {attack.label}", total=stage["n"]) if self._progress else None
        on_batch = (lambda k: self._progress.advance(task, k)) if task is not None else None
        common = {"batch_size": bs, "device": self.device, "seed": ev["seed"], "on_batch": on_batch}
        try:
            if stage["role"] == "frozen":  # a deterministic stand-in with its randomness fixed: one pass decides
                with loaded.model.frozen(ev["seed"]) as fixed:
                    pred = predict_draws(fixed, x, 1, bs, self.device)
                    out, cost = compute_cell(attack, fixed, x, y, pred, randomized=True, **common)
            else:
                out, cost = compute_cell(
                    attack,
                    loaded.model,
                    x,
                    y,
                    loaded.pred_clean[:, : stage["n"]],
                    randomized=stage["randomized"],
                    x_adv=crafted,
                    detector=loaded.detector,
                    score_clean=None if loaded.score_clean is None else loaded.score_clean[: stage["n"]],
                    **common,
                )
        finally:
            if task is not None:
                self._progress.remove_task(task)
        if crafted is not None:
            cost = {
                k: self.done.metas[stage["craft"]][k] for k in ("attack_seconds", "forward_passes", "backward_passes")
            }
        meta = {**cost, "wall_seconds": time.perf_counter() - start, "plan_id": stage["id"]}
        meta["attack_flags"] = list(getattr(attack, "flags", []))
        return out, meta
