"""`launcher=workers`: N worker processes on this machine, each pinned to one GPU (or a share of the CPU cores).

Each worker (`python -m benchmark.launchers.workers RUN_DIR INDEX`) repeatedly takes a ready stage of the plan
(every dependency finished, nobody holding its claim; first the stage heading the longest chain of stages that wait
for it, then the cells of a model it has loaded) and runs it;
it ends when every stage is finished or needs a failed one. The main process shows stages done / total and what
each worker is doing, and reports a worker that dies; a dead worker's claim dies with it, so its stage is taken
by another worker (or by the next run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from attacks.errors import ConfigError
from benchmark.cache import Cache
from benchmark.launchers.common import Launched, StageRunner, dependents, failures, finish, finished, prepare
from benchmark.plan import Plan


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
        import torch

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
    lcfg = cfg["launcher"]
    workers = layout(lcfg)
    root = prepare(cfg, plan)
    cache = Cache(cfg["cache_dir"])
    before = finished(cache, plan)
    if len(before) == len(plan):  # nothing to compute: no worker to start
        return finish(cfg, plan, Counter(cache_hits=len(before)), str(root), console)
    logs = [root / f"worker-{i}.log" for i in range(len(workers))]
    every = ",".join(w["device"] for w in workers if w["device"] is not None)
    procs = []
    for i, w in enumerate(workers):
        env = {**os.environ, "OMP_NUM_THREADS": str(w["threads"]), "MKL_NUM_THREADS": str(w["threads"])}
        env.update(BENCH_WORKER_THREADS=str(w["threads"]), PYTHONUNBUFFERED="1")
        if w["device"] is not None:
            env.update(CUDA_VISIBLE_DEVICES=w["device"], BENCH_ALL_DEVICES=os.environ.get("BENCH_ALL_DEVICES", every))
        with logs[i].open("w") as log:
            cmd = [sys.executable, "-m", "benchmark.launchers.workers", str(root), str(i)]
            procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT))
        where = f"GPU {w['device']}" if w["device"] is not None else "CPU"
        console.log(f"worker {i}: pid {procs[i].pid}, {where}, {w['threads']} thread(s), log {logs[i]}")
    console.log(f"{len(workers)} workers on {len(plan)} stages ({len(before)} already cached); logs in {root}")
    reported: set[int] = set()
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            total = progress.add_task("[bold]sweep stages", total=len(plan), completed=len(before))
            rows = [progress.add_task(f"  worker {i}", total=None) for i in range(len(workers))]
            while True:
                alive = [p.poll() is None for p in procs]
                progress.update(total, completed=len(finished(cache, plan)))
                for i, row in enumerate(rows):
                    progress.update(row, description=f"  worker {i}: {_status_text(root, i, alive[i])}")
                for i, p in enumerate(procs):
                    if not alive[i] and p.returncode != 0 and i not in reported:
                        reported.add(i)
                        stage = _status(root, i).get("stage") or "no stage"
                        progress.console.print(
                            f"worker {i} exited with code {p.returncode} while running {stage}; its claim is "
                            f"released: another worker or the next run takes the stage (log: {logs[i]})",
                            soft_wrap=True,
                            markup=False,
                            style="red",
                        )
                if not any(alive):
                    break
                time.sleep(lcfg.get("poll_seconds", 0.5))
    except BaseException:
        for p in procs:  # Ctrl-C: the workers stop too; finished stages stay cached
            p.terminate()
        for p in procs:
            p.wait()
        raise
    stats: Counter = Counter(cache_hits=len(before))
    for i in range(len(workers)):
        stats.update(_status(root, i).get("stats", {}))
    return finish(cfg, plan, stats, str(root), console)


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
    waiting: dict[str, list[str]] = {s["id"]: [] for s in plan.stages}
    for s in plan.stages:
        for d in s["deps"]:
            waiting.setdefault(d, []).append(s["id"])
    memo: dict[str, int] = {}

    def level(i: str) -> int:
        if i not in memo:
            memo[i] = max((1 + level(j) for j in waiting[i]), default=0)
        return memo[i]

    return {s["id"]: level(s["id"]) for s in plan.stages}


class _Worker:
    """One worker process's loop over the plan."""

    def __init__(self, root: Path, index: int):
        self.root, self.index = root, index
        log = str(root / f"worker-{index}.log")
        self.runner = StageRunner(root, Console(file=sys.stdout, width=160), log)
        self.plan = self.runner.plan
        self.poll = self.runner.cfg["launcher"].get("poll_seconds", 0.5)
        self.counts = Counter()
        self.levels = levels(self.plan)

    def status(self, state: str, stage: str | None = None) -> None:
        record = {"pid": os.getpid(), "state": state, "stage": stage, "since": time.time(), **self.counts}
        record["stats"] = dict(self.runner.executor.done.stats)
        tmp = self.root / "workers" / f".{self.index}.json.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.root / "workers" / f"{self.index}.json")

    def ready(self) -> tuple[list[dict], bool]:
        """The stages this worker may take now (best first), and whether any stage is left that could still
        become ready (not finished, not failed, not needing a failed one)."""
        blocked = dependents(self.plan, set(failures(self.root)))
        left = [s for s in self.plan.stages if s["id"] not in blocked and not self.runner.done(s)]
        ids = {s["id"] for s in left}
        ready = [s for s in left if not any(d in ids or d in blocked for d in s["deps"])]
        loaded = self.runner.executor._models
        # stable: plan order within. A training or crafted set that other stages wait for goes before any cell, the
        # head of the longest chain first, so the other worker does not run out of work at a run's end (the order
        # never changes a stage's numbers); among cells, those of a model this worker has loaded.
        ready.sort(key=lambda s: (-self.levels[s["id"]], s.get("model") not in loaded))
        return ready, bool(left)

    def loop(self) -> None:
        self.status("starting")
        while True:
            ready, left = self.ready()
            if not left:
                break
            ran = False
            for stage in ready:
                self.status("running", stage["id"])
                result = self.runner.run(stage, wait=False)
                if result != "busy":
                    self.counts["ran" if result == "ran" else "failed"] += 1
                    ran = True
                    break
            if not ran:
                self.status("waiting for stages that other workers are computing")
                time.sleep(self.poll)
        self.status("finished")


def main(argv: list[str]) -> int:
    threads = int(os.environ.get("BENCH_WORKER_THREADS", "0"))
    if threads:
        import torch

        torch.set_num_threads(threads)
    from benchmark.launchers.common import quiet_lightning

    quiet_lightning()
    _Worker(Path(argv[0]), int(argv[1])).loop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
