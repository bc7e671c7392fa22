"""Configs -> objects: `_target_` instantiation with one-line errors, data pairs, models, training modules."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch.nn as nn
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from attacks.errors import ConfigError
from datamodules.base import TransferDataModule
from lightning_modules.classifier import build_classifier

#: Data-config fields that do not change what a stage computes (left out of cache keys).
NON_SEMANTIC_DATA_KEYS = ("root", "download", "num_workers", "eval_batch_size")
#: Trainer fields that do not change what a stage computes.
NON_SEMANTIC_TRAINER_KEYS = ("accelerator", "enable_progress_bar", "log_every_n_steps")
TEACHER_MODULE = {"_target_": "lightning_modules.modules.TeacherModule"}


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


def teacher_module_cfg(teacher_cfg: dict) -> dict:
    return {**TEACHER_MODULE, **(teacher_cfg.get("module") or {})}


def declared(module: Any) -> frozenset[str]:
    """What a module (or its deployed model) declares about itself: a subset of {randomized, nondifferentiable}."""
    return frozenset(k for k in ("randomized", "nondifferentiable") if getattr(module, k, False))


def job_key_spec(job: dict) -> dict:
    """What a training stage's cache key is made of (besides the code and library versions; see `cache`)."""
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


def build_module(job: dict, cache, dm: TransferDataModule) -> L.LightningModule:
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
