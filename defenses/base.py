"""The base of the defenses that train on adversarial examples: training attack, validation attack, selection."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch

from attacks.base import Attack, Eps, Norm
from attacks.errors import ConfigError, choose
from attacks.pgd import PGD
from lightning_modules.modules import StudentModule


class FrozenRandomness:
    """Mixin of a randomized deployed model (`randomized`: the runner scores it over fresh draws): inside
    `frozen(seed)` every forward pass draws the same randomness, from `seeded()` (the frozen-randomness check)."""

    randomized: ClassVar[bool] = True
    _seed: int | None = None

    def seeded(self) -> torch.Generator | None:
        """A CPU generator from the frozen seed (a fresh one per call: every pass replays it); None: fresh draws."""
        return None if self._seed is None else torch.Generator().manual_seed(self._seed)

    @contextlib.contextmanager
    def frozen(self, seed: int = 0):
        self._seed = seed
        try:
            yield self
        finally:
            self._seed = None


@dataclass(frozen=True)
class TrainAttack:
    """The settings of a defense's training attack: the `train_attack` argument of every `AdversarialStudent`.

    Args:
        eps: the training budget (a number or a fraction string such as "8/255").
        norm: linf or l2.
        steps: the attack's steps.
        step_size: its step (None: the attack's default, 2.5 * eps / steps for PGD); at most 2 * eps, the ball's
            diameter (a larger step only jumps between the ball's corners).
        random_start: start from a random point of the ball.
    """

    eps: Eps = 8 / 255
    norm: Norm = "linf"
    steps: int = 10
    step_size: Eps | None = None
    random_start: bool = True


#: The keys of `train_attack`.
TRAIN_ATTACK_KEYS = tuple(f.name for f in fields(TrainAttack))


class AdversarialStudent(StudentModule):
    """A student fine-tuned on adversarial examples: `self.attack` crafts them, the kept checkpoint is the one with
    the best robust accuracy on the validation split (it guards against robust overfitting, Rice et al. 2020).

    A defense subclasses this, overrides `training_loss` (using `self.attack`), and, where its paper says so,
    `train_attack_defaults`, `training_attack` or `validation_attack`. Both attacks are built before
    `StudentModule.__init__`, from the arguments alone (the module's attributes do not exist yet).

    Args:
        model: see `StudentModule`.
        train_attack: the training attack's settings, a mapping with the keys of `TrainAttack`; a key left out
            takes the defense's `train_attack_defaults`, then `TrainAttack`'s default.
        **kwargs: see `StudentModule` (its `step_size` is the step scheduler's). A `val_attack` or
            `selection_metric` given here replaces the default: `validation_attack(...)` and val/robust_acc
            (val/acc when there is no validation attack).
    """

    #: This defense's defaults for `train_attack`, over `TrainAttack`'s (its paper's budget, say).
    train_attack_defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, model, train_attack: Mapping[str, Any] | None = None, **kwargs):
        settings = self.train_attack_settings(train_attack, kwargs)
        attack = self.training_attack(settings)  # validates the values
        if settings.step_size is not None and getattr(attack, "step_size", 0) > 2 * attack.eps > 0:
            raise ConfigError(
                f"{type(self).__name__}: train_attack.step_size {settings.step_size} exceeds the eps ball's "
                f"diameter 2 * {settings.eps}"
            )
        kwargs.setdefault("val_attack", self.validation_attack(attack))
        kwargs.setdefault("selection_metric", "val/acc" if kwargs["val_attack"] is None else "val/robust_acc")
        super().__init__(model, **kwargs)
        self.attack = attack

    @classmethod
    def train_attack_settings(cls, given: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> TrainAttack:
        """`TrainAttack` from the given keys over the defense's defaults; a key placed beside `train_attack`
        rather than under it (`eps: 8/255` at the module's top level) or an unknown key is a one-line error."""
        for key in TRAIN_ATTACK_KEYS:
            if key in kwargs and key != "step_size":  # step_size at the top level is the scheduler's
                raise ConfigError(f"{cls.__name__}: {key} is a setting of the training attack: give train_attack.{key}")
        given = dict(given or {})
        for key in given:
            choose(f"{cls.__name__} train_attack key", key, TRAIN_ATTACK_KEYS)
        return TrainAttack(**{**cls.train_attack_defaults, **given})

    def training_attack(self, settings: TrainAttack) -> Attack:
        """The attack that crafts the training examples: PGD with the full budget (no early stopping, which
        would stop at the first misclassified iterate; training wants the strongest example)."""
        s = settings
        return PGD(s.eps, s.norm, steps=s.steps, step_size=s.step_size, random_start=s.random_start, early_stop=False)

    def validation_attack(self, attack: Attack) -> Attack | None:
        """The attack of the validation split, given the training attack: by default the same attack (a separate
        instance, with its own pass counts), i.e. PGD at the training budget without early stopping."""
        return attack.replace()
