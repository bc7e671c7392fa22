"""The stages of a benchmark: train (teacher or student), craft transfer examples, attack, score.

A training stage is described by a plain, JSON-serializable *job* (configs, seed, the teacher's cache
key), so the same function runs in-process, in a subprocess under DDP (`python -m benchmark.stages
job.json`, which Lightning relaunches once per extra rank), or later as a cluster job.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn as nn
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from attacks.base import Attack, attack_mode, check_adversarial
from attacks.errors import ConfigError
from benchmark.cache import Cache, stage_key
from benchmark.tracking import finish_logger, lightning_logger
from datamodules.base import TransferDataModule
from lightning_modules.classifier import build_classifier
from lightning_modules.training import fit

#: Data-config fields that do not change what a stage computes (left out of cache keys).
NON_SEMANTIC_DATA_KEYS = ("root", "download", "num_workers", "eval_batch_size")
#: Process-group variables of torch.distributed and Lightning.
DIST_ENV = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "NODE_RANK",
    "LOCAL_RANK",
    "GLOBAL_RANK",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
)
#: Trainer fields that do not change what a stage computes.
NON_SEMANTIC_TRAINER_KEYS = ("accelerator", "enable_progress_bar", "log_every_n_steps")


def build(cfg: dict, **runtime: Any) -> Any:
    """Instantiate a `_target_` config, passing `runtime` objects (models, state dicts) as they are.

    The user's errors (bad names, bad values, unknown arguments) are raised as one-line `ConfigError`s.
    """
    target = cfg.get("_target_", "?")
    try:
        factory = instantiate(cfg, _partial_=True)  # runtime objects must not go through OmegaConf
        return factory(**runtime)
    except ConfigError:
        raise
    except InstantiationException as e:
        cause = e.__cause__
        if isinstance(cause, ConfigError):
            raise cause from None
        raise ConfigError(f"{target}: {cause or str(e).splitlines()[0]}") from None
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{target}: {e}") from None


def build_datamodule(data_cfg: dict) -> TransferDataModule:
    dm = build(data_cfg)
    if not isinstance(dm, TransferDataModule):
        raise ConfigError(f"data target {data_cfg.get('_target_')} is not a TransferDataModule")
    return dm


def build_model(model_cfg: dict, dm: TransferDataModule) -> nn.Module:
    return build_classifier(
        model_cfg["backbone"], dm.num_classes, dm.image_shape[0], dm.mean, dm.std, **(model_cfg.get("kwargs") or {})
    )


def semantic(cfg: dict, drop: tuple[str, ...]) -> dict:
    return {k: v for k, v in cfg.items() if k not in drop}


def job_key_spec(job: dict) -> dict:
    """What a training stage's cache key is made of."""
    return {
        "kind": job["kind"],
        "data": semantic(job["data"], NON_SEMANTIC_DATA_KEYS),
        "data_fingerprint": job["data_fingerprint"],
        "domain": job["domain"],
        "model": job["model"],
        "module": job["module"],
        "trainer": semantic(job["trainer"], NON_SEMANTIC_TRAINER_KEYS),
        "seed": job["seed"],
        "teacher_key": job.get("teacher_key"),
        "init_key": job.get("init_key"),
    }


def build_module(job: dict, cache: Cache, dm: TransferDataModule) -> L.LightningModule:
    """The LightningModule of a training job (before training, or to load a finished one into)."""
    model = build_model(job["model"], dm)
    kwargs: dict[str, Any] = {"model": model}
    if job.get("teacher_key"):
        teacher = cache.tensors("teacher", job["teacher_key"], "state")
        kwargs["teacher_state"] = {k[len("model.") :]: v for k, v in teacher.items() if k.startswith("model.")}
    module = build(job["module"], **kwargs)
    if job.get("init_key"):  # a later stage of a multi-stage defense starts from the earlier stage's weights
        module.load_init_state(cache.tensors("student", job["init_key"], "state"))
    return module


def ensure_prepared(job: dict, module: L.LightningModule, dm: TransferDataModule, cache: Cache) -> dict | None:
    """Run (or load from the cache) the module's `prepare` step and apply it; returns its meta, or None."""
    spec = module.prepare_spec()
    if spec is None:
        return None
    key = stage_key("prep", {"stage": job["key"], "spec": spec})
    meta = cache.meta("prep", key)
    if meta is None:
        L.seed_everything(job["seed"], workers=True, verbose=False)
        start = time.perf_counter()
        meta, tensors = module.prepare(dm)
        meta = {**meta, "seconds": time.perf_counter() - start, "key": key}
        cache.put("prep", key, meta, {"result": tensors})
        meta["cached"] = False
    else:
        tensors = cache.tensors("prep", key, "result")
        meta["cached"] = True
    module.apply_preparation(meta, tensors)
    return meta


def _param_checksum(module: nn.Module) -> float:
    return float(sum(p.detach().double().sum() for p in module.parameters()))


def run_train_job(job: dict, progress: bool = True) -> dict:
    """Train one teacher or student and store it in the cache (on global rank 0). Returns the meta."""
    cache = Cache(job["cache_dir"])
    L.seed_everything(job["seed"], workers=True, verbose=False)
    dm = build_datamodule(job["data"])
    module = build_module(job, cache, dm)
    prep = ensure_prepared(job, module, dm, cache)
    trainer_kwargs = {k: v for k, v in job["trainer"].items() if v is not None}
    logger = lightning_logger(job.get("wandb"), f"{job['kind']}-{job['name']}-seed{job['seed']}", job_key_spec(job))
    try:
        info = fit(module, dm.domain(job["domain"]), trainer_kwargs, logger=logger, progress=progress)
    finally:
        finish_logger(logger)
    trainer = info.pop("trainer")
    checksum = _param_checksum(module)
    checksums = [checksum]
    if trainer.world_size > 1:
        checksums = [None] * trainer.world_size
        torch.distributed.all_gather_object(checksums, checksum)
    meta = {
        **info,
        "kind": job["kind"],
        "name": job["name"],
        "key": job["key"],
        "rank_param_checksums": checksums,
        "randomized": bool(getattr(module, "randomized", False)),
        "nondifferentiable": bool(getattr(module, "nondifferentiable", False)),
        "trainable_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "prep": prep,
    }
    if trainer.global_rank == 0:
        state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        cache.put(job["kind"], job["key"], meta, {"state": state})
    return meta


def train_stage(job: dict, progress: bool = True) -> dict:
    """Run a training job unless its result is cached; under DDP (devices > 1) in a subprocess."""
    cache = Cache(job["cache_dir"])
    if (meta := cache.meta(job["kind"], job["key"])) is not None:
        return {**meta, "cached": True}
    devices = job["trainer"].get("devices", 1)
    if isinstance(devices, int) and devices > 1 or job["trainer"].get("num_nodes", 1) > 1:
        import subprocess

        dm = build_datamodule(job["data"])  # the preparation runs once, here; the ranks find it cached
        ensure_prepared(job, build_module(job, cache, dm), dm, cache)

        path = cache.root / "jobs" / f"{job['kind']}-{job['key']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(job))
        # A fresh launcher environment: variables left by an earlier in-process fit would make the job believe
        # that it is already one rank of a running group.
        env = {k: v for k, v in os.environ.items() if k not in DIST_ENV and not k.startswith("PL_")}
        subprocess.run([sys.executable, "-m", "benchmark.stages", str(path)], check=True, env=env)
        meta = cache.meta(job["kind"], job["key"])
        if meta is None:
            raise RuntimeError(f"the DDP training job {path} finished without writing its result")
    else:
        meta = run_train_job(job, progress=progress)
    return {**meta, "cached": False}


def load_trained(job: dict) -> L.LightningModule:
    """Rebuild a finished stage's module and load its weights (eval mode, CPU)."""
    cache = Cache(job["cache_dir"])
    module = build_module(job, cache, build_datamodule(job["data"]))
    module.load_state_dict(cache.tensors(job["kind"], job["key"], "state"))
    return module.eval()


# ---- evaluation --------------------------------------------------------------------------------


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Predicted labels of `model` (eval mode, restored after) on x, in batches."""
    with attack_mode(model):
        return torch.cat(
            [model(x[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
        )


def run_attack(
    attack: Attack,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    device: torch.device,
    only: torch.Tensor | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, dict]:
    """Craft x_adv on `model` for the examples in `only` (all if None; the others keep x' = x).

    Every batch is checked against the threat model before anything is scored.
    """
    x_adv = x.clone()
    idx = torch.arange(len(x)) if only is None else only.nonzero().flatten()
    attack.forward_passes = attack.backward_passes = 0
    start = time.perf_counter()
    for i in range(0, len(idx), batch_size):
        b = idx[i : i + batch_size]
        xb, yb = x[b].to(device), y[b].to(device)
        xb_adv = attack(model, xb, yb)
        check_adversarial(xb, xb_adv, attack.norm, attack.eps)
        x_adv[b] = xb_adv.cpu()
        if on_batch:
            on_batch(len(b))
    cost = {
        "attack_seconds": time.perf_counter() - start,
        "forward_passes": attack.forward_passes,
        "backward_passes": attack.backward_passes,
        "n_attacked": len(idx),
    }
    return x_adv, cost


def whitebox(attack, model, x, y, batch_size, device, on_batch=None) -> tuple[torch.Tensor, dict]:
    """A white-box attack on the clean-correct examples (the others keep x' = x): (x_adv, cost)."""
    clean_correct = predict(model, x, batch_size, device) == y
    return run_attack(attack, model, x, y, batch_size, device, only=clean_correct, on_batch=on_batch)


def score_flags(model, x, x_adv, y, batch_size, device) -> dict:
    """Per-example flags of adversarial examples on `model`: correct when clean, correct when attacked."""
    return {
        "clean_correct": predict(model, x, batch_size, device) == y,
        "adv_correct": predict(model, x_adv, batch_size, device) == y,
    }


if __name__ == "__main__":  # a training job in its own process (DDP ranks relaunch this command)
    run_train_job(json.loads(Path(sys.argv[1]).read_text()), progress=False)
