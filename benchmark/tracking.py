"""Weights & Biases tracking: a run per stage, grouped by the sweep, and a sweep run with the results and
findings tables.

An evaluation run (job type `evaluate`) holds its model's metrics (`eval_metrics`: `test/robust_acc/pgd_linf_8`,
`test/detection_auroc/...`, `cost/...`) in its summary, and robust accuracy against epsilon as logged steps
(`eval_curves`) that W&B draws as lines. The sweep run (job type `sweep`) adds W&B's native charts and the
attack x defense table in long format (`benchmark.dashboard`); `make dashboard` saves a workspace over the
evaluation runs.

Offline by default: runs are written under `<results_dir>/wandb/` with no account needed, and `wandb sync`
uploads them later. `logger.mode=online` (after `wandb login`) logs live. Tracking never loses a result:
the runner writes results.csv before W&B is touched, and any W&B failure becomes a warning.

A rerun does not multiply runs: an evaluation run's id is derived from (experiment, pair, defense, seed, model
key) and the sweep run's from the experiment and its sorted row ids, and `wandb.init(resume="allow")` continues
a run of that id online. Offline (wandb 0.31), each rerun writes a new `offline-run-<time>-<id>` directory with
the same id: `wandb sync` files the fragments under that one run (a later fragment may need `wandb sync --append`,
or `wandb beta sync`, which syncs fragments of one id in order). The directory is named by the second: two
fragments of one id within the same second would share (and spoil) one directory; a rerun is never that fast.
A resumed run logs its curve steps again after the first ones: the same points unless a cell was recomputed.
"""

from __future__ import annotations

import hashlib
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmark.results import number

MODES = ("offline", "online", "disabled")
#: The defense whose clean accuracy `test/clean_cost` is measured against (as in the leaderboard).
CLEAN_BASE = "finetune"


def run_id(kind: str, *parts) -> str:
    """A W&B run id that is the same whenever `parts` are: `<kind>-<20 hex digits>`."""
    digest = hashlib.sha1("\x1f".join(map(str, parts)).encode()).hexdigest()[:20]
    return f"{kind}-{digest}"


def _init_kwargs(
    cfg: dict, name: str, job_type: str, config: dict, tags: Sequence[str] = (), run_id: str | None = None
) -> dict:
    import wandb

    Path(cfg["dir"]).mkdir(parents=True, exist_ok=True)
    return {
        **({"id": run_id, "resume": "allow"} if run_id else {}),
        "project": cfg["project"],
        "entity": cfg.get("entity"),
        "group": cfg["group"],
        "name": name,
        "job_type": job_type,
        "config": config,
        "dir": cfg["dir"],
        "mode": cfg["mode"],
        "tags": [*(cfg.get("tags") or []), *tags],
        "settings": wandb.Settings(silent=True, disable_git=True),
    }


def lightning_logger(cfg: dict | None, name: str, config: dict):
    """A Lightning `WandbLogger` for a training stage, or None when tracking is off or W&B fails."""
    if not cfg or cfg.get("mode") == "disabled":
        return None
    try:
        from lightning.pytorch.loggers import WandbLogger

        kwargs = _init_kwargs(cfg, name, "train", config)
        logger = WandbLogger(save_dir=kwargs.pop("dir"), log_model=False, **kwargs)
        logger.experiment  # noqa: B018 - start the run now, so that a W&B failure surfaces here, not mid-training
        return logger
    except Exception as e:  # noqa: BLE001 - tracking must never stop a benchmark
        warnings.warn(f"W&B logger unavailable ({type(e).__name__}: {e}); training continues untracked", stacklevel=2)
        return None


def finish_logger(logger) -> None:
    if logger is None:
        return
    try:
        import wandb

        if wandb.run is not None:
            wandb.run.finish()
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"W&B finish failed ({type(e).__name__}: {e})", stacklevel=2)


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

            run = wandb.init(**_init_kwargs(self.cfg, name, job_type, config, tags, run_id))
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
        findings: list[dict] = (),
        run_id: str | None = None,
        headline: dict[str, float] | None = None,
    ) -> None:
        """The sweep run: the results, attack x defense (long format) and findings tables, W&B's native charts
        (`benchmark.dashboard.sweep_charts` at the `headline` budgets), the plots and the headline numbers."""
        if not self.enabled:
            return
        try:
            import wandb

            from benchmark.findings import COLUMNS

            columns = list(rows[0]) if rows else []
            log: dict[str, Any] = {
                # Mixed types: a column may hold numbers and blanks (rows read back from results.csv).
                "results": wandb.Table(
                    columns=columns, data=[[r.get(c) for c in columns] for r in rows], allow_mixed_types=True
                ),
                "findings": wandb.Table(
                    columns=list(COLUMNS), data=[[_plain(f.get(c)) for c in COLUMNS] for f in findings]
                ),
            }
            log.update({f"plots/{k}": wandb.Image(str(v)) for k, v in images.items() if Path(v).exists()})
        except Exception as e:  # noqa: BLE001
            self.fail(f"W&B table failed ({type(e).__name__}: {e}); the results are in results.csv")
            return
        try:
            from benchmark.dashboard import long_table, sweep_charts

            columns, data = long_table(rows)
            log["attack_defense"] = wandb.Table(columns=columns, data=data)
            log.update(sweep_charts(rows, headline or {}))
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


def metric_tag(row: dict) -> str:
    """A row's name in metric keys: `pgd_linf_8` (8/255), `pgd_l2_0.5`, `worst_case_linf_16`."""
    from attacks.base import eps_label

    return f"{curve_tag(row)}_{eps_label(float(row['eps']), row['norm'])}"


def curve_tag(row: dict) -> str:
    """A row's attack in metric keys; the worst case, which spans the attacks of a norm, with its norm."""
    return f"worst_case_{row['norm']}" if row["attack"] == "worst_case" else row["attack"]


def model_clean(rows: list[dict]) -> float | None:
    """A model's clean accuracy: from its row with the most examples (attacks may run on the first n only)."""
    return number(max(rows, key=lambda r: int(number(r["n_examples"]) or 0))["clean_acc"])


def eval_metrics(rows: list[dict], clean_base: float | None = None) -> dict[str, float]:
    """W&B metric names of one evaluated model and their values (blanks left out):

    - `test/clean_acc`; `test/clean_cost` (clean accuracy minus `clean_base`, plain fine-tuning's) when given;
    - per row: `test/robust_acc/<tag>`, `test/success_rate/<tag>`, `test/robust_acc_worst_of_k/<tag>` (a
      randomized model), `test/transfer/<tag>/acc` and `.../transferability` (a transfer attack),
      `test/detection_auroc/<tag>`, `cost/attack_seconds/<tag>`, `cost/forward_passes/<tag>`,
      `cost/backward_passes/<tag>`; `<tag>` as in `metric_tag` (`pgd_linf_8`);
    - per model: `cost/train_seconds`, `cost/prep_seconds`.
    """
    clean = model_clean(rows)
    out = {"test/clean_acc": clean}
    if clean_base is not None and clean is not None:
        out["test/clean_cost"] = clean - clean_base
    for r in rows:
        tag = metric_tag(r)
        out[f"test/robust_acc/{tag}"] = number(r["robust_acc"])
        out[f"test/success_rate/{tag}"] = number(r["success_rate"])
        if int(number(r.get("draws")) or 1) > 1:  # a randomized model: the worst of K draws beside their mean
            out[f"test/robust_acc_worst_of_k/{tag}"] = number(r["robust_acc_worst_of_k"])
        if r["threat_model"] == "transfer":
            out[f"test/transfer/{tag}/acc"] = number(r.get("transfer_acc"))
            out[f"test/transfer/{tag}/transferability"] = number(r.get("transferability"))
        out[f"test/detection_auroc/{tag}"] = number(r.get("detection_auroc"))
        for field in ("attack_seconds", "forward_passes", "backward_passes"):
            out[f"cost/{field}/{tag}"] = number(r.get(field))
    for field in ("train_seconds", "prep_seconds"):
        out[f"cost/{field}"] = number(rows[0].get(field))
    return {k: v for k, v in out.items() if v is not None}


def eval_curves(rows: list[dict]) -> list[dict[str, float]]:
    """History rows that draw robust accuracy against epsilon in W&B (the metric values are single numbers in
    the summary; a line over epsilon needs one logged step per budget): per norm and budget, in increasing
    order, `curve/eps_<norm>` (L-inf in 1/255 units, L2 as is) and `curve/robust_acc/<attack>` of every attack
    of that norm with two or more budgets (the worst case as `worst_case_<norm>`; no sanity check)."""
    swept: dict[tuple[str, str], dict[float, float]] = {}
    for r in rows:
        if r["threat_model"] != "sanity" and (acc := number(r["robust_acc"])) is not None:
            swept.setdefault((r["norm"], curve_tag(r)), {})[round(float(r["eps"]), 10)] = acc
    out = []
    for norm in sorted({n for n, _ in swept}, key=lambda n: n != "linf"):
        lines = {tag: pts for (n, tag), pts in swept.items() if n == norm and len(pts) > 1}
        for eps in sorted({e for pts in lines.values() for e in pts}):
            step = {f"curve/robust_acc/{tag}": pts[eps] for tag, pts in lines.items() if eps in pts}
            if step:
                out.append({f"curve/eps_{norm}": round(eps * 255, 3) if norm == "linf" else eps, **step})
    return out


def evaluated_models(rows: list[dict]) -> list[dict]:
    """The models of a sweep, one per (pair, defense, seed, model key): their rows, W&B metrics (`eval_metrics`,
    the clean cost against plain fine-tuning of the same pair and seed) and curves (`eval_curves`)."""
    models: dict[tuple, list[dict]] = {}
    for r in rows:
        models.setdefault((r["pair"], r["defense"], str(r["seed"]), r.get("model_key") or ""), []).append(r)
    base = {(p, s): model_clean(rs) for (p, d, s, _), rs in models.items() if d == CLEAN_BASE}
    return [
        {
            "pair": pair,
            "defense": defense,
            "seed": seed,
            "key": key,
            "rows": rs,
            "metrics": eval_metrics(rs, base.get((pair, seed))),
            "curves": eval_curves(rs),
        }
        for (pair, defense, seed, key), rs in models.items()
    ]


def sweep_headline(cfg: dict, out_dir: os.PathLike | None = None) -> dict[str, float]:
    """The headline budgets: the config's `report.headline`, else the run's report_config.json, else none (the
    report then ranks at the median swept budget)."""
    from attacks.base import parse_eps
    from benchmark.report import read_outputs

    configured = (cfg.get("report") or {}).get("headline") or {}
    if configured:
        return {k.lower(): parse_eps(v) for k, v in configured.items()}
    return read_outputs(Path(out_dir or cfg["results_dir"]))["report_config"].get("headline") or {}


def sweep_findings(cfg: dict, rows: list[dict], out_dir: os.PathLike | None = None) -> list[dict]:
    """The leaderboard's findings (`benchmark.findings`) from the run's per_example.json and its config."""
    from benchmark import findings as fnd
    from benchmark.report import read_outputs

    saved = read_outputs(Path(out_dir or cfg["results_dir"]))
    report_cfg = cfg.get("report") or {}
    claims = fnd.claims_from_config(report_cfg["claims"]) if report_cfg.get("claims") else None
    return fnd.findings(rows, saved["per_example"], sweep_headline(cfg, out_dir), claims)


def track(
    cfg: dict,
    rows: list[dict],
    plots: dict,
    warnings: list[str],
    stats: dict,
    out_dir: os.PathLike | None = None,
    findings: list[dict] | None = None,
) -> list[str]:
    """Log an evaluation run per model and the sweep run (results and findings tables, plots) to W&B; returns
    the W&B failures (each also a Python warning).

    Nothing is logged when the sweep computed nothing (`stats` all zero but cache hits): a rerun of a finished
    sweep adds nothing. Otherwise every model is logged, under its stable run id (see the module docstring),
    so that a model whose cells all came from the cache of an interrupted sweep is not left out. `findings`
    default to `sweep_findings` on `out_dir` (default: the config's results_dir).
    """
    logger_cfg = cfg.get("logger") or {}
    tracker = Tracker({**logger_cfg, "group": cfg["name"]} if logger_cfg else None)
    if not tracker.enabled or not any(v for k, v in stats.items() if k != "cache_hits"):
        return []
    for m in evaluated_models(rows):
        rs = m["rows"]
        config = {k: rs[0][k] for k in ("experiment", "pair", "source", "target", "model", "defense", "mode", "seed")}
        config.update(attacks=sorted({r["attack"] for r in rs}), model_key=m["key"])
        flags = sorted({f for r in rs for f in str(r.get("flags") or "").split(";") if f})
        rid = run_id("eval", cfg["name"], m["pair"], m["defense"], m["seed"], m["key"])
        name = f"eval-{m['pair']}-{m['defense']}-seed{m['seed']}"
        tracker.log_evaluation(name, config, m["metrics"], flags, run_id=rid, curves=m["curves"])
    try:
        found = sweep_findings(cfg, rows, out_dir) if findings is None else findings
    except Exception as e:  # noqa: BLE001 - a failed test must not stop the results table from being logged
        found = []
        tracker.fail(f"findings for W&B failed ({type(e).__name__}: {e}); they are in leaderboard.md")
    summary = {
        "warnings": len(warnings),
        "warning_text": "\n".join(warnings),
        "findings_supported": sum(f["verdict"] == "supported" for f in found),
        "findings_tested": sum(bool(f["per_seed"]) for f in found),
        **{f"stats/{k}": v for k, v in stats.items()},
    }
    rid = run_id("sweep", cfg["name"], *sorted(str(r.get("row_id") or "") for r in rows))
    try:
        headline = sweep_headline(cfg, out_dir)
    except Exception as e:  # noqa: BLE001 - the charts then use the median swept budgets
        headline = {}
        tracker.fail(f"headline budgets for W&B failed ({type(e).__name__}: {e}); the charts use the median ones")
    tracker.log_sweep(f"sweep-{cfg['name']}", cfg, rows, plots, summary, found, run_id=rid, headline=headline)
    return tracker.failures
