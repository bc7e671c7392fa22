"""Configs -> objects: `_target_` instantiation with one-line errors, data pairs, models, training modules,
public checkpoints and pretrained weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import timm
import torch.nn as nn
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from attacks.errors import ConfigError, choose
from benchmark.numerics import apply_layout
from benchmark.records import Job
from datamodules.base import TransferDataModule
from lightning_modules.checkpoints import HEADS, file_digest, load_into, rule_of
from lightning_modules.checkpoints import pretrained_report as timm_file_report
from lightning_modules.classifier import ImageClassifier, build_classifier

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
    """The classifier of a model config; `pretrained: true` loads timm's pretrained weights of `backbone` (where
    there is internet) and normalizes with the statistics those weights were trained with, not the data's."""
    kwargs = model_cfg.get("kwargs") or {}
    if not model_cfg.get("pretrained"):
        if model_cfg.get("pretrained_file"):
            raise ConfigError("model.pretrained_file: set model.pretrained=true as well (timm loads the file)")
        return build_classifier(model_cfg["backbone"], dm.num_classes, dm.image_shape[0], dm.mean, dm.std, **kwargs)
    file = model_cfg.get("pretrained_file")
    return pretrained_classifier(model_cfg["backbone"], dm.num_classes, dm.image_shape[0], file=file, **kwargs)


def model_skeleton(model_cfg: dict, dm: TransferDataModule) -> nn.Module:
    """The classifier of a model config without its weights, for the config check (`benchmark.runner.config.validate`,
    under `torch.device("meta")`): a pretrained model is its architecture, and whether timm lists weights for it
    (they are downloaded by the stage that loads them)."""
    kwargs = model_cfg.get("kwargs") or {}
    model = build_classifier(model_cfg["backbone"], dm.num_classes, dm.image_shape[0], dm.mean, dm.std, **kwargs)
    if model_cfg.get("pretrained_file") and not model_cfg.get("pretrained"):
        raise ConfigError("model.pretrained_file: set model.pretrained=true as well (timm loads the file)")
    if model_cfg.get("pretrained") and model_cfg.get("pretrained_file"):
        pretrained_file(model_cfg["pretrained_file"])  # the file must be there; timm reads it in the stage
    elif model_cfg.get("pretrained") and not timm.is_model_pretrained(model_cfg["backbone"]):
        raise ConfigError(
            f"model.pretrained=true: no pretrained weights for '{model_cfg['backbone']}' (timm lists none); "
            "give a local file as teacher.checkpoint=PATH"
        )
    return model


def pretrained_file(file: str) -> Path:
    """The local file of timm's pretrained weights (`model.pretrained_file`), or one line."""
    p = Path(file).expanduser()
    if not p.is_file():
        raise ConfigError(
            f"model.pretrained_file: no file at '{file}' (timm's weights for the backbone, saved locally)"
        )
    return p.resolve()


#: The model config's keys for timm's pretrained weights (`model.pretrained`, `model.pretrained_file`).
PRETRAINED_KEYS = ("pretrained", "pretrained_file")


def model_key(model_cfg: dict) -> dict:
    """The model config as a cache key: a local pretrained file by the content of its tensors (not its path, name or
    bytes); the pretrained keys left out while they are off, so that a config with them keeps its keys."""
    key = {k: v for k, v in model_cfg.items() if k not in PRETRAINED_KEYS or v}
    if key.get("pretrained_file"):
        key["pretrained_file"] = file_digest(str(pretrained_file(key["pretrained_file"])), "model.pretrained_file")
    return key


def pretrained_report(model_cfg: dict, dm: TransferDataModule, model: nn.Module | None = None):
    """The `LoadReport` of timm's weights from `model.pretrained_file` into `model` (default: the classifier built as
    its stage builds it), or None without a file."""
    if not (model_cfg.get("pretrained") and model_cfg.get("pretrained_file")):
        return None
    model = build_model(model_cfg, dm) if model is None else model
    return timm_file_report(model, str(pretrained_file(model_cfg["pretrained_file"])))


def pretrained_classifier(backbone: str, num_classes: int, in_chans: int, file: str | None = None, **kwargs):
    """timm's pretrained `backbone` with a new `num_classes` head, behind the normalization of its weights; from
    the local `file` when given (timm's `pretrained_cfg_overlay=dict(file=...)`, read weights-only by timm)."""
    build_classifier(backbone, num_classes, in_chans, (0.0,), (1.0,), **kwargs)  # a bad name: the usual one line
    if file:
        kwargs["pretrained_cfg_overlay"] = {"file": str(pretrained_file(file))}
    try:
        net = timm.create_model(backbone, pretrained=True, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except Exception as e:  # no weights for the name, no internet, a hub error: one line, and the local way out
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise ConfigError(
            f"model.pretrained=true: no pretrained weights for '{backbone}' ({type(e).__name__}: {first}); "
            "without internet, give a local file: model.pretrained_file=PATH (timm's weights) or "
            "teacher.checkpoint=PATH"
        ) from None
    cfg = getattr(net, "pretrained_cfg", None) or {}
    mean, std = list(cfg.get("mean", (0.5,))), list(cfg.get("std", (0.5,)))
    if len(mean) != in_chans:  # grey images into an RGB model (timm sums the first conv's weights): grey stats
        mean, std = [sum(mean) / len(mean)] * in_chans, [sum(std) / len(std)] * in_chans
    return ImageClassifier(net, mean, std)


def checkpoint_spec(path: str, where: str = "teacher.checkpoint", fmt: str = "auto", head: str = "auto") -> dict:
    """A checkpoint file as a stage input: its absolute path, the format its keys are read in and what becomes of
    its head (`lightning_modules.checkpoints`). The planner adds `digest`, the content of the tensors it loads: the
    cache key (`checkpoint_key`)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{where}: no file at '{path}' (give the path of a state-dict file saved with torch.save)")
    rule_of(fmt)  # a bad format: one line, before any work
    choose(f"{where}_head", head, HEADS)
    return {"path": str(p.resolve()), "where": where, "format": fmt, "head": head}


def load_checkpoint(spec: dict, model: nn.Module):
    """Load a checkpoint file into an `ImageClassifier` (`weights_only=True`: no code is run from the file) in the
    formats people download (`lightning_modules.checkpoints`); returns its `LoadReport` (`.line()`). A spec with a
    `digest` (planned) must load the same tensors: a file changed since the plan stops in one line."""
    where = spec.get("where", "teacher.checkpoint")
    report = load_into(model, spec["path"], spec.get("format", "auto"), where, spec.get("head", "auto"))
    if spec.get("digest") and report.digest != spec["digest"]:
        raise ConfigError(
            f"{where}: '{spec['path']}' holds other tensors than when the run was planned (the file changed): run "
            "the command again (the plan, its cache keys and its results folder follow the new content)"
        )
    return report


def checkpoint_key(spec: dict) -> str:
    """The content of the tensors a checkpoint puts into the model (format mapping and head choice applied): not the
    file's name, bytes on disk, or the spelling of its format."""
    return spec["digest"]


def semantic(cfg: dict, drop: tuple[str, ...]) -> dict:
    return {k: v for k, v in cfg.items() if k not in drop}


def teacher_module_cfg(teacher_cfg: dict) -> dict:
    return {**TEACHER_MODULE, **(teacher_cfg.get("module") or {})}


def declared(module: Any) -> frozenset[str]:
    """What a module (or its deployed model) declares about itself: a subset of {randomized, nondifferentiable}."""
    return frozenset(k for k in ("randomized", "nondifferentiable") if getattr(module, k, False))


def job_key_spec(job: Job) -> dict:
    """What a training stage's cache key is made of (besides the code and library versions; see `cache`)."""
    return {
        "kind": job.kind,
        "data": semantic(job.data, NON_SEMANTIC_DATA_KEYS),
        "data_fingerprint": job.data_fingerprint,
        "domain": job.domain,
        "model": model_key(job.model),
        "module": job.module,
        "trainer": semantic(job.trainer, NON_SEMANTIC_TRAINER_KEYS),
        "seed": job.seed,
        "teacher_key": job.teacher_key,
        "init_key": job.init_key,
        # a public model instead of training: the file's hash (not its path), or timm's weights
        **({"checkpoint": checkpoint_key(job.checkpoint)} if job.checkpoint else {}),
        **({"init_kind": job.init_kind} if job.init_kind else {}),
        **({"numerics": job.numerics} if job.numerics.get("channels_last") else {}),
    }


def build_module(job: Job, cache, dm: TransferDataModule) -> L.LightningModule:
    """The LightningModule of a training job (before training, or to load a finished one into)."""
    model = build_model(job.model, dm)
    kwargs: dict[str, Any] = {"model": model}
    if job.teacher_key:
        teacher = cache.tensors("teacher", job.teacher_key, "state")
        kwargs["teacher_state"] = {k[len("model.") :]: v for k, v in teacher.items() if k.startswith("model.")}
    module = build(job.module, **kwargs)
    if job.init_key:
        if job.init_kind == "teacher":  # CommonInit: start from the common pre-trained model's classifier
            state = cache.tensors("teacher", job.init_key, "state")
            module.load_init_state({k: v for k, v in state.items() if k.startswith("model.")})
        else:  # a later stage of a multi-stage defense starts from the earlier stage's weights
            module.load_init_state(cache.tensors("student", job.init_key, "state"))
    return apply_layout(module, job.numerics)
