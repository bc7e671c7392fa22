"""Training stages (teacher or student) and loading a finished one.

A training stage is described by its *job* (`benchmark.records.Job`: plain, JSON-able configs, the seed, the
teacher's cache key), so the same function runs in-process, in a subprocess under DDP (`python -m
benchmark.runner.stages.train job.json`, which Lightning relaunches once per extra rank), or later as a cluster job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn as nn

from benchmark.components import (
    build_datamodule,
    build_module,
    job_key_spec,
    load_checkpoint,
    pretrained_report,
)
from benchmark.records import Job, as_json
from benchmark.runner.cache import Cache, stage_key
from datamodules.base import TransferDataModule
from lightning_modules.loggers import finish_logger, lightning_logger, run_id
from lightning_modules.training import fit

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


def ensure_prepared(job: Job, module: L.LightningModule, dm: TransferDataModule, cache: Cache) -> dict | None:
    """Run (or load from the cache) the module's `prepare` step and apply it; returns its meta, or None."""
    spec = module.prepare_spec()
    if spec is None:
        return None
    key = stage_key("prep", {"stage": job.key, "spec": spec})
    meta = cache.meta("prep", key)
    if meta is None:
        L.seed_everything(job.seed, workers=True, verbose=False)
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


@torch.no_grad()
def _accuracy(model: nn.Module, dm: TransferDataModule, domain: str, split: str) -> float:
    x, y = dm.lazy_tensors(domain, split)  # read 256 images at a time, not the whole split
    model.eval()
    pred = torch.cat([model(x[torch.arange(i, min(i + 256, len(x)))]).argmax(1) for i in range(0, len(x), 256)])
    return float((pred == y).float().mean())


def run_public_job(job: Job) -> dict:
    """A public model as a stage, not trained: a checkpoint file (`checkpoint`) or timm's pretrained weights
    (`model.pretrained`). Its meta reports its accuracy on the source val split (`best_value`)."""
    cache = Cache(job.cache_dir)
    L.seed_everything(job.seed, workers=True, verbose=False)
    dm = build_datamodule(job.data)
    start = time.perf_counter()
    module = build_module(job, cache, dm)
    model_cfg = job.model
    if job.checkpoint:
        loaded = load_checkpoint(job.checkpoint, module.model)
        public = job.checkpoint["path"]
    else:  # timm's weights (loaded by `build_module`), from a local file or timm's hub
        loaded = pretrained_report(model_cfg, dm, module.model)
        public = loaded.path if loaded else f"timm:{model_cfg['backbone']}"
    meta = {
        "fit_seconds": time.perf_counter() - start,
        "selection_metric": "val/acc (public model, not trained)",
        "best_value": _accuracy(module.model, dm, job.domain, "val"),
        "best_epoch": None,
        "val_history": [],
        "epochs": 0,
        "world_size": 1,
        "global_rank": 0,
        "kind": job.kind,
        "name": job.name,
        "key": job.key,
        "public": public,
        "checkpoint_report": loaded.line() if loaded else None,
        "randomized": False,
        "nondifferentiable": False,
        "trainable_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "prep": None,
    }
    cache.put(job.kind, job.key, meta, {"state": {k: v.detach().cpu() for k, v in module.state_dict().items()}})
    return meta


def run_train_job(job: Job, progress: bool = True) -> dict:
    """Train one teacher or student and store it in the cache (on global rank 0). Returns the meta."""
    if job.public:
        return run_public_job(job)
    cache = Cache(job.cache_dir)
    L.seed_everything(job.seed, workers=True, verbose=False)
    dm = build_datamodule(job.data)
    module = build_module(job, cache, dm)
    prep = ensure_prepared(job, module, dm, cache)
    trainer_kwargs = {k: v for k, v in job.trainer.items() if v is not None}
    name, rid = f"{job.kind}-{job.name}-seed{job.seed}", run_id(job.kind, job.key)
    logger = lightning_logger(job.wandb, name, job_key_spec(job), run_id=rid)
    try:
        info = fit(module, dm.domain(job.domain), trainer_kwargs, logger=logger, progress=progress)
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
        "kind": job.kind,
        "name": job.name,
        "key": job.key,
        "rank_param_checksums": checksums,
        "randomized": bool(getattr(module, "randomized", False)),
        "nondifferentiable": bool(getattr(module, "nondifferentiable", False)),
        "trainable_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
        "prep": prep,
    }
    if trainer.global_rank == 0:
        state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        cache.put(job.kind, job.key, meta, {"state": state})
    return meta


def train_stage(job: Job, progress: bool = True) -> dict:
    """Run a training job unless its result is cached; under DDP (devices > 1) in a subprocess."""
    cache = Cache(job.cache_dir)
    if (meta := cache.meta(job.kind, job.key)) is not None:
        return {**meta, "cached": True}
    devices = job.trainer.get("devices", 1)
    if job.public:
        meta = run_public_job(job)
    elif isinstance(devices, int) and devices > 1 or job.trainer.get("num_nodes", 1) > 1:
        dm = build_datamodule(job.data)  # the preparation runs once, here; the ranks find it cached
        ensure_prepared(job, build_module(job, cache, dm), dm, cache)

        path = cache.root / "jobs" / f"{job.kind}-{job.key}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(job, default=as_json))
        # A fresh launcher environment: variables left by an earlier in-process fit would make the job believe
        # that it is already one rank of a running group.
        env = {k: v for k, v in os.environ.items() if k not in DIST_ENV and not k.startswith("PL_")}
        subprocess.run([sys.executable, "-m", "benchmark.runner.stages.train", str(path)], check=True, env=env)
        meta = cache.meta(job.kind, job.key)
        if meta is None:
            raise RuntimeError(f"the DDP training job {path} finished without writing its result")
    else:
        meta = run_train_job(job, progress=progress)
    return {**meta, "cached": False}


def load_trained(job: Job) -> L.LightningModule:
    """Rebuild a finished stage's module and load its weights (eval mode, CPU)."""
    cache = Cache(job.cache_dir)
    module = build_module(job, cache, build_datamodule(job.data))
    module.load_state_dict(cache.tensors(job.kind, job.key, "state"))
    return module.eval()


if __name__ == "__main__":  # a training job in its own process (DDP ranks relaunch this command)
    run_train_job(Job.from_json(json.loads(Path(sys.argv[1]).read_text())), progress=False)
