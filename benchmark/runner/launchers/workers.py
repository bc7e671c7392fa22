"""`launcher=workers`: N worker processes on this machine, each pinned to one GPU (or a share of the CPU cores).

Each worker (`python -m benchmark.runner.launchers.workers RUN_DIR [RUN_DIR ...] INDEX`) repeatedly takes a ready stage
(every dependency finished, nobody holding its claim; first the stage heading the longest chain of stages that wait
for it, then the cells of a model it has loaded) and runs it; it ends when every stage is finished or needs a failed
one. Several run folders (`launch_group`: the experiments of `make bench`) share one pool: a worker takes a stage of
the first experiment that has one ready, so at an experiment's end, when one worker runs its last long chain, the
other starts the next experiment instead of waiting. The main process shows stages done / total and what each
worker is doing, and reports a worker that dies; a dead worker's claim dies with it, so its stage is taken by
another worker (or by the next run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from attacks.errors import ConfigError
from benchmark.runner.cache import Cache
from benchmark.runner.launchers.common import (
    Launched,
    StageRunner,
    dependents,
    failures,
    finish,
    finished,
    prepare,
    quiet_lightning,
)
from benchmark.runner.plan import Plan


def _count(value, name: str) -> int | None:
    if value == "auto":
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"launcher.{name} must be an integer >= 1 or auto, got {value}")
    return value


def layout(lcfg: dict) -> list[dict]:
    """One entry per worker: the GPU it sees (None on a CPU machine) and its torch threads."""
    devices = lcfg.get("devices", "auto")
    if devices == "auto":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        devices = visible.split(",")[:count] if visible else [str(i) for i in range(count)]
    elif not isinstance(devices, list):
        raise ConfigError(f"launcher.devices must be a list of GPU ids or auto, got {devices}")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    n = _count(lcfg.get("workers", "auto"), "workers") or (len(devices) or cores)
    threads = _count(lcfg.get("threads", "auto"), "threads") or max(1, cores // n)
    return [{"device": str(devices[i % len(devices)]) if devices else None, "threads": threads} for i in range(n)]


def launch(cfg: dict, plan: Plan, console: Console) -> Launched:
    return launch_group([(cfg, plan)], console)[0]


def launch_group(runs: list[tuple[dict, Plan]], console: Console) -> list[Launched]:
    """The stages of one or more experiments' plans on one pool of workers (the first experiment's launcher
    settings; each experiment keeps its own run folder, failures and counts). The workers' logs are in the first
    experiment's run folder. One `Launched` per experiment, in order."""
    workers = layout(runs[0][0]["launcher"])
    roots = [prepare(cfg, plan) for cfg, plan in runs]
    caches = [Cache(cfg["cache_dir"]) for cfg, _ in runs]
    before = [finished(cache, plan) for cache, (_, plan) in zip(caches, runs)]
    if all(len(b) == len(plan) for b, (_, plan) in zip(before, runs)):  # nothing to compute: no worker to start
        return [
            finish(cfg, plan, Counter(cache_hits=len(b)), str(root), console)
            for (cfg, plan), b, root in zip(runs, before, roots)
        ]
    logs = [roots[0] / f"worker-{i}.log" for i in range(len(workers))]
    every = ",".join(w["device"] for w in workers if w["device"] is not None)
    procs = []
    for i, w in enumerate(workers):
        env = {**os.environ, "OMP_NUM_THREADS": str(w["threads"]), "MKL_NUM_THREADS": str(w["threads"])}
        env.update(BENCH_WORKER_THREADS=str(w["threads"]), PYTHONUNBUFFERED="1")
        if w["device"] is not None:
            env.update(CUDA_VISIBLE_DEVICES=w["device"], BENCH_ALL_DEVICES=os.environ.get("BENCH_ALL_DEVICES", every))
        with logs[i].open("w") as log:
            cmd = [sys.executable, "-m", "benchmark.runner.launchers.workers", *map(str, roots), str(i)]
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
        where = f"GPU {w['device']}" if w["device"] is not None else "CPU"
        console.log(f"worker {i}: pid {procs[i].pid}, {where}, {w['threads']} thread(s), log {logs[i]}")
    names = " + ".join(cfg["name"] for cfg, _ in runs)
    total = sum(len(plan) for _, plan in runs)
    console.log(
        f"{len(workers)} workers on {total} stages of {names} ({sum(map(len, before))} already cached); "
        f"logs in {roots[0]}"
    )
    reported: set[int] = set()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            bar = progress.add_task("[bold]sweep stages", total=total, completed=sum(map(len, before)))
            rows = [progress.add_task(f"  worker {i}", total=None) for i in range(len(workers))]
            while True:
                alive = [p.poll() is None for p in procs]
                done = sum(len(finished(cache, plan)) for cache, (_, plan) in zip(caches, runs))
                progress.update(bar, completed=done)
                for i, row in enumerate(rows):
                    progress.update(row, description=f"  worker {i}: {_status_text(roots[0], i, alive[i])}")
                for i, p in enumerate(procs):
                    if not alive[i] and p.returncode != 0 and i not in reported:
                        reported.add(i)
                        stage = _status(roots[0], i).get("stage") or "no stage"
                        progress.console.print(
                            f"worker {i} exited with code {p.returncode} while running {stage}; its claim is "
                            f"released: another worker or the next run takes the stage (log: {logs[i]})",
                            soft_wrap=True,
                            markup=False,
                            style="red",
                        )
                if not any(alive):
                    break
                time.sleep(runs[0][0]["launcher"].get("poll_seconds", 0.5))
    except BaseException:
        for p in procs:  # Ctrl-C: the workers stop too; finished stages stay cached
            p.terminate()
        for p in procs:
            p.wait()
        raise
    out = []
    for (cfg, plan), b, root in zip(runs, before, roots):
        stats: Counter = Counter(cache_hits=len(b))
        for i in range(len(workers)):
            stats.update(_status(root, i).get("stats", {}))
        out.append(finish(cfg, plan, stats, str(roots[0]), console))
    return out


def _status(root: Path, i: int) -> dict:
    try:
        return json.loads((root / "workers" / f"{i}.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or being replaced
        return {}


def _status_text(root: Path, i: int, alive: bool) -> str:
    s = _status(root, i)
    counts = f"{s.get('ran', 0)} run, {s.get('failed', 0)} failed"
    if not alive:
        return f"exited ({counts})"
    if s.get("stage"):
        return f"{s['stage']} ({time.time() - s['since']:.0f}s; {counts})"
    return f"{s.get('state', 'starting')} ({counts})"


def levels(plan: Plan) -> dict[str, int]:
    """For each stage, the longest chain of stages that wait for it through `deps` (0: nothing waits for it), the
    priority of highest-level-first list scheduling: the stage that heads the longest remaining chain goes first."""
    waiting: dict[str, list[str]] = {s.id: [] for s in plan.stages}
    for s in plan.stages:
        for d in s.deps:
            waiting.setdefault(d, []).append(s.id)
    memo: dict[str, int] = {}

    def level(i: str) -> int:
        if i not in memo:
            memo[i] = max((1 + level(j) for j in waiting[i]), default=0)
        return memo[i]

    return {s.id: level(s.id) for s in plan.stages}


class _Worker:
    """One worker process's loop over the plans of its run folders (one per experiment, in order)."""

    def __init__(self, roots: list[Path], index: int):
        self.roots, self.index = roots, index
        log, console = str(roots[0] / f"worker-{index}.log"), Console(file=sys.stdout, width=160)
        self.runners = [StageRunner(root, console, log) for root in roots]
        self.levels = [levels(r.plan) for r in self.runners]
        self.poll = self.runners[0].cfg["launcher"].get("poll_seconds", 0.5)
        self.counts = [Counter() for _ in roots]

    def status(self, state: str, stage: str | None = None) -> None:
        """Every run folder gets the worker's state and totals (what the progress shows) and its own counts."""
        totals = sum(self.counts, Counter())
        for root, runner, counts in zip(self.roots, self.runners, self.counts):
            record = {"pid": os.getpid(), "state": state, "stage": stage, "since": time.time(), **totals}
            record["experiment"] = {**counts}
            record["stats"] = dict(runner.executor.done.stats)
            tmp = root / "workers" / f".{self.index}.json.tmp"
            tmp.write_text(json.dumps(record))
            os.replace(tmp, root / "workers" / f"{self.index}.json")

    def ready(self, k: int = 0) -> tuple[list[dict], bool]:
        """The stages of run folder `k` this worker may take now (best first), and whether any stage is left
        there that could still become ready (not finished, not failed, not needing a failed one)."""
        runner, level = self.runners[k], self.levels[k]
        blocked = dependents(runner.plan, set(failures(runner.root)))
        left = [s for s in runner.plan.stages if s.id not in blocked and not runner.done(s)]
        ids = {s.id for s in left}
        ready = [s for s in left if not any(d in ids or d in blocked for d in s.deps)]
        loaded = runner.executor._models
        # stable: plan order within. A training or crafted set that other stages wait for goes before any cell, the
        # head of the longest chain first, so the other worker does not run out of work at a run's end (the order
        # never changes a stage's numbers); among cells, those of a model this worker has loaded.
        ready.sort(key=lambda s: (-level[s.id], s.kind != "cell" or s.cell.model not in loaded))
        return ready, bool(left)

    def take(self) -> tuple[bool, bool]:
        """Run one ready stage of any run folder: (ran one, anything left anywhere). A stage that others wait for,
        in whichever experiment, goes before any cell (the head of the longest chain first, then the earlier
        experiment): a later experiment's long first training (fashion_ssl's SSL encoder, 108 s) then starts while
        the other worker still has cells to run, not at the end with nothing beside it. Cells go experiment by
        experiment, each in `ready`'s order."""
        left, candidates = False, []
        for k in range(len(self.runners)):
            ready, more = self.ready(k)
            left |= more
            candidates += [(-self.levels[k][s.id], k, i, s) for i, s in enumerate(ready)]
        for _, k, _, stage in sorted(candidates, key=lambda c: c[:3]):
            self.status("running", stage.id)
            result = self.runners[k].run(stage, wait=False)
            if result != "busy":
                self.counts[k]["ran" if result == "ran" else "failed"] += 1
                return True, True
        return False, left

    def loop(self) -> None:
        self.status("starting")
        while True:
            ran, left = self.take()
            if not left:
                break
            if not ran:
                self.status("waiting for stages that other workers are computing")
                time.sleep(self.poll)
        self.status("finished")


def main(argv: list[str]) -> int:
    threads = int(os.environ.get("BENCH_WORKER_THREADS", "0"))
    if threads:
        torch.set_num_threads(threads)

    quiet_lightning()
    _Worker([Path(a) for a in argv[:-1]], int(argv[-1])).loop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
