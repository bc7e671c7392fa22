"""LightningModules: the shared classifier loop, teacher pretraining and student fine-tuning.

Defenses subclass `StudentModule` and override `training_loss` (and, where they must, `deployed_model`,
`configure_optimizers` or the `randomized` / `nondifferentiable` declarations). The loop, metrics,
optimizers, validation and model selection stay here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, ClassVar

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy

from attacks.errors import ConfigError, choose

if TYPE_CHECKING:
    from attacks.base import Attack

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("none", "cosine", "step")
MODES = ("scratch", "finetune", "freeze", "linear_probe")


class ClassifierModule(L.LightningModule):
    """Trains an `ImageClassifier` with cross-entropy; validation accuracy drives model selection.

    Args:
        model: the classifier ([0, 1] images in, logits out).
        optimizer: one of sgd, adam, adamw.
        lr: learning rate.
        momentum: SGD momentum.
        weight_decay: weight decay.
        nesterov: Nesterov momentum for SGD.
        scheduler: none, cosine (over the trainer's max_epochs) or step (x `gamma` every `step_size` epochs).
        step_size: epochs between learning-rate drops for the step scheduler (an integer >= 1 whatever the
            scheduler; a defense's training attack has its step under `train_attack`, see `AdversarialStudent`).
        gamma: learning-rate factor of the step scheduler.
        label_smoothing: cross-entropy label smoothing.
        val_attack: an attack run on the validation split; logs `val/robust_acc`.
        selection_metric: the validation metric that picks the kept checkpoint (higher is better).
    """

    #: The deployed model draws randomness at inference (needs EOT and K-draw scoring to evaluate).
    randomized: ClassVar[bool] = False
    #: The deployed model has a non-differentiable step (needs BPDA besides gradient attacks).
    nondifferentiable: ClassVar[bool] = False

    def __init__(
        self,
        model: nn.Module,
        optimizer: str = "sgd",
        lr: float = 0.05,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        nesterov: bool = False,
        scheduler: str = "cosine",
        step_size: int = 50,
        gamma: float = 0.5,
        label_smoothing: float = 0.0,
        val_attack: Attack | None = None,
        selection_metric: str = "val/acc",
    ):
        super().__init__()
        choose("optimizer", optimizer, OPTIMIZERS)
        choose("scheduler", scheduler, SCHEDULERS)
        if lr <= 0:
            raise ConfigError(f"lr must be > 0, got {lr}")
        if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
            raise ConfigError(
                f"the step scheduler's step_size must be an integer >= 1 (epochs), got {step_size!r}; a training "
                "attack's step is train_attack.step_size"
            )
        choose("selection_metric", selection_metric, ("val/acc", "val/robust_acc"))
        if selection_metric == "val/robust_acc" and val_attack is None:
            raise ConfigError("selection_metric 'val/robust_acc' needs a val_attack")
        self.save_hyperparameters(ignore=["model", "val_attack", "teacher_state"])
        # The optimizer's own settings, kept apart from `hparams`, which merges the arguments of every class in the
        # hierarchy: a defense's own `gamma` (Gen-AF's per-epoch decay) would shadow the scheduler's there.
        self.optimizer_settings = {
            "optimizer": optimizer,
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
            "scheduler": scheduler,
            "step_size": step_size,
            "gamma": gamma,
        }
        self.label_smoothing = label_smoothing
        self.model = model
        self.val_attack = val_attack
        self.selection_metric = selection_metric
        self.num_classes = int(model.num_classes)
        self.train_acc = MulticlassAccuracy(self.num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(self.num_classes, average="micro")
        self.val_robust_acc = MulticlassAccuracy(self.num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(self.num_classes, average="micro")

    # ---- what a defense overrides -------------------------------------------------------------
    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (loss, logits used for the training accuracy). Defenses override this."""
        logits = self.model(x)
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing), logits

    def deployed_model(self) -> nn.Module:
        """The model an attacker faces: [0, 1] images in, logits out (purifiers, rejectors included)."""
        return self.model

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        """The learned representation of [0, 1] images (penultimate features), e.g. for detection metrics."""
        return self.model.features(x)

    # ---- multi-stage defenses -----------------------------------------------------------------
    def load_init_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Start from an earlier stage's weights (`init_from` in a defense config), after construction.

        Parameters this module has and the earlier stage had not (a purifier, say) keep their initialization;
        weights the earlier stage had and this module has not are an error.
        """
        _, unexpected = self.load_state_dict(state, strict=False)
        if unexpected:
            raise ConfigError(f"{type(self).__name__} cannot start from a stage with weights {unexpected[:3]}...")

    def prepare_spec(self) -> dict | None:
        """What determines `prepare`'s result (its cache key), or None when the defense prepares nothing."""
        return None

    def prepare(self, datamodule: L.LightningDataModule) -> tuple[dict, dict[str, torch.Tensor]]:
        """A computation the defense needs before training (Gen-AF's sensitivity probe): (meta, tensors).

        The runner caches the result like a stage and hands it to `apply_preparation` before training.
        What matters at inference must end up in the module's state (parameters or buffers).
        """
        raise NotImplementedError

    def apply_preparation(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        """Use `prepare`'s (possibly cached) result, e.g. to choose which layers train."""

    # ---- the loop -------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.deployed_model()(x)

    def manual_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step with `automatic_optimization = False`: by default every optimizer steps on `training_loss`
        (Gen-AF's two optimizers). Override for alternating updates (a GAN's discriminator, then generator)."""
        loss, logits = self.training_loss(x, y)
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        for opt in optimizers:
            opt.zero_grad()
        self.manual_backward(loss)
        for opt in optimizers:
            opt.step()
        return loss, logits

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss, logits = self.training_loss(x, y) if self.automatic_optimization else self.manual_step(x, y)
        self.train_acc(logits.detach(), y)
        self.log("train/loss", loss.detach(), prog_bar=True, sync_dist=True)
        self.log("train/acc", self.train_acc, prog_bar=True)
        return loss

    def on_train_start(self) -> None:
        # Lightning never calls `train()` (it captures and restores each submodule's mode around validation),
        # so the modes a subclass sets in `train()` (frozen batch-norm statistics) are applied here, once.
        self.train()

    def on_train_epoch_end(self) -> None:
        if not self.automatic_optimization:
            schedulers = self.lr_schedulers()
            for s in schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []:
                s.step()

    def val_attack_model(self) -> nn.Module:
        """The model the validation attack is crafted on (scored on the deployed model)."""
        return self.deployed_model()

    def validation_step(self, batch, batch_idx):
        x, y = batch
        model = self.deployed_model()
        self.val_acc(model(x), y)
        self.log("val/acc", self.val_acc, prog_bar=True)
        if self.val_attack is not None:
            with torch.enable_grad():  # the trainer runs validation under no_grad (inference_mode=False)
                x_adv = self.val_attack(self.val_attack_model(), x, y)
            self.val_robust_acc(model(x_adv), y)
            self.log("val/robust_acc", self.val_robust_acc, prog_bar=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.test_acc(self.deployed_model()(x), y)
        self.log("test/acc", self.test_acc)

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("nothing to train: every parameter is frozen")
        h = self.optimizer_settings
        if h["optimizer"] == "sgd":
            opt = torch.optim.SGD(
                params, lr=h["lr"], momentum=h["momentum"], weight_decay=h["weight_decay"], nesterov=h["nesterov"]
            )
        elif h["optimizer"] == "adam":
            opt = torch.optim.Adam(params, lr=h["lr"], weight_decay=h["weight_decay"])
        else:
            opt = torch.optim.AdamW(params, lr=h["lr"], weight_decay=h["weight_decay"])
        if h["scheduler"] == "none":
            return opt
        if h["scheduler"] == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.trainer.max_epochs))
        else:
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=h["step_size"], gamma=h["gamma"])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}


class TeacherModule(ClassifierModule):
    """Supervised pretraining of the teacher on the source domain (the public model of the threat model)."""


def reset_parameters(module: nn.Module) -> None:
    """Re-initialize every submodule that knows how to."""
    for m in module.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()


def _matches(name: str, prefixes: Sequence[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


class StudentModule(ClassifierModule):
    """Fine-tunes a student on the target domain from the teacher, in one of paper 1's modes.

    Modes (Zhang et al. 2020, arXiv 2008.11089):
        scratch: independent training; the teacher is not used.
        finetune: all weights copied from the teacher, all trained.
        freeze: weights copied from the teacher; the layers in `frozen_layers` are frozen and the rest
            retrained (re-initialized first when `reinit_trainable`, as in the paper's code).
        linear_probe: everything but the classification head is frozen; the head is re-initialized.

    Args:
        model: a freshly built classifier with the teacher's architecture.
        teacher_state: the teacher's state dict (required unless mode is scratch).
        mode: one of scratch, finetune, freeze, linear_probe.
        frozen_layers: parameter-name prefixes, relative to the backbone (e.g. `conv_params`), for freeze.
        reinit_trainable: in freeze mode, re-initialize the layers that are trained.
        reset_head: in finetune mode, re-initialize the classification head.
        freeze_bn_stats: keep the batch-norm statistics of frozen layers fixed (eval mode).
        **kwargs: optimizer and selection arguments of `ClassifierModule`.
    """

    def __init__(
        self,
        model: nn.Module,
        teacher_state: Mapping[str, torch.Tensor] | None = None,
        mode: str = "finetune",
        frozen_layers: Sequence[str] = (),
        reinit_trainable: bool = True,
        reset_head: bool = False,
        freeze_bn_stats: bool = True,
        **kwargs,
    ):
        choose("mode", mode, MODES)
        super().__init__(model, **kwargs)
        self.mode = mode
        self.freeze_bn_stats = freeze_bn_stats
        if mode == "scratch":
            return
        if teacher_state is None:
            raise ConfigError(f"mode '{mode}' needs a teacher")
        self.model.load_state_dict(teacher_state)
        head_prefixes = [n for n, m in self.model.named_modules() if m is self.model.head]
        if mode == "finetune" and reset_head:
            reset_parameters(self.model.head)
        elif mode == "linear_probe":
            self._freeze(lambda n: not _matches(n, head_prefixes))
            reset_parameters(self.model.head)
        elif mode == "freeze":
            if not frozen_layers:
                raise ConfigError("mode 'freeze' needs frozen_layers (parameter-name prefixes of the backbone)")
            prefixes = [p if p.startswith("backbone.") else f"backbone.{p}" for p in frozen_layers]
            names = [n for n, _ in self.model.named_parameters()]
            modules = {n for n, _ in self.model.named_modules()}  # parameter-free layers (an activation) are fine
            for p in prefixes:
                if not any(_matches(n, [p]) for n in names) and p not in modules:
                    valid = sorted({n.split(".")[1] for n in names if n.startswith("backbone.")})
                    raise ConfigError(f"frozen layer '{p[9:]}' matches no parameter; valid: {', '.join(valid)}")
            self._freeze(lambda n: _matches(n, prefixes))
            if reinit_trainable:
                for m in self.model.modules():
                    own = list(m.parameters(recurse=False))
                    if own and all(q.requires_grad for q in own) and hasattr(m, "reset_parameters"):
                        m.reset_parameters()

    def _freeze(self, is_frozen) -> None:
        for n, p in self.model.named_parameters():
            if is_frozen(n):
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.freeze_bn_stats:
            for m in self.model.modules():
                own = list(m.parameters(recurse=False))
                if isinstance(m, nn.modules.batchnorm._BatchNorm) and own and not any(q.requires_grad for q in own):
                    m.eval()
        return self
