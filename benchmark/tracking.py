"""Weights & Biases tracking: a run per stage, grouped by the sweep, and a sweep run with the results table.

Offline by default: runs are written under `<results_dir>/wandb/` with no account needed, and `wandb sync`
uploads them later. `logger.mode=online` (after `wandb login`) logs live. Tracking never loses a result:
the runner writes results.csv before W&B is touched, and any W&B failure becomes a warning.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MODES = ("offline", "online", "disabled")


def _init_kwargs(cfg: dict, name: str, job_type: str, config: dict, tags: Sequence[str] = ()) -> dict:
    import wandb

    Path(cfg["dir"]).mkdir(parents=True, exist_ok=True)
    return {
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
    ) -> None:
        if not self.enabled:
            return
        try:
            import wandb

            run = wandb.init(**_init_kwargs(self.cfg, name, job_type, config, tags))
            try:
                if log:
                    run.log(log)
                run.summary.update(summary)
            finally:
                run.finish()
        except Exception as e:  # noqa: BLE001 - a W&B failure never loses a result
            msg = f"W&B logging of '{name}' failed ({type(e).__name__}: {e}); the results are in results.csv"
            self.failures.append(msg)
            warnings.warn(msg, stacklevel=2)

    def log_evaluation(self, name: str, config: dict, metrics: dict[str, float], flags: Sequence[str] = ()) -> None:
        """One run per evaluated model: metrics named like `test/robust_acc/pgd_linf_8`; the sanity and
        AutoAttack flags of its rows in the summary (`flags`, `n_flags`) and as W&B tags."""
        summary = {**metrics, "flags": ";".join(flags), "n_flags": len(flags)}
        self._run(name, "evaluate", config, metrics, summary, tags=flags)

    def log_sweep(
        self, name: str, config: dict, rows: list[dict], images: dict[str, os.PathLike], summary: dict[str, Any]
    ) -> None:
        """The sweep run: the results table, the plots and the headline numbers."""
        if not self.enabled:
            return
        try:
            import wandb

            columns = list(rows[0]) if rows else []
            log: dict[str, Any] = {
                "results": wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])
            }
            log.update({f"plots/{k}": wandb.Image(str(v)) for k, v in images.items() if Path(v).exists()})
        except Exception as e:  # noqa: BLE001
            self.failures.append(f"W&B table failed: {e}")
            warnings.warn(f"W&B table failed ({type(e).__name__}: {e}); the results are in results.csv", stacklevel=2)
            return
        self._run(name, "sweep", config, log, summary)
