"""Execute a plan: each stage in order, from the cache when it is there (train, craft, attack cells).

The executor only computes; what the numbers mean is decided downstream (`benchmark.runner.stages.score`,
`benchmark.runner.checks`, `benchmark.runner.rows`). A model is loaded only when one of its cells is not cached, so a
rerun of a finished sweep loads nothing and computes nothing.

`Executor.run_stage` runs one stage alone: what it consumes (models, crafted sets) is read from the cache, so a
worker process or a cluster job can run any stage whose dependencies are finished (`benchmark.runner.launchers`). A
stage is computed under its claim (`Cache.claim`), so processes sharing the cache compute it once. Nothing a
stage computes depends on the order the stages run in (a model's clean draws are seeded), so a sweep run by
several workers gives the same cache entries as one run in a single process.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from attacks.errors import ConfigError
from attacks.transfer import Ensemble
from benchmark.components import build_datamodule
from benchmark.numerics import stage_numerics
from benchmark.records import CellSpec, Job
from benchmark.runner.batch_size import AUTO_BATCH_CPU, AUTO_BATCH_START, cuda_fits, find_batch_size
from benchmark.runner.cache import Cache
from benchmark.runner.checks import autoattack_flags
from benchmark.runner.detection import RepresentationDetector
from benchmark.runner.plan import CellStage, CraftStage, Plan, Stage, TrainStage
from benchmark.runner.stages.attack import check_crafted, compute_cell, fast_layout, predict_draws, run_attack
from benchmark.runner.stages.score import metrics
from benchmark.runner.stages.train import load_trained, train_stage
from benchmark.runner.timing import charge, whole
from datamodules.base import ImageFile, LazyImages

#: A crafted set's file in its cache entry: float32 images, NumPy's .npy format (`datamodules.base.ImageFile`).
CRAFTED = "x_adv.npy"


def evaluation_subset(dm, n: int | None) -> tuple[LazyImages, torch.Tensor]:
    """The fixed evaluation subset, the first n target test examples (all if None): images read on access, a batch
    at a time (`LazyImages`, never stacked whole), and their labels."""
    x, y = dm.lazy_tensors("target", "test")
    return x[:n], y[:n]


def device_of(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def stage_entry(stage: Stage) -> tuple[str, str]:
    """The cache entry (kind, key) a plan stage writes (a training stage's kind is its job's)."""
    return ("attack" if stage.kind == "cell" else stage.kind), stage.key


@dataclass
class Executed:
    """What a plan produced: training metas and cell outcomes by stage id, and the counts of what was done."""

    trained: dict[str, dict] = field(default_factory=dict)
    outcomes: dict[str, dict] = field(default_factory=dict)
    metas: dict[str, dict] = field(default_factory=dict)
    stats: Counter = field(default_factory=Counter)
    data: dict[str, Any] = field(default_factory=dict)  # pair -> (x, y) of the evaluation subset (x: `LazyImages`)


@dataclass
class _Model:
    """A loaded model with what its cells share: clean predictions over its draws, the detector."""

    module: Any
    model: torch.nn.Module
    pred_clean: torch.Tensor
    batch_size: int
    detector: RepresentationDetector | None = None
    score_clean: torch.Tensor | None = None


class Executor:
    def __init__(self, cfg: dict, plan: Plan, console: Console | None = None):
        self.cfg, self.plan = cfg, plan
        self.console = console or Console(stderr=True)
        self.cache = Cache(cfg["cache_dir"])
        self.device = device_of(cfg["eval"]["device"])
        self.precision = cfg["eval"].get("precision", "fp32")
        if self.precision != "fp32" and any("precision" not in p["eval"] for p in plan.pairs.values()):
            # cells crafted in another precision must not share a cache entry with fp32 ones
            raise ConfigError(f"eval.precision={self.precision} needs a plan whose cell keys include the precision")
        self.done = Executed()
        self._models: dict[str, _Model] = {}
        self._dms: dict[str, Any] = {}
        self._crafted: dict[str, LazyImages] = {}
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
                    self.run_stage(stage)
                    progress.advance(task)
            finally:
                self._progress = None
        hits = self.done.stats["cache_hits"]
        if hits:
            self.console.log(f"{hits} of {len(self.plan)} stages read from the cache ({self.cache.root})")
        return self.done

    def run_stage(self, stage: Stage, wait: bool = True) -> bool:
        """Run one stage (its dependencies must be finished: they are read from the cache). A stage that is not
        cached is computed under its claim; returns False, without waiting, when another process holds the claim
        and `wait` is False."""
        run = {"teacher": self._train, "student": self._train, "craft": self._craft, "cell": self._cell}
        kind, key = stage_entry(stage)
        if self.cache.meta(kind, key) is not None:
            run[stage.kind](stage)
            return True
        waiting = lambda: self.log(f"waiting: another process is computing {stage.id}")  # noqa: E731
        with self.cache.claim(kind, key, wait=wait, on_wait=waiting) as held:
            if held:
                wall, cpu = time.perf_counter(), time.process_time()
                with stage_numerics(self.cfg):  # the same torch threads whoever runs it (benchmark/numerics.py)
                    run[stage.kind](stage)  # checks the cache again: it may have finished while we waited
                if charged := charge(stage, self.done):  # computed here, not found finished
                    self.done.stats.update(charged)
                    self.done.stats.update(whole(stage, time.perf_counter() - wall, time.process_time() - cpu))
        return held

    # ---- data and models -------------------------------------------------------------------------
    def _dm(self, pair: str):
        if pair not in self._dms:
            dm = self.plan._data.get(pair)  # set up by the planner of this process, or built here
            if dm is None:
                dm = build_datamodule(self.cfg["data"][pair])
                dm.setup()
            self._dms[pair] = dm
            self.done.data[pair] = evaluation_subset(dm, self.plan.pairs[pair]["n"])
        return self._dms[pair]

    def _xy(self, pair: str, n: int) -> tuple[LazyImages, torch.Tensor]:
        self._dm(pair)
        x, y = self.done.data[pair]
        return x[:n], y[:n]

    def _model(self, stage_id: str, draws: int) -> _Model:
        if stage_id in self._models:
            return self._models[stage_id]
        job = self.plan.stage(stage_id).job
        pair = job.data_name
        dm = self._dm(pair)
        module = load_trained(job).to(self.device)
        model = fast_layout(module.deployed_model(), self.device, self.precision)
        x, _ = self._xy(pair, self.plan.pairs[pair]["n"])
        bs = self._batch_size(model, x)
        torch.manual_seed(self.cfg["eval"]["seed"])  # a randomized model's clean draws: not the order stages ran in
        loaded = _Model(module, model, predict_draws(model, x, draws, bs, self.device), bs)
        if self.cfg["eval"]["detection"]:
            ref_x, ref_y = dm.lazy_tensors("target", "train")  # read a batch at a time
            # Stacking the reference images through a DataLoader drew one number from the global generator (its base
            # seed); drawn here, a randomized representation (AToP's) embeds them with the same draws as before.
            torch.empty((), dtype=torch.int64).random_()
            n_ref = self.cfg["eval"]["detection_reference"]
            ref_x, ref_y = ref_x[:n_ref], ref_y[:n_ref]
            loaded.detector = RepresentationDetector(module.representation, ref_x, ref_y, bs, self.device)
            loaded.score_clean = loaded.detector.scores(x, loaded.pred_clean[0])
        self._models[stage_id] = loaded
        return loaded

    def _batch_size(self, model: torch.nn.Module, x) -> int:
        bs = self.cfg["eval"]["batch_size"]
        if bs != "auto":
            return bs
        if self.device.type != "cuda":
            return AUTO_BATCH_CPU
        found = find_batch_size(cuda_fits(model, x, self.device, self.precision), AUTO_BATCH_START, len(x))
        self.log(f"  eval batch size {found} (eval.batch_size=auto, {self.precision})")
        return found

    def _crafted_set(self, stage_id: str) -> tuple[LazyImages, dict]:
        """A crafted set (read a batch at a time from its cache entry's file) and its meta: from this process, or from
        the cache (crafted by another process)."""
        if stage_id not in self._crafted:
            key = self.plan.stage(stage_id).key
            self._crafted[stage_id] = LazyImages(ImageFile.open(self.cache.file("craft", key, CRAFTED)))
            self.done.metas[stage_id] = self.cache.meta("craft", key)
        return self._crafted[stage_id], self.done.metas[stage_id]

    # ---- stages ----------------------------------------------------------------------------------
    def _train(self, stage: TrainStage) -> None:
        job = stage.job
        if self.cache.meta(job.kind, job.key) is None:
            doing = "loading public" if job.public else "training"
            self.log(f"{doing} {job.kind} [bold]{job.name}[/] seed {job.seed} ({job.data_name})")
            with self._paused(), _all_devices(job):
                meta = train_stage(job, progress=self.cfg.get("progress", True))
            self.done.stats[f"{job.kind}_{'loaded' if job.public else 'trained'}"] += 1
            prep = meta.get("prep")
            self.log(
                f"  done in {meta['fit_seconds']:.1f}s; {'' if job.public else 'best '}"
                f"{meta['selection_metric']} {meta['best_value']:.3f}"
                + (f" at epoch {meta['best_epoch']}" if meta.get("best_epoch") is not None else "")
                + (f"; preparation {prep['seconds']:.1f}s" + (" (cached)" if prep["cached"] else "") if prep else "")
            )
        else:
            meta = train_stage(job)
            self.done.stats["cache_hits"] += 1
        self.done.trained[stage.id] = meta

    def surrogate(self, stage: CraftStage) -> tuple[torch.nn.Module, int]:
        """The model a crafted set is crafted on (several: their ensemble, `attacks.transfer.Ensemble`) and the
        batch size to craft with."""
        loaded = [self._model(sid, 1) for sid in stage.surrogates]
        model = loaded[0].model if len(loaded) == 1 else Ensemble([m.model for m in loaded])
        return model, min(m.batch_size for m in loaded)

    def _craft(self, stage: CraftStage) -> None:
        """Examples crafted on the surrogate once per (surrogate, attack, eps), then scored on every student."""
        x, y = self._xy(stage.pair, stage.n)
        attack = self.plan.attack(stage.id)
        meta = self.cache.meta("craft", stage.key)
        crafted_before = self.done.stats["crafted"]
        if meta is None:
            surrogate, batch_size = self.surrogate(stage)
            attack.surrogate = surrogate
            domain = getattr(attack, "attacker_domain", "target")  # source: the public pre-training data
            attack.attacker_data = self._dm(stage.pair).lazy_tensors(domain, "train")  # never the test split
            torch.manual_seed(self.cfg["eval"]["seed"])
            with self.cache.staging("craft", stage.key) as tmp:  # written a batch at a time, then moved in
                x_adv, cost = run_attack(attack, surrogate, x, y, batch_size, self.device,
                                         precision_name=self.precision, path=tmp / CRAFTED)  # fmt: skip
                x_adv.dataset.close()  # flushed: the file moves into the entry
                attack.surrogate = attack.attacker_data = None  # the plan keeps the attack: not the model and data
                meta = {**cost, "plan_id": stage.id}
                self.cache.put("craft", stage.key, meta, files={CRAFTED: tmp / CRAFTED})
            self.done.stats["crafted"] += 1
        else:
            self.done.stats["cache_hits"] += 1
        cached = self.done.stats["crafted"] == crafted_before
        x_adv = self._crafted_set(stage.id)[0]
        if cached:
            check_crafted(x, x_adv, attack)  # cached examples are re-checked, not trusted
        self.done.metas[stage.id] = {**meta, "cached": cached}

    def _cell(self, stage: CellStage) -> None:
        cell = stage.cell
        meta = self.cache.meta("attack", stage.key)
        if meta is not None:
            out = self.cache.tensors("attack", stage.key, "outcome")
            self.done.stats["cache_hits"] += 1
            meta["cached"] = True
        else:
            out, meta = self._compute(cell)
            self.cache.put("attack", stage.key, meta, {"outcome": out})
            self.done.stats["attacks_run"] += 1
            meta["cached"] = False
        self.done.outcomes[cell.id] = out
        self.done.metas[cell.id] = meta
        if cell.role != "reference" and not meta["cached"]:  # a cached cell is counted, not printed
            m = metrics(out)
            self.log(
                f"  {cell.defense:>12} s{cell.seed} {cell.entry:>18} {cell.role:>9} eps "
                f"{cell.attack['eps']:>7}: clean {m['clean_acc']:.3f} robust {m['robust_acc']:.3f}"
            )

    def _compute(self, cell: CellSpec) -> tuple[dict, dict]:
        start = time.perf_counter()
        x, y = self._xy(cell.pair, cell.n)
        attack = self.plan.attack(cell.id)
        evaluation = self.cfg["eval"]
        # every cell of a randomized model (the frozen one too) shares the model's K clean draws
        loaded = self._model(cell.model, evaluation["draws"] if cell.randomized else 1)
        bs = loaded.batch_size
        crafted = self._crafted_set(cell.craft)[0][: cell.n] if cell.craft else None
        task = self._progress.add_task(f"  {attack.label}", total=cell.n) if self._progress else None
        on_batch = (lambda k: self._progress.advance(task, k)) if task is not None else None
        common = {"batch_size": bs, "device": self.device, "seed": evaluation["seed"], "on_batch": on_batch}
        common["precision_name"] = self.precision
        try:
            if cell.role == "frozen":  # a deterministic stand-in with its randomness fixed: one pass decides
                with loaded.model.frozen(evaluation["seed"]) as fixed:
                    pred = predict_draws(fixed, x, 1, bs, self.device)
                    out, cost = compute_cell(attack, fixed, x, y, pred, randomized=True, **common)
            else:
                out, cost = compute_cell(
                    attack,
                    loaded.model,
                    x,
                    y,
                    loaded.pred_clean[:, : cell.n],
                    randomized=cell.randomized,
                    x_adv=crafted,
                    detector=loaded.detector,
                    score_clean=None if loaded.score_clean is None else loaded.score_clean[: cell.n],
                    **common,
                )
        finally:
            if task is not None:
                self._progress.remove_task(task)
        if crafted is not None:
            craft_meta = self._crafted_set(cell.craft)[1]
            cost = {k: craft_meta[k] for k in ("attack_seconds", "forward_passes", "backward_passes")}
        meta = {**cost, "wall_seconds": time.perf_counter() - start, "plan_id": cell.id}
        meta.update(precision=self.precision, batch_size=bs)
        meta["attack_flags"] = autoattack_flags(getattr(attack, "messages", []))  # AutoAttack's own checks
        return out, meta


@contextmanager
def _all_devices(job: Job):
    """A worker pinned to one GPU lets a multi-device (DDP) training stage's processes see every GPU of the node
    (`BENCH_ALL_DEVICES`, set by `benchmark.runner.launchers.workers`); nothing changes elsewhere."""
    devices = job.trainer.get("devices", 1)
    every = os.environ.get("BENCH_ALL_DEVICES")
    if every is None or not (isinstance(devices, int) and devices > 1):
        yield
        return
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = every
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before
