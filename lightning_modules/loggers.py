"""The Weights & Biases logger of a training stage, built from a plain dict (the `logger` config plus the sweep's
`group`), and the stable W&B run ids shared with the runner's evaluation and sweep runs.

It lives on the training floor so that a training stage needs nothing above it: the runner's W&B tracking
(`benchmark.tracking.runs`) sits on top, imports this, and nothing below imports the tracking.

A training run's id is derived from its stage's cache key (`run_id(kind, key)`), and `wandb.init(resume="allow")`
continues that run online: a rerun that trains the stage again (its entry removed, say) logs into the same run,
not a second one; offline, it replaces the earlier folder of that id (`replace_offline`), so `wandb sync` uploads
the run once. A stage found in the cache is not trained, so it logs nothing.

Tracking never stops a benchmark: a W&B failure is a warning and the stage trains untracked.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from pathlib import Path


def run_id(kind: str, *parts) -> str:
    """A W&B run id that is the same whenever `parts` are: `<kind>-<20 hex digits>`."""
    digest = hashlib.sha1("\x1f".join(map(str, parts)).encode()).hexdigest()[:20]
    return f"{kind}-{digest}"


def replace_offline(root, rid: str) -> list[Path]:
    """Remove the earlier offline folders of run `rid` under `root` (a rerun replaces its run: `wandb sync` then
    uploads it once); returns what was removed."""
    import shutil

    gone = sorted((Path(root) / "wandb").glob(f"offline-run-*-{rid}"))
    for path in gone:
        shutil.rmtree(path, ignore_errors=True)
    return gone


def init_kwargs(
    cfg: dict, name: str, job_type: str, config: dict, tags: Sequence[str] = (), run_id: str | None = None
) -> dict:
    """The arguments of `wandb.init` for a run of the sweep `cfg["group"]` (`cfg`: the `logger` config)."""
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


def lightning_logger(cfg: dict | None, name: str, config: dict, run_id: str | None = None):
    """A Lightning `WandbLogger` for a training stage (job type `train`, id `run_id`), or None when tracking is off
    or W&B fails."""
    if not cfg or cfg.get("mode") == "disabled":
        return None
    try:
        from lightning.pytorch.loggers import WandbLogger

        if run_id and cfg.get("mode") == "offline":
            replace_offline(cfg["dir"], run_id)
        kwargs = init_kwargs(cfg, name, "train", config, run_id=run_id)
        logger = WandbLogger(save_dir=kwargs.pop("dir"), log_model=False, **kwargs)
        logger.experiment  # noqa: B018 - start the run now, so that a W&B failure surfaces here, not mid-training
        return logger
    except Exception as e:  # noqa: BLE001 - tracking must never stop a benchmark
        warnings.warn(f"W&B logger unavailable ({type(e).__name__}: {e}); training continues untracked", stacklevel=2)
        return None


def finish_logger(logger) -> None:
    """End the training run that `lightning_logger` started (nothing when it returned None)."""
    if logger is None:
        return
    try:
        import wandb

        if wandb.run is not None:
            wandb.run.finish()
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"W&B finish failed ({type(e).__name__}: {e})", stacklevel=2)
