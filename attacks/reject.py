"""The adaptive attack on a model that may reject its input (an abstaining model, e.g. paper 2's differentiators).

An abstaining deployed model returns C + 1 logits: the C classes, then the reject decision as an extra logit
(`reject_label` = C, the last). The scoring rule of the suite (`benchmark.runner.stages.score.outcome`) counts a
rejected adversarial input as defended and a rejected clean input as an error, so an attack that ignores the reject
option (plain PGD on the cross-entropy of the true label) happily drives inputs into rejection and stops there, and a
detector looks robust for the wrong reason (Carlini & Wagner 2017, "Adversarial examples are not easily detected:
bypassing ten detection methods").

`RejectAwarePGD` attacks the whole accept/reject pipeline in two ways, and an example counts as fooled (early stop,
restarts) only when the model's answer is another class and not a rejection:

- **untargeted** (`untargeted=True`): the true class and the reject logit are merged into one "defended" class,
  z'_y = logsumexp(z_y, z_R), and PGD ascends -log(p_y + p_R) (or the margin max_{j not in {y, R}} z_j - z'_y);
- **targeted and selection-aware** (`targets=T` > 0): for each of the T classes t the model finds likeliest after
  y on the clean input, PGD ascends the margins that must all be positive for the model to answer t and accept it,
  each capped at `kappa`: sum_r min(m_r(x', t), kappa). A model that knows its own acceptance rule offers them as
  `acceptance_margins(x, t)` (the differentiators: the student's margin for t and the margins of the heads that t
  would ask, `defenses.differentiator.DifferentiatorPipeline`), so the attack anticipates which detector heads the
  target class will consult instead of fighting the heads that the true class asks; any other abstaining model
  gets the margin of t over every other logit, the reject logit included.

Each of `restarts` rounds runs the untargeted attack, then each target in turn, on the examples still standing.
On a model without a reject logit and with `targets=0` it is plain PGD.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from attacks.base import Eps, Norm
from attacks.errors import ConfigError
from attacks.pgd import PGD


def reject_label(model: nn.Module) -> int | None:
    """The index of a model's reject logit (`reject_label` of the deployed model), or None if it never rejects."""
    label = getattr(model, "reject_label", None)
    return None if label is None else int(label)


class _Merged(nn.Module):
    """The model's logits with its reject logit merged into each example's true class (C logits out)."""

    def __init__(self, model: nn.Module, y: torch.Tensor, reject: int):
        super().__init__()
        self.model, self.y, self.reject = model, y, reject

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.model(x)
        keep = [j for j in range(z.shape[1]) if j != self.reject]
        classes = z[:, keep]
        merged = torch.logsumexp(torch.stack([classes.gather(1, self.y[:, None]), z[:, self.reject, None]]), dim=0)
        return classes.scatter(1, self.y[:, None], merged)

    def bpda(self) -> nn.Module:
        return _Merged(self.model.bpda(), self.y, self.reject)


def fooled(logits: torch.Tensor, y: torch.Tensor, reject: int | None) -> torch.Tensor:
    """Per example: the answer is a wrong class, not the true one and not a rejection."""
    pred = logits.argmax(1)
    hit = pred != y
    return hit if reject is None else hit & (pred != reject)


def target_margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(n, 1): z_t - max_{j != t} z_j over every logit (the reject logit included): > 0 iff the model answers t."""
    z_t = logits.gather(1, target[:, None])
    others = logits.scatter(1, target[:, None], float("-inf")).amax(1, keepdim=True)
    return z_t - others


def acceptance_margins(model: nn.Module, x: torch.Tensor, target: torch.Tensor):
    """The model's logits at x and the (n, r) margins that must all be positive for it to answer `target` and
    accept: the model's own `acceptance_margins` when it has one (it knows its rule), else `target_margin`."""
    own = getattr(model, "acceptance_margins", None)
    if callable(own):
        return own(x, target)
    logits = model(x)
    return logits, target_margin(logits, target)


def likeliest_others(logits: torch.Tensor, y: torch.Tensor, reject: int | None, n: int) -> torch.Tensor:
    """(N, n): per example, the n classes with the highest logits other than y (and never the reject label)."""
    z = logits.float().scatter(1, y[:, None], float("-inf"))
    if reject is not None:
        z[:, reject] = float("-inf")
    return z.topk(n, dim=1).indices


class RejectAwarePGD(PGD):
    """PGD on the accept/reject pipeline, untargeted through the merged class and/or targeted and selection-aware;
    see the module docstring.

    Args:
        targets: how many of the likeliest other classes to target in turn (0: the untargeted rounds only, the
            attack `pgd_reject_aware` was before the targeted rounds existed).
        untargeted: run the untargeted merged-class attack first in each round (at least one of the two).
        kappa: the cap of each acceptance margin in the targeted loss (a margin above it stops pulling).
        Other args: those of `PGD` (`loss` applies to the untargeted rounds; the targeted ones use the margins).
    """

    name = "pgd_reject_aware"
    #: Aims at the reject decision: the runner's rule for abstaining models (`benchmark.runner.checks`) looks for it.
    reject_aware = True

    def __init__(
        self,
        eps: Eps,
        norm: Norm = "linf",
        steps: int = 10,
        step_size: Eps | None = None,
        random_start: bool = True,
        restarts: int = 1,
        loss: str = "ce",
        early_stop: bool | None = None,
        eot: int = 1,
        bpda: bool = False,
        targets: int = 3,
        untargeted: bool = True,
        kappa: float = 1.0,
    ):
        super().__init__(eps, norm, steps, step_size, random_start, restarts, loss, early_stop, eot, bpda)
        if int(targets) != targets or targets < 0:
            raise ConfigError(f"targets must be an integer >= 0, got {targets}")
        if not untargeted and targets == 0:
            raise ConfigError("RejectAwarePGD needs untargeted=true or targets >= 1")
        if not kappa > 0:
            raise ConfigError(f"kappa must be > 0, got {kappa}")
        self.targets, self.untargeted, self.kappa = int(targets), bool(untargeted), float(kappa)

    def loss_and_grad(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce"):
        reject = reject_label(model)
        return super().loss_and_grad(model if reject is None else _Merged(model, y, reject), x, y, loss)

    def perturb(self, model, x, y):
        reject = reject_label(model)
        x_adv = x.clone()
        standing = torch.ones(len(x), dtype=torch.bool, device=x.device)
        if self.targets:
            with torch.no_grad():
                order = likeliest_others(model(x), y, reject, min(self.targets, self._classes(model, x)))
            self.forward_passes += len(x)
        for _ in range(self.restarts):
            runs = ([None] if self.untargeted else []) + list(range(order.shape[1] if self.targets else 0))
            for rank in runs:
                idx = standing.nonzero().squeeze(1)
                if len(idx) == 0:
                    return x_adv
                if rank is None:  # PGD's run on the merged model, "fooled" re-checked with the reject option
                    out, _ = self._run(model, x[idx], y[idx], final_check=False)
                    with torch.no_grad():
                        hit = fooled(model(out), y[idx], reject)
                    self.forward_passes += len(idx)
                else:
                    out, hit = self._targeted(model, x[idx], y[idx], order[idx, rank], reject)
                x_adv[idx] = out
                standing[idx[hit]] = False
        return x_adv

    @staticmethod
    def _classes(model: nn.Module, x: torch.Tensor) -> int:
        """The number of classes other than the true one that can be targeted."""
        n = getattr(model, "num_classes", None)
        n = int(n) if n is not None else None
        if n is None:
            with torch.no_grad():
                n = model(x[:1]).shape[1]
        return n - 1 - (reject_label(model) is not None)

    def _targeted(self, model, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor, reject: int | None):
        """One targeted run towards t (per example): ascend sum_r min(m_r, kappa) of the acceptance margins (the
        gradient averaged over `eot` passes, their logits too). With `early_stop` an example leaves at its first
        iterate that fools the model (any wrong class, accepted); otherwise every example keeps its last iterate.
        Returns the points and which of them fool the model."""
        out, hit = x0.clone(), torch.zeros(len(x0), dtype=torch.bool, device=x0.device)
        active = torch.arange(len(x0), device=x0.device)
        xa, x0a, ya, ta = self.random_init(x0), x0, y, t
        for i in range(self.steps + 1):
            last = i == self.steps
            logits, grad = self._margin_step(model, xa, ta, 1 if last else self.eot, want_grad=not last)
            done = fooled(logits, ya, reject)
            if self.early_stop or last:
                out[active[done]], hit[active[done]] = xa[done], True
            keep = ~done if self.early_stop else torch.ones_like(done)
            if last or not keep.any():
                out[active[keep]] = xa[keep]
                break
            active, xa, x0a, ya, ta, grad = active[keep], xa[keep], x0a[keep], ya[keep], ta[keep], grad[keep]
            xa = self.project(self.step(xa, grad, self.step_size), x0a)
        return out, hit

    def _margin_step(self, model, x: torch.Tensor, t: torch.Tensor, passes: int, want_grad: bool = True):
        """The mean logits over `passes` passes at x and the mean gradient of sum_r min(m_r, kappa) (None without
        `want_grad`: the last iterate is only checked)."""
        logits_sum, grad_sum = 0.0, None
        for _ in range(passes):
            xg = x.detach().requires_grad_(want_grad)
            with torch.set_grad_enabled(want_grad):
                logits, margins = acceptance_margins(model, xg, t)
            if want_grad:
                (grad,) = torch.autograd.grad(margins.clamp(max=self.kappa).sum(), xg)
                grad_sum = grad if grad_sum is None else grad_sum + grad
                self.backward_passes += len(x)
            logits_sum = logits_sum + logits.detach()
        self.forward_passes += len(x) * passes
        return logits_sum / passes, None if grad_sum is None else grad_sum / passes
