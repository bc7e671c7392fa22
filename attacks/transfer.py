"""Attack by transfer (Zhang et al. 2020, arXiv 2008.11089): craft on a surrogate, score on the target."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from attacks.base import Attack, Eps
from attacks.errors import ConfigError, choose

SURROGATES = ("teacher",)


class TransferAttack(Attack):
    """Any white-box attack crafted on a surrogate model (the public teacher) and scored on the student.

    The attacker never queries the student. Scoring follows paper 1: an example counts as attacked only
    if the student classifies it correctly when clean; accuracy is over all examples. The examples are
    crafted with the inner attack's full budget (early stopping off), since stopping as soon as the
    surrogate is fooled would weaken transfer. Crafted examples depend only on the surrogate, so the
    runner crafts them once per teacher and scores every student on them.

    Args:
        eps: the budget, passed to the inner attack.
        attack: a factory of the inner white-box attack, called with `eps` (a Hydra `_partial_`).
        surrogate: which model the attacker holds; `teacher` is the public pretrained model.
    """

    name = "transfer"
    crafted = True
    threat_model = "transfer"

    def __init__(self, eps: Eps, attack: Callable[..., Attack], surrogate: str = "teacher"):
        choose("surrogate", surrogate, SURROGATES)
        base = attack(eps=eps)
        if not isinstance(base, Attack):
            raise ConfigError(f"the inner attack must be an Attack factory; got {type(base).__name__}")
        if "early_stop" in base.arguments:
            base = base.replace(early_stop=False)
        self.base = base
        super().__init__(eps, base.norm)
        self.surrogate_name = surrogate
        self.surrogate: nn.Module | None = None

    def derived_config(self) -> dict:
        # The inner attack as it runs (eps given, early stopping off), which its factory alone does not show.
        return {"attack": self.base.config()}

    @property
    def label(self) -> str:
        return f"transfer_{self.base.label}"

    def craft(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.surrogate is None:
            raise RuntimeError("TransferAttack.surrogate is not set: assign the surrogate model first")
        x_adv = self.base(self.surrogate, x, y)
        self.forward_passes, self.backward_passes = self.base.forward_passes, self.base.backward_passes
        return x_adv

    def perturb(self, model, x, y):
        return self.craft(x, y)
