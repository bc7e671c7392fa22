"""Who runs the stages of a plan (`launcher=inline|workers|slurm`).

- `inline`: this process, stage after stage (`benchmark.runner.execute.Executor.run`), the default;
- `workers`: N local worker processes, each pinned to a GPU or a share of the CPU cores (`workers.py`);
- `slurm`: cluster jobs through submitit, with SLURM dependencies or waves (`slurm.py`).

The stage cache is the only coordination between them (claims, atomic entries, checksums: `benchmark.runner.cache`).
After the workers or jobs, the runner merges from the cache (`common.finish`): its results are those of an inline
run of the same config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from attacks.errors import choose

if TYPE_CHECKING:
    from rich.console import Console

    from benchmark.runner.plan import Plan

LAUNCHERS = ("inline", "workers", "slurm")


def launch(cfg: dict, plan: Plan, console: Console):
    """Run the plan's stages with the configured launcher; None for `inline` (the runner's executor runs them),
    else a `common.Launched` (the plan narrowed to the finished stages, counts, failures)."""
    name = (cfg.get("launcher") or {}).get("name", "inline")
    choose("launcher", name, LAUNCHERS)
    if name == "inline":
        return None
    if name == "workers":
        from benchmark.runner.launchers.workers import launch as run_workers

        return run_workers(cfg, plan, console)
    from benchmark.runner.launchers.slurm import launch as run_jobs

    return run_jobs(cfg, plan, console)
