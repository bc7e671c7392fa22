"""FGSM: one gradient-sign step (Goodfellow et al. 2015, arXiv 1412.6572); FGM under L2."""

from __future__ import annotations

from attacks.base import LOSSES, Attack, Eps, Norm
from attacks.errors import choose


class FGSM(Attack):
    """Fast gradient sign method: x' = clip(x + eps * sign(grad_x loss)); for L2, a normalized-gradient step.

    Args:
        eps: the budget.
        norm: linf (FGSM) or l2 (FGM).
        loss: ce or margin.
        eot, bpda: see `Attack` (gradient averaged over draws of a randomized model; BPDA view).
    """

    name = "fgsm"

    def __init__(self, eps: Eps, norm: Norm = "linf", loss: str = "ce", eot: int = 1, bpda: bool = False):
        super().__init__(eps, norm, eot=eot, bpda=bpda)
        choose("loss", loss, LOSSES)
        self.loss = loss

    def perturb(self, model, x, y):
        _, grad = self.loss_and_grad(model, x, y, self.loss)
        return self.project(self.step(x, grad, self.eps), x)
