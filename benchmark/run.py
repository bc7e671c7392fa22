"""Run a benchmark sweep: `python -m benchmark.run [experiment=NAME] [overrides...]`.

Examples:
    python -m benchmark.run                                   # the default experiment (digits)
    python -m benchmark.run experiment=mnist_usps data.mnist_usps.root=/data
    python -m benchmark.run defense=pgd_at attack=pgd_linf    # narrow the sweep to one defense, one attack
    python -m benchmark.run 'defense=[finetune,pgd_at]' seeds=[0,1,2] logger=none
    python -m benchmark.run --cfg                             # print the composed config and stop
    python -m benchmark.run --plan                            # what it will compute, what is cached, the time
    python -m benchmark.run --plan-json                       # the plan itself (stages, cells, keys) as JSON
    python -m benchmark.run --experiments "digits digits_ssl"  # several experiments in this one process
    python -m benchmark.run launcher=workers                  # one worker process per GPU (or CPU core)
    python -m benchmark.run launcher=slurm launcher.partition=gpu cache_dir=/shared/cache   # SLURM jobs

Bad input stops with one line naming what is valid and exit code 2; an interrupted sweep keeps every
finished stage, and the same command continues from there. With `launcher=workers|slurm` a failed stage is one
line with its log (exit code 1) and the rest of the sweep goes on; the results come from the cache afterwards.

config -> plan -> [launch: workers or jobs] -> execute -> rows (scores and checks) -> results files -> report and W&B.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console

from attacks.base import AttackConstraintError
from attacks.errors import ConfigError
from benchmark.numerics import machine
from benchmark.records import Row
from benchmark.results.files import write_csv
from benchmark.results.report import report_inputs, write_report_if_changed
from benchmark.runner import estimate
from benchmark.runner.config import compose, report_defenses, usage
from benchmark.runner.execute import Executor
from benchmark.runner.launchers import launch
from benchmark.runner.launchers.common import quiet_lightning
from benchmark.runner.launchers.workers import launch_group
from benchmark.runner.plan import Plan
from benchmark.runner.planner import make_plan
from benchmark.runner.rows import make_rows
from benchmark.runner.timing import split
from benchmark.tracking.runs import track


def report_config(cfg: dict, plan: Plan) -> dict:
    """What the report reads of the config (report_config.json, so that `make report` rebuilds it alone)."""
    return {
        "headline": plan.headline,
        "transferability": cfg["report"]["transferability"],
        "claims": cfg["report"].get("claims"),
        "defenses": report_defenses(cfg),
        "machine": machine(cfg),
    }


def write_results(out: Path, cfg: dict, reported: dict, rows: list[Row], examples: dict, warnings: list[str]) -> None:
    """results.csv first (nothing after it can lose a result), then the per-example data, the run's warnings
    that are not row flags, and what the report needs to rebuild itself (`reported`, its `report_config`)."""
    write_csv(rows, out / "results.csv")
    (out / "per_example.json").write_text(json.dumps(examples))
    (out / "run_warnings.json").write_text(json.dumps(warnings, indent=1))
    (out / "report_config.json").write_text(json.dumps(reported))
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg))


def run(cfg: dict) -> dict:
    """Run a composed config; returns what was done (rows, stats, warnings, paths)."""
    return run_group([cfg])[0]


def run_group(cfgs: list[dict]) -> list[dict]:
    """Run several composed configs (`make bench`'s experiments): every plan first, so bad input in any stops
    before work starts; then the stages, on one pool of workers when every experiment has `launcher=workers` (a
    worker with nothing ready in one experiment takes the next one's stages), else each experiment's in turn; then
    each experiment's results, report and W&B. One result per experiment, as `run` returns it."""
    quiet_lightning()
    console = Console(stderr=True)
    planned, data = [], {}  # data: the set-up data pairs, shared by plans on the same pair
    for cfg in cfgs:
        start = time.perf_counter()
        plan, notes, plan_warnings = make_plan(cfg, data)  # validates every name and value before any work
        report_inputs(report_config(cfg, plan))  # and the defenses' claims
        console.log(f"experiment [bold]{cfg['name']}[/]: {len(plan)} stages -> {cfg['results_dir']}")
        for note in notes:
            console.log(note)
        cost = estimate.summary(cfg, plan)
        for line in estimate.describe(cost):
            console.log(line)
        if far := estimate.far_beyond(cost):
            console.log(f"[yellow]WARNING[/]: {far}")
        planned.append((plan, plan_warnings, time.perf_counter() - start))
    pooled = len(cfgs) > 1 and all((cfg.get("launcher") or {}).get("name") == "workers" for cfg in cfgs)
    group = {}
    if pooled:
        start = time.perf_counter()
        launched_all = launch_group([(cfg, plan) for cfg, (plan, _, _) in zip(cfgs, planned)], console)
        group = {"experiments": [cfg["name"] for cfg in cfgs], "pool_seconds": time.perf_counter() - start}
    out = []
    for k, (cfg, (plan, plan_warnings, seconds)) in enumerate(zip(cfgs, planned)):
        start = time.perf_counter() - seconds
        # None: inline, this process computes; else merge from the cache
        launched = launched_all[k] if pooled else launch(cfg, plan, console)
        out.append(_results(cfg, plan, plan_warnings, launched, console, start, group))
    return out


def _results(cfg, plan, plan_warnings, launched, console, start: float, group: dict) -> dict:
    """After the launch: the merge (or the inline computation), rows, results files, report, W&B, run_stats.json.
    `group`: the shared pool's experiments and wall time, when several experiments ran on one."""
    done = Executor(cfg, launched.plan if launched else plan, console).run()
    failed = launched.failures if launched else []  # already shown, one line each; kept for the report
    if launched:
        done.stats = launched.stats + Counter({k: v for k, v in done.stats.items() if k != "cache_hits"})
    rows, examples = make_rows(cfg, launched.plan if launched else plan, done)
    out = Path(cfg["results_dir"])
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(plan.to_json())
    reported = report_config(cfg, plan)
    write_results(out, cfg, reported, rows, examples, [*plan_warnings, *failed])
    report_start = time.perf_counter()
    report, rebuilt = write_report_if_changed(out, rows, examples, reported, [*plan_warnings, *failed])
    if not rebuilt:
        console.log(f"leaderboard and plots in {out} are up to date (same results, same code): not redrawn")
    plots = report.plots
    warnings = [w for w in report.warnings if w not in failed]  # printed at the end; the failures were already
    # (and `teacher_loaded` when a public teacher was loaded, not trained)
    stats = {"teacher_trained": 0, "student_trained": 0, "crafted": 0, "attacks_run": 0, "cache_hits": 0}
    counts, seconds_by_kind, whole = split(done.stats)
    stats.update(counts)
    timings = {"report_seconds": time.perf_counter() - report_start, "seconds_by_kind": seconds_by_kind, **whole}
    wandb_start = time.perf_counter()
    failures = track(cfg, rows, plots, warnings, stats, report.found, report.headline)
    timings["wandb_seconds"] = time.perf_counter() - wandb_start
    elapsed = time.perf_counter() - start  # with a shared pool: this experiment's own steps, the pool apart
    run_stats = {**stats, **timings, "seconds": elapsed, "machine": machine(cfg)}
    if group:
        run_stats["pool"] = group
    (out / "run_stats.json").write_text(json.dumps(run_stats, indent=1))
    _closing_log(console, cfg, stats, elapsed, warnings, out, plots, group)
    return {
        "rows": rows,
        "failed": failed + launched.skipped if launched else [],
        "stats": stats,
        "warnings": [*warnings, *failed],
        "plots": plots,
        "wandb_failures": failures,
        "seconds": elapsed,
        "plan": plan,
    }


def _closing_log(console, cfg, stats: dict, elapsed: float, warnings: list[str], out: Path, plots: dict, group: dict):
    """What the run did, every warning, and where its files are."""
    pool = f" (+ {group['pool_seconds']:.0f}s of stages pooled with {', '.join(group['experiments'])})" if group else ""
    console.log(
        f"{cfg['name']} done in {elapsed:.0f}s{pool}: trained {stats['teacher_trained']} teacher(s) and "
        f"{stats['student_trained']} student(s)"
        + (f", loaded {stats['teacher_loaded']} public teacher(s)" if stats.get("teacher_loaded") else "")
        + f", crafted {stats['crafted']} transfer set(s), ran "
        f"{stats['attacks_run']} attack(s), {stats['cache_hits']} cache hit(s)"
    )
    for w in warnings:
        console.log(f"[yellow]WARNING[/]: {w}")
    console.log(
        f"results: {out / 'results.csv'}, {out / 'leaderboard.md'}, plots: {', '.join(map(str, plots.values()))}"
    )
    if cfg.get("logger") and cfg["logger"].get("mode") != "disabled":
        console.log(
            f"W&B ({cfg['logger']['mode']}): {cfg['logger']['dir']}/wandb"
            + ("; upload later with `wandb sync`" if cfg["logger"]["mode"] == "offline" else "")
        )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if {"-h", "--help"} & set(argv):
        print(usage(__doc__))
        return 0
    if "--experiments" in argv:  # one process: a warm rerun's main cost is importing torch and Lightning
        i = argv.index("--experiments")
        names, rest = argv[i + 1 : i + 2], argv[:i] + argv[i + 2 :]
        names = names[0].replace(",", " ").split() if names else []
        if not names:
            print("error: --experiments needs a list of experiment names, e.g. --experiments 'digits digits_ssl'",
                  file=sys.stderr)  # fmt: skip
            return 2
        if {"--cfg", "--plan", "--plan-json"} & set(rest):  # printed for each experiment in turn
            return next((code for name in names if (code := main([f"experiment={name}", *rest]))), 0)
        print(f"make bench: {' + '.join(names)}", flush=True)
        return _guarded(lambda: run_group([compose([f"experiment={name}", *rest]) for name in names]))
    print_cfg, print_plan, print_json = "--cfg" in argv, "--plan" in argv, "--plan-json" in argv
    argv = [a for a in argv if a not in ("--cfg", "--plan", "--plan-json")]

    def one() -> list[dict]:
        cfg = compose(argv)
        if print_cfg:
            print(OmegaConf.to_yaml(cfg))
            return []
        if print_plan or print_json:
            plan, notes, _ = make_plan(cfg)
            if print_json:  # each loaded file's report is its stage's `load_report`
                print(plan.to_json())
                return []
            cost = estimate.summary(cfg, plan)
            print("\n".join([f"experiment {cfg['name']} -> {cfg['results_dir']}", *notes, *estimate.describe(cost)]))
            if far := estimate.far_beyond(cost):
                print(f"WARNING: {far}")
            print("(the plan's stages, cells and cache keys as JSON: --plan-json)")
            return []
        return [run(cfg)]

    return _guarded(one)


def _guarded(work) -> int:
    """The exit code of `work` (a list of run results): 0, 1 when a stage failed, 2 on bad input (one line), 1 on
    an invalid adversarial example, 130 when interrupted (every finished stage is cached)."""
    try:
        if any(result["failed"] for result in work()):
            return 1
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except AttackConstraintError as e:
        print(f"error: an attack produced an invalid adversarial example ({e}); nothing was scored", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every finished stage is cached; run the same command again to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
