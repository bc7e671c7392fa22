"""The attack contract and the checks every adversarial example passes before it is scored.

An attack is built from its hyper-parameters and called as `attack(model, x, y) -> x_adv`:
- `model` takes float images in [0, 1] (NCHW) and returns logits; it is attacked in eval mode, and its
  train/eval mode (per submodule) and its parameters' `requires_grad` flags are restored afterwards;
- no gradient is left on the model's parameters (they do not require grad during the attack);
- the device is the inputs' device;
- `x_adv` is in [0, 1] and inside the epsilon ball. `check_adversarial` verifies this before scoring,
  and a violation raises `AttackConstraintError`: it is an error, never a number.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from fractions import Fraction
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from attacks.errors import ConfigError, choose

NORMS = ("linf", "l2")
LOSSES = ("ce", "margin")


class AttackConstraintError(RuntimeError):
    """An adversarial example left the threat model (epsilon ball, [0, 1] box) or is not finite."""


def parse_eps(value) -> float:
    """An epsilon from a number or a fraction string such as "8/255"; must be finite and >= 0."""
    try:
        eps = float(Fraction(value.replace(" ", ""))) if isinstance(value, str) else float(value)
    except (ValueError, ZeroDivisionError, TypeError):  # TypeError: e.g. `eps: null` or a list in the config
        raise ConfigError(f"epsilon '{value}' is not a number; write e.g. 0.5 or \"8/255\"") from None
    if not math.isfinite(eps) or eps < 0:
        raise ConfigError(f"epsilon must be a finite number >= 0, got {value}")
    return eps


def eps_label(eps: float, norm: str) -> str:
    """Short label used in metric names: L-inf in 1/255 units (8/255 -> '8'), L2 as is (0.5 -> '0.5')."""
    return f"{round(eps * 255, 3):g}" if norm == "linf" else f"{round(eps, 4):g}"


@contextmanager
def attack_mode(model: nn.Module):
    """Put `model` in eval mode with frozen parameters; restore every submodule's mode and flags after."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


def attack_loss(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-batch sum of the loss the attacker maximizes.

    ce: cross-entropy with labels y. margin: the CW margin max_{j!=y} z_j - z_y. kl: KL(y || softmax(logits))
    with y a probability matrix (TRADES's inner maximization, where y is the clean prediction).
    """
    if kind == "ce":
        return F.cross_entropy(logits, y, reduction="sum")
    if kind == "kl":
        return F.kl_div(F.log_softmax(logits, dim=1), y, reduction="sum")
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return (others.amax(1) - z_y).sum()


def lp_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-example norm of a batch of perturbations."""
    flat = t.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


def check_adversarial(x: torch.Tensor, x_adv: torch.Tensor, norm: str, eps: float, atol: float = 1e-6) -> None:
    """Raise `AttackConstraintError` unless x_adv is finite, in [0, 1] and within eps of x (float round-off allowed)."""
    if x_adv.shape != x.shape:
        raise AttackConstraintError(f"x_adv has shape {tuple(x_adv.shape)}, expected {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise AttackConstraintError(f"{int((~torch.isfinite(x_adv)).sum())} non-finite values in x_adv")
    lo, hi = float(x_adv.min()), float(x_adv.max())
    if lo < -atol or hi > 1 + atol:
        raise AttackConstraintError(f"x_adv leaves [0, 1]: min {lo:.3g}, max {hi:.3g}")
    dist = float(lp_norm((x_adv - x).double(), norm).max())
    if dist > eps * (1 + 1e-5) + atol:
        raise AttackConstraintError(f"x_adv leaves the {norm} ball: distance {dist:.6g} > eps {eps:.6g}")


class Attack:
    """Base of every attack: validation of the threat model, the call contract, pass counting.

    Args:
        eps: the perturbation budget (>= 0).
        norm: linf or l2.
    """

    name: ClassVar[str] = "attack"

    def __init__(self, eps: float, norm: str = "linf", eot: int = 1, bpda: bool = False):
        choose("norm", norm, NORMS)
        if int(eot) != eot or eot < 1:
            raise ConfigError(f"eot must be an integer >= 1, got {eot}")
        self.eps = parse_eps(eps)
        self.norm = norm
        self.eot = int(eot)
        self.bpda = bool(bpda)
        self.forward_passes = 0  # examples x forward passes, for cost accounting
        self.backward_passes = 0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = x.detach(), y.detach()
        # enable_grad: the attack needs input gradients even when the caller evaluates under torch.no_grad().
        with attack_mode(model), torch.enable_grad():
            x_adv = self.perturb(model, x, y)
        return x_adv.detach()

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def config(self) -> dict:
        """Everything that determines the attack's result: used in cache keys and in the results."""
        return {"name": self.name, "norm": self.norm, "eps": self.eps, "eot": self.eot, "bpda": self.bpda}

    @property
    def label(self) -> str:
        prefix = ("bpda_" if self.bpda else "") + ("eot_" if self.eot > 1 else "")
        return f"{prefix}{self.name}_{self.norm}_{eps_label(self.eps, self.norm)}"

    def gradient_model(self, model: nn.Module) -> nn.Module:
        """The model whose gradients guide the attack: the model, or its BPDA view (identity backward through
        its preprocessing, Athalye et al. 2018) when `bpda`."""
        if not self.bpda:
            return model
        if not hasattr(model, "bpda"):
            raise AttackConstraintError(
                f"BPDA needs a deployed model with a preprocessing step; {type(model).__name__} has none"
            )
        return model.bpda()

    def loss_and_grad(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce"):
        """Logits at x and the gradient of the attack loss with respect to x.

        With `eot` > 1 (expectation over transformation, Athalye et al. 2018) the gradient is the mean over
        `eot` forward passes, each drawing the model's randomness afresh (one pass at a time, so any kind of
        randomness works and memory stays that of one pass); the logits are their mean.
        """
        grad_model = self.gradient_model(model)
        x = x.detach().requires_grad_(True)
        logits_sum, grad_sum = None, None
        for _ in range(self.eot):
            logits = grad_model(x)
            (grad,) = torch.autograd.grad(attack_loss(logits, y, loss), x)
            logits_sum = logits.detach() if logits_sum is None else logits_sum + logits.detach()
            grad_sum = grad if grad_sum is None else grad_sum + grad
        self.forward_passes += len(x) * self.eot
        self.backward_passes += len(x) * self.eot
        return logits_sum / self.eot, grad_sum / self.eot

    def step(self, x: torch.Tensor, grad: torch.Tensor, size: float) -> torch.Tensor:
        """One steepest-ascent step of the given size under the attack's norm."""
        if self.norm == "linf":
            return x + size * grad.sign()
        g = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (grad.ndim - 1)))
        return x + size * grad / g

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Project onto the eps ball around x, then onto [0, 1]."""
        if self.norm == "linf":
            return torch.minimum(torch.maximum(x_adv, x - self.eps), x + self.eps).clamp_(0, 1)
        delta = x_adv - x
        n = delta.flatten(1).norm(dim=1).view(-1, *([1] * (x.ndim - 1)))
        factor = (self.eps / n.clamp_min(1e-12)).clamp(max=1.0)
        return (x + delta * factor).clamp_(0, 1)
