"""What every launcher shares: the run folder, running one stage in this process, failures, the merge.

A launch writes the composed config and the plan as JSON into its run folder (`launcher.log_dir`); a worker
process or a cluster job reads them back and runs stages with `StageRunner`, which keeps an `Executor` (models
stay loaded across the stages it runs). The stage cache is the only coordination: a stage is done when its cache
entry is there; it is computed under its claim. A stage that fails is recorded in `failed/` (one line, with the
log path); the stages that need it are skipped, the rest of the sweep goes on.

After the workers or jobs, the main process runs the inline executor over the plan narrowed to the finished
stages (`finish`): every stage is a cache hit, so results.csv, the report and W&B come from the cache, exactly as
an inline run of the same config writes them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import sys
import time
import traceback
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from rich.console import Console

from benchmark.runner.cache import Cache
from benchmark.runner.execute import Executor, stage_entry
from benchmark.runner.plan import Plan, Stage


@dataclass
class Launched:
    """What a launcher hands back to the runner: the plan narrowed to the finished stages, the counts of what
    its workers or jobs did, one line per failure, the stages skipped because a stage they need failed."""

    plan: Plan
    stats: Counter = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    logs: str = ""


def run_dir(cfg: dict) -> Path:
    return Path(cfg["launcher"]["log_dir"])


def prepare(cfg: dict, plan: Plan) -> Path:
    """A fresh run folder holding the config and the plan (earlier failures and statuses are cleared: a new
    launch tries failed stages again)."""
    root = run_dir(cfg)
    for sub in ("failed", "workers"):
        shutil.rmtree(root / sub, ignore_errors=True)
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(cfg))
    (root / "plan.json").write_text(plan.to_json())
    return root


def load(root: str | Path) -> tuple[dict, Plan]:
    root = Path(root)
    return json.loads((root / "config.json").read_text()), Plan.from_json((root / "plan.json").read_text())


def one_line(exc: BaseException) -> str:
    first = next((line for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def record_failure(root: Path, stage: Stage, exc: BaseException, log: str) -> str:
    """Write a failed stage's record; returns its one line."""
    line = f"{stage.id} failed: {one_line(exc)} (log: {log})"
    name = hashlib.sha256(stage.id.encode()).hexdigest()[:16]
    (root / "failed" / f"{name}.json").write_text(json.dumps({"stage": stage.id, "line": line, "log": log}))
    return line


def failures(root: Path) -> dict[str, str]:
    """stage id -> one line, for every stage that failed in this launch."""
    out = {}
    for f in sorted((root / "failed").glob("*.json")):
        record = json.loads(f.read_text())
        out[record["stage"]] = record["line"]
    return out


def dependents(plan: Plan, ids: set[str]) -> set[str]:
    """`ids` and every stage that needs one of them, directly or not: through `deps`, a transfer cell's white-box
    reference or a sanity cell's base cell (rows need those too)."""
    out = set(ids)
    changed = True
    while changed:
        changed = False
        for s in plan.stages:
            needs = [*s.deps, *((s.cell.reference, s.cell.base) if s.kind == "cell" else ())]
            if s.id not in out and any(n in out for n in needs if n):
                out.add(s.id)
                changed = True
    return out


def narrow(plan: Plan, missing: set[str]) -> Plan:
    """The plan without `missing` stages and what needs them."""
    gone = dependents(plan, missing)
    return replace(plan, stages=[s for s in plan.stages if s.id not in gone])


def finished(cache: Cache, plan: Plan) -> set[str]:
    """Ids of the stages whose cache entry is there (not verified: cheap enough to poll for progress)."""
    return {s.id for s in plan.stages if cache.exists(*stage_entry(s))}


def finish(cfg: dict, plan: Plan, stats: Counter, logs: str, console: Console, extra: list[str] = ()) -> Launched:
    """After the workers or jobs: the failures (one line each: the stages' records, then `extra` lines of jobs
    that failed without a record), the stages skipped for them, and the plan narrowed to what finished (the
    merge runs the inline executor over it: all cache hits)."""
    root = run_dir(cfg)
    failed = failures(root)
    missing = {s.id for s in plan.stages} - finished(Cache(cfg["cache_dir"]), plan)
    gone = dependents(plan, missing)
    skipped = sorted(gone - set(failed))
    lines = [*failed.values(), *extra]
    unfinished = missing - set(failed) - dependents(plan, set(failed))
    if unfinished and not extra:  # a worker or job died without recording why (killed, out of memory, cancelled)
        lines.append(
            f"{len(unfinished)} stage(s) did not finish, e.g. {sorted(unfinished)[0]}: the same command runs "
            f"them (logs: {logs})"
        )
    for line in lines:  # soft_wrap: one line each, whatever the console's width (a log file, a pipe)
        console.print(f"FAILED {line}", soft_wrap=True, markup=False, style="red")
    if skipped:
        msg = f"skipped {len(skipped)} stage(s) that need a failed or unfinished stage, e.g. {skipped[0]}"
        console.print(msg, soft_wrap=True, markup=False)
    return Launched(narrow(plan, missing), stats, lines, skipped, logs)


def quiet_lightning() -> None:
    """Keep the console for the sweep: no hardware banners or tips, no warnings about tiny datasets."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    for pattern in ("does not have many workers", "smaller than the logging interval", r"isinstance\(treespec"):
        warnings.filterwarnings("ignore", f".*{pattern}.*")


class StageRunner:
    """Runs stages of a plan in this process, one at a time, each under its claim (worker processes and jobs)."""

    def __init__(self, root: str | Path, console: Console | None = None, log: str = ""):
        self.root = Path(root)
        self.cfg, self.plan = load(self.root)
        self.cfg = {**self.cfg, "progress": False}  # no live bars in a log file
        self.console = console or Console(file=sys.stderr, width=160)
        self.executor = Executor(self.cfg, self.plan, self.console)
        self.cache = self.executor.cache
        self.log = log
        self._done: set[str] = set()

    def done(self, stage: Stage) -> bool:
        """Whether the stage's cache entry is there and sound (a damaged one is removed: not done)."""
        if stage.id not in self._done and self.cache.meta(*stage_entry(stage)) is not None:
            self._done.add(stage.id)
        return stage.id in self._done

    def run(self, stage: Stage, wait: bool) -> str:
        """'ran' (computed or found finished), 'busy' (another process holds its claim; only if not `wait`), or
        'failed' (recorded in the run folder, traceback in this process's log)."""
        start = time.perf_counter()
        try:
            held = self.executor.run_stage(stage, wait=wait)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 -- any error of one stage: recorded, the sweep goes on
            traceback.print_exc(file=self.console.file)
            line = record_failure(self.root, stage, e, self.log)
            self.console.log(f"FAILED {line}")
            return "failed"
        if not held:
            return "busy"
        self._done.add(stage.id)
        self.console.log(f"  finished {stage.id} in {time.perf_counter() - start:.1f}s")
        return "ran"
