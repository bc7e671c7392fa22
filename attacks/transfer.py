"""Attack by transfer (Zhang et al. 2020, arXiv 2008.11089): craft on a surrogate the attacker holds, score on the
target, which the attacker never queries.

The surrogates an attacker of a fine-tuned student would hold (`SURROGATES`): the public teacher; a model the
attacker trains itself on the target task's labelled training split, the students' label budget (`ATTACKER_MODELS`: a
`substitute` trained from scratch, or a `probe`: the attacker's linear probe on the public self-supervised encoder of
CommonInit / paper 3, which has no classifier of its own), with the attacker's own seed (`eval.attacker_seed`), never
a victim's; and an ensemble of any of them (a list: their logits averaged, Liu et al. 2017, arXiv 1611.02770).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

from attacks.base import Attack, Eps
from attacks.errors import ConfigError, choose

SURROGATES = ("teacher", "substitute", "probe")
#: The surrogates the attacker trains (the runner plans them as training stages of these defense configs).
ATTACKER_MODELS = {"substitute": "scratch", "probe": "linear_probe"}


def surrogate_names(surrogate) -> tuple[str, ...]:
    """A surrogate as configured (a name or a list of names: an ensemble) -> its names, validated."""
    names = (surrogate,) if isinstance(surrogate, str) else tuple(surrogate or ())
    if not names:
        raise ConfigError(f"surrogate needs a name or a list of names; valid: {', '.join(SURROGATES)}")
    for name in names:
        choose("surrogate", name, SURROGATES)
    if len(set(names)) != len(names):
        raise ConfigError(f"surrogate {list(names)} names a model twice")
    return names


class Ensemble(nn.Module):
    """The mean of several models' logits (Liu et al. 2017): one surrogate made of the attacker's models."""

    def __init__(self, models: list[nn.Module]):
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(0)


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
        surrogate: which model the attacker crafts on (`SURROGATES`), or a list of them: their ensemble.
    """

    name = "transfer"
    crafted = True
    threat_model = "transfer"

    def __init__(self, eps: Eps, attack: Callable[..., Attack], surrogate: str | list[str] = "teacher"):
        self.surrogates = surrogate_names(surrogate)
        base = attack(eps=eps)
        if not isinstance(base, Attack):
            raise ConfigError(f"the inner attack must be an Attack factory; got {type(base).__name__}")
        if len(self.surrogates) > 1 and "layer" in base.arguments:
            raise ConfigError(f"{type(base).__name__} attacks a named layer of one surrogate; an ensemble "
                              f"({'+'.join(self.surrogates)}) has none: give one surrogate")  # fmt: skip
        if "early_stop" in base.arguments:
            base = base.replace(early_stop=False)
        self.base = base
        super().__init__(eps, base.norm)
        self.surrogate_name = "+".join(self.surrogates)
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
