"""The base of the defenses that train on adversarial examples: training attack, validation attack, selection."""

from __future__ import annotations

import contextlib
from typing import ClassVar

import torch

from attacks.base import Attack, Eps, Norm
from attacks.errors import ConfigError
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


class AdversarialStudent(StudentModule):
    """A student fine-tuned on adversarial examples: `self.attack` crafts them, the kept checkpoint is the one with
    the best robust accuracy on the validation split (it guards against robust overfitting, Rice et al. 2020).

    A defense subclasses this, overrides `training_loss` (using `self.attack`), and, where its paper says so,
    `training_attack` or `validation_attack`. Both are built before `StudentModule.__init__`, from the arguments
    alone (the module's attributes do not exist yet).

    Args:
        model: see `StudentModule`.
        eps: the training budget (a number or a fraction string such as "8/255").
        norm: linf or l2.
        steps: the training attack's steps.
        step_size: its step (None: the attack's default, 2.5 * eps / steps for PGD); at most 2 * eps, the ball's
            diameter (a larger step only jumps between the ball's corners: most likely a scheduler's step meant
            for `lr_step_size`).
        random_start: start from a random point of the ball.
        **kwargs: see `StudentModule`. A `val_attack` or `selection_metric` given here replaces the default:
            `validation_attack(...)` and val/robust_acc (val/acc when there is no validation attack).
    """

    def __init__(
        self,
        model,
        eps: Eps = 8 / 255,
        norm: Norm = "linf",
        steps: int = 10,
        step_size: Eps | None = None,
        random_start: bool = True,
        **kwargs,
    ):
        attack = self.training_attack(eps, norm, steps, step_size, random_start)  # validates the values
        if step_size is not None and getattr(attack, "step_size", 0) > 2 * attack.eps > 0:  # a given step only
            raise ConfigError(
                f"{type(self).__name__}: the attack's step_size {step_size} exceeds the eps ball's diameter "
                f"2 * {eps}; the step scheduler's step_size is called lr_step_size here"
            )
        kwargs.setdefault("val_attack", self.validation_attack(attack))
        kwargs.setdefault("selection_metric", "val/acc" if kwargs["val_attack"] is None else "val/robust_acc")
        super().__init__(model, **kwargs)
        self.attack = attack

    def training_attack(self, eps, norm, steps, step_size, random_start) -> Attack:
        """The attack that crafts the training examples: PGD with the full budget (no early stopping, which
        would stop at the first misclassified iterate; training wants the strongest example)."""
        return PGD(eps, norm, steps=steps, step_size=step_size, random_start=random_start, early_stop=False)

    def validation_attack(self, attack: Attack) -> Attack | None:
        """The attack of the validation split, given the training attack: by default the same attack (a separate
        instance, with its own pass counts), i.e. PGD at the training budget without early stopping."""
        return attack.replace()
