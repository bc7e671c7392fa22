"""Weights & Biases tracking: a run per stage, grouped by the sweep, and a sweep run with the results and
findings tables.

An evaluation run (job type `evaluate`) holds its model's metrics (`eval_metrics`: `test/robust_acc/pgd_linf_8`,
`test/detection_auroc/...`, `cost/...`) in its summary, and robust accuracy against epsilon as logged steps
(`eval_curves`) that W&B draws as lines. The sweep run (job type `sweep`) adds W&B's native charts and the
attack x defense table in long format (`benchmark.tracking.dashboard`); `make dashboard` saves a workspace over the
evaluation runs.

Offline by default: runs are written under `<results_dir>/wandb/` with no account needed, and `wandb sync`
uploads them later. `logger.mode=online` (after `wandb login`) logs live. Tracking never loses a result:
the runner writes results.csv before W&B is touched, and any W&B failure becomes a warning.

A rerun does not multiply runs: every run's id is derived from what it measures: an evaluation run's from
(experiment, results folder, pair, defense, seed, model key), the sweep run's from (experiment, results folder),
a training run's from its stage key (`lightning_modules.loggers`). Each rerun logs every model of the sweep again,
in full, so it replaces the run: offline, the earlier `offline-run-<time>-<id>` folders of that id are removed
first (`replace_offline`), so `wandb sync` uploads each run once; online, `wandb.init(resume="allow")` continues
the run of that id. A sweep narrowed on the command line has its own results folder (`benchmark.runner.overrides`),
hence its own runs.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmark.records import COLUMNS, Row
from benchmark.results.verdicts import COLUMNS as FINDING_COLUMNS
from benchmark.tracking.charts import evaluated_models, long_table, sweep_charts
from lightning_modules.loggers import init_kwargs, replace_offline, run_id

MODES = ("offline", "online", "disabled")


class Tracker:
    """Logs evaluation stages and the sweep summary; every failure is a warning, never an error."""

    def __init__(self, cfg: dict | None):
        self.cfg = cfg if cfg and cfg.get("mode") != "disabled" else None
        self.failures: list[str] = []

    def fail(self, msg: str) -> None:
        """Record a W&B failure and warn; the benchmark goes on."""
        self.failures.append(msg)
        warnings.warn(msg, stacklevel=3)

    @property
    def enabled(self) -> bool:
        return self.cfg is not None

    def _run(
        self,
        name: str,
        job_type: str,
        config: dict,
        log: dict[str, Any],
        summary: dict[str, Any],
        tags: Sequence[str] = (),
        run_id: str | None = None,
        curves: Sequence[dict[str, float]] = (),
    ) -> None:
        if not self.enabled:
            return
        try:
            import wandb

            if run_id and self.cfg["mode"] == "offline":
                replace_offline(self.cfg["dir"], run_id)
            run = wandb.init(**init_kwargs(self.cfg, name, job_type, config, tags, run_id))
            try:
                if log:
                    run.log(log)
                _log_curves(run, curves)
                run.summary.update(summary)
            finally:
                run.finish()
        except Exception as e:  # noqa: BLE001 - a W&B failure never loses a result
            msg = f"W&B logging of '{name}' failed ({type(e).__name__}: {e}); the results are in results.csv"
            self.fail(msg)

    def log_evaluation(
        self,
        name: str,
        config: dict,
        metrics: dict[str, float],
        flags: Sequence[str] = (),
        run_id: str | None = None,
        curves: Sequence[dict[str, float]] = (),
    ) -> None:
        """One run per evaluated model: metrics named like `test/robust_acc/pgd_linf_8`; the sanity and
        AutoAttack flags of its rows in the summary (`flags`, `n_flags`) and as W&B tags; `curves`
        (`eval_curves`) logged as steps after the metrics."""
        summary = {**metrics, "flags": ";".join(flags), "n_flags": len(flags)}
        self._run(name, "evaluate", config, metrics, summary, tags=flags, run_id=run_id, curves=curves)

    def log_sweep(
        self,
        name: str,
        config: dict,
        rows: list[dict],
        images: dict[str, os.PathLike],
        summary: dict[str, Any],
        findings: list[dict],
        headline: dict[str, float],
        run_id: str | None = None,
    ) -> None:
        """The sweep run: the results, attack x defense (long format) and findings tables, W&B's native charts
        (`benchmark.tracking.dashboard.sweep_charts` at the `headline` budgets), the plots and the headline numbers."""
        if not self.enabled:
            return
        try:
            import wandb

            columns = COLUMNS if rows else []
            log: dict[str, Any] = {
                # Mixed types: a column may hold numbers and blanks (rows read back from results.csv).
                "results": wandb.Table(
                    columns=columns, data=[[getattr(r, c) for c in columns] for r in rows], allow_mixed_types=True
                ),
                "findings": wandb.Table(
                    columns=list(FINDING_COLUMNS), data=[[_plain(f.get(c)) for c in FINDING_COLUMNS] for f in findings]
                ),
            }
            log.update({f"plots/{k}": wandb.Image(str(v)) for k, v in images.items() if Path(v).exists()})
        except Exception as e:  # noqa: BLE001
            self.fail(f"W&B table failed ({type(e).__name__}: {e}); the results are in results.csv")
            return
        try:
            columns, data = long_table(rows)
            log["attack_defense"] = wandb.Table(columns=columns, data=data)
            log.update(sweep_charts(rows, headline))
        except Exception as e:  # noqa: BLE001 - the tables above are still logged
            self.fail(f"W&B charts failed ({type(e).__name__}: {e}); the plots are PNGs beside results.csv")
        self._run(name, "sweep", config, log, summary, run_id=run_id)


def _log_curves(run, curves: Sequence[dict[str, float]]) -> None:
    """Log `eval_curves` steps, each curve against its norm's epsilon (W&B's default x-axis for it), and keep
    them out of the summary: a curve's last point is no result of its own."""
    axes = {key: next(k for k in step if k.startswith("curve/eps_")) for step in curves for key in step}
    for key, x in axes.items():
        run.define_metric(key, **({} if key == x else {"step_metric": x}), summary="none")
    for step in curves:
        run.log(step)


def _plain(value):
    """A table cell: NaN (no value) as None, which W&B's JSON accepts."""
    return None if isinstance(value, float) and math.isnan(value) else value


def track(
    cfg: dict,
    rows: list[Row],
    plots: dict,
    warnings: list[str],
    stats: dict,
    findings: Sequence[dict],
    headline: dict[str, float],
) -> list[str]:
    """Log an evaluation run per model and the sweep run (results and findings tables, plots) to W&B; returns
    the W&B failures (each also a Python warning).

    Nothing is logged when the sweep computed nothing (`stats` all zero but cache hits): a rerun of a finished
    sweep adds nothing. Otherwise every model is logged, under its stable run id (see the module docstring),
    so that a model whose cells all came from the cache of an interrupted sweep is not left out. `findings`: the
    leaderboard's and `headline` its budgets (`benchmark.results.report.write_report` computes both once).
    """
    logger_cfg = cfg.get("logger") or {}
    tracker = Tracker({**logger_cfg, "group": cfg["name"]} if logger_cfg else None)
    if not tracker.enabled or not any(v for k, v in stats.items() if k != "cache_hits"):
        return []
    for m in evaluated_models(rows):
        rs = m["rows"]
        keys = ("experiment", "pair", "source", "target", "model", "defense", "mode", "seed")
        config = {k: getattr(rs[0], k) for k in keys}
        config.update(attacks=sorted({r.attack for r in rs}), model_key=m["key"])
        flags = sorted({f for r in rs for f in r.flag_list})
        rid = run_id("eval", cfg["name"], cfg["results_dir"], m["pair"], m["defense"], m["seed"], m["key"])
        name = f"eval-{m['pair']}-{m['defense']}-seed{m['seed']}"
        tracker.log_evaluation(name, config, m["metrics"], flags, run_id=rid, curves=m["curves"])
    found = list(findings)
    summary = {
        "warnings": len(warnings),
        "warning_text": "\n".join(warnings),
        "findings_supported": sum(f["verdict"] == "supported" for f in found),
        "findings_tested": sum("p" in f for f in found),
        **{f"stats/{k}": v for k, v in stats.items()},
    }
    rid = run_id("sweep", cfg["name"], cfg["results_dir"])
    tracker.log_sweep(f"sweep-{cfg['name']}", cfg, rows, plots, summary, found, headline, run_id=rid)
    return tracker.failures
