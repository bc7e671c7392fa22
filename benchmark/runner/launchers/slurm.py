"""`launcher=slurm`: the plan as cluster jobs through submitit.

Jobs (`units`): one per training stage (a DDP stage gets its trainer's devices as tasks and GPUs per node), one
per batch of crafted sets of a teacher, one per batch of attack cells of a model (`cells_per_job`); each job
depends on the jobs that compute what it needs, teacher -> students -> crafted sets -> cells. Stages already in
the cache get no job. With `dependencies: slurm` every job is submitted at once, each with `afterok` on the jobs
it needs (`kill-on-invalid-dep`: a failed job's dependents are cancelled, not left pending); jobs with the same
dependencies and resources form one job array (at most `array_limit` tasks running). With `dependencies: waves`
(and with `cluster: local`, submitit's LocalExecutor, which has no dependencies) a job is submitted when the
jobs it needs have finished, at most `array_limit` at a time. A job (`StageJob`) runs its stages with the same
`StageRunner` as a worker; it is `Checkpointable`, so a preempted or timed-out job is requeued and redoes only
its unfinished stages.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import submitit
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from attacks.errors import ConfigError, choose
from benchmark.runner.cache import Cache
from benchmark.runner.launchers.common import (
    Launched,
    StageRunner,
    failures,
    finish,
    finished,
    one_line,
    prepare,
    quiet_lightning,
)
from benchmark.runner.plan import Plan
from benchmark.runner.stages.train import run_train_job


@dataclass
class Unit:
    """One job: its stages, the units it depends on, and its resources."""

    name: str
    stages: list[str]
    deps: list[int] = field(default_factory=list)
    tasks: int = 1
    nodes: int = 1
    gpus: int = 0

    def resources(self) -> tuple:
        return self.tasks, self.nodes, self.gpus


def units(plan: Plan, lcfg: dict, done: set[str]) -> list[Unit]:
    """The jobs of the plan's unfinished stages, in dependency order."""
    size = lcfg.get("cells_per_job", 16)
    if not isinstance(size, int) or size < 1:
        raise ConfigError(f"launcher.cells_per_job must be an integer >= 1, got {size}")
    gpus = int(lcfg.get("gpus_per_job") or 0)
    out: list[Unit] = []
    unit_of: dict[str, int] = {}

    def add(unit: Unit) -> None:
        needs = {d for i in unit.stages for d in plan.stage(i).deps} - set(unit.stages)
        unit.deps = sorted({unit_of[d] for d in needs if d in unit_of})
        for i in unit.stages:
            unit_of[i] = len(out)
        out.append(unit)

    todo = [s for s in plan.stages if s.id not in done]
    for s in (s for s in todo if s.kind in ("teacher", "student")):
        trainer = s.job.trainer
        devices = trainer.get("devices", 1)
        tasks = devices if isinstance(devices, int) and devices > 1 else 1
        add(Unit(s.id, [s.id], tasks=tasks, nodes=trainer.get("num_nodes", 1), gpus=tasks * (gpus > 0) or 0))
    groups: dict[str, list[str]] = {}
    for s in todo:
        if s.kind == "craft":
            groups.setdefault(f"{s.teacher}/craft", []).append(s.id)
    for s in todo:
        if s.kind == "cell":
            groups.setdefault(f"{s.cell.model}/cells", []).append(s.id)
    for name, ids in groups.items():
        for k in range(0, len(ids), size):
            add(Unit(f"{name}/{k // size}", ids[k : k + size], gpus=gpus))
    return out


class StageJob(submitit.helpers.Checkpointable):
    """A cluster job: run these stages of the launch's plan (finished ones are cache hits). Requeued on
    preemption or timeout by submitit (`Checkpointable`): the requeued job skips what it finished."""

    def __init__(self, root: str, stage_ids: list[str]):
        self.root, self.stage_ids = root, stage_ids

    def __call__(self) -> dict:
        quiet_lightning()
        env = submitit.JobEnvironment()
        runner = StageRunner(self.root, log=str(env.paths.stderr))
        stages = [runner.plan.stage(i) for i in self.stage_ids]
        if env.num_tasks > 1:  # a DDP training stage: every task of the job is one rank of it
            for stage in stages:
                if not runner.done(stage):
                    run_train_job(stage.job, progress=False)
            return {}
        failed = [s.id for s in stages if runner.run(s, wait=True) == "failed"]
        if failed:  # the job fails, so that SLURM cancels the jobs that need it
            raise RuntimeError(f"{len(failed)} of {len(stages)} stage(s) failed, e.g. {failed[0]}")
        return dict(runner.executor.done.stats)


def make_executor(lcfg: dict, folder: Path, unit: Unit, after: list[str] = ()) -> submitit.AutoExecutor:
    """The submitit executor of one job (`after`: the SLURM job ids it waits for)."""
    cluster = lcfg.get("cluster", "slurm")
    choose("launcher.cluster", cluster, ("slurm", "local"))
    ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster, slurm_max_num_timeout=lcfg["max_requeue"])
    gpus, tasks = unit.gpus, unit.tasks
    if cluster == "local":  # one task: a DDP stage's ranks are started by the training stage itself, as inline
        gpus, tasks = min(gpus, torch.cuda.device_count()), 1
    params = {
        "name": f"bench-{unit.name}",
        "timeout_min": lcfg["time_min"],
        "nodes": unit.nodes,
        "tasks_per_node": tasks,
        "gpus_per_node": gpus,
        "cpus_per_task": lcfg["cpus_per_task"],
    }
    if lcfg.get("mem_gb"):
        params["mem_gb"] = lcfg["mem_gb"]
    for key in ("partition", "account", "constraint", "qos"):
        if lcfg.get(key):
            params[f"slurm_{key}"] = lcfg[key]
    extra = dict(lcfg.get("additional") or {})
    if after:
        extra.update({"dependency": "afterok:" + ":".join(after), "kill-on-invalid-dep": "yes"})
    params.update(slurm_array_parallelism=lcfg["array_limit"], slurm_additional_parameters=extra)
    if lcfg.get("setup"):
        params["slurm_setup"] = list(lcfg["setup"])
    ex.update_parameters(**params)
    return ex


def submit(units_: list[Unit], lcfg: dict, root: Path, ids: dict[int, str] | None = None, which=None) -> dict:
    """Submit `which` units (all by default), each with afterok on its dependencies' job ids (`ids`: unit ->
    job id of units submitted before); consecutive units with the same dependencies and resources form one
    job array. Returns unit index -> submitit job."""
    ids = {} if ids is None else ids
    which = list(range(len(units_))) if which is None else which
    jobs: dict[int, submitit.Job] = {}
    k = 0
    while k < len(which):
        first = units_[which[k]]
        batch = [which[k]]
        while k + len(batch) < len(which):
            nxt = units_[which[k + len(batch)]]
            if nxt.deps != first.deps or nxt.resources() != first.resources():
                break
            batch.append(which[k + len(batch)])
        after = [ids[d] for d in first.deps if d in ids]
        ex = make_executor(lcfg, root / "jobs", first, after)
        with ex.batch():
            submitted = [ex.submit(StageJob(str(root), units_[u].stages)) for u in batch]
        for u, job in zip(batch, submitted):
            jobs[u] = job
            ids[u] = job.job_id
        k += len(batch)
    return jobs


def launch(cfg: dict, plan: Plan, console: Console) -> Launched:
    lcfg = cfg["launcher"]
    mode = lcfg.get("dependencies", "slurm")
    choose("launcher.dependencies", mode, ("slurm", "waves"))
    if lcfg.get("cluster") == "local":
        mode = "waves"  # submitit's LocalExecutor starts a job at once: it cannot wait for another
    elif shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise ConfigError("launcher=slurm needs SLURM's sbatch and srun here (a login node), or launcher.cluster=local")
    root = prepare(cfg, plan)
    cache = Cache(cfg["cache_dir"])
    before = finished(cache, plan)
    todo = units(plan, lcfg, before)
    console.log(f"{len(todo)} jobs for {len(plan) - len(before)} stages ({len(before)} cached); logs: {root / 'jobs'}")
    tracker = _Tracker(todo, lcfg, root, mode)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("[bold]sweep stages", total=len(plan), completed=len(before))
        while not tracker.step():
            progress.update(bar, completed=len(finished(cache, plan)), description=tracker.describe())
            time.sleep(lcfg.get("poll_seconds", 10))
        progress.update(bar, completed=len(finished(cache, plan)), description=tracker.describe())
    tracker.stats["cache_hits"] += len(before)
    return finish(cfg, plan, tracker.stats, str(root / "jobs"), console, tracker.lines)


class _Tracker:
    """The jobs of a launch: submits them (all at once, or as their dependencies finish) and follows their states
    (unit -> submitted, done, failed, skipped)."""

    def __init__(self, todo: list[Unit], lcfg: dict, root: Path, mode: str):
        self.todo, self.lcfg, self.root, self.mode = todo, lcfg, root, mode
        self.jobs = submit(todo, lcfg, root) if mode == "slurm" and todo else {}
        self.state = dict.fromkeys(self.jobs, "submitted")
        self.stats: Counter = Counter()
        self.lines: list[str] = []

    def step(self) -> bool:
        """Collect finished jobs, skip those whose dependency failed, submit the next wave; True when all ended."""
        for u, job in list(self.jobs.items()):
            if self.state[u] == "submitted" and job.done():
                if any(self.state.get(d) in ("failed", "skipped") for d in self.todo[u].deps):
                    self.state[u] = "skipped"  # cancelled by SLURM: a job it needs failed
                else:
                    self.state[u] = _collect(self.todo[u], job, self.root, self.stats, self.lines)
        for u, unit in enumerate(self.todo):
            if self.state.get(u) not in (None, "submitted"):
                continue
            if any(self.state.get(d) in ("failed", "skipped") for d in unit.deps) and u not in self.jobs:
                self.state[u] = "skipped"  # never submitted (a submitted one is cancelled by SLURM: collected)
        if self.mode == "waves":
            running = sum(1 for v in self.state.values() if v == "submitted")
            ready = [
                u
                for u, unit in enumerate(self.todo)
                if u not in self.state and all(self.state.get(d) == "done" for d in unit.deps)
            ][: max(0, self.lcfg["array_limit"] - running)]
            if ready:
                new = submit(self.todo, self.lcfg, self.root, {}, ready)
                self.jobs.update(new)
                self.state.update(dict.fromkeys(new, "submitted"))
        return all(self.state.get(u) in ("done", "failed", "skipped") for u in range(len(self.todo)))

    def describe(self) -> str:
        counts = Counter(self.state.get(u, "waiting") for u in range(len(self.todo)))
        return f"[bold]sweep stages[/] (jobs: {_counts(counts)})"


def _counts(counts: Counter) -> str:
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def _collect(unit: Unit, job, root: Path, stats: Counter, lines: list[str]) -> str:
    """A finished job's state; its stats, or one line for a failure that no stage recorded (killed, out of time)."""
    exc = job.exception()
    if exc is None:
        stats.update(job.result())
        return "done"
    if not set(unit.stages) & set(failures(root)):
        lines.append(f"job {job.job_id} ({unit.name}) failed: {one_line(exc)} (log: {job.paths.stderr})")
    return "failed"
