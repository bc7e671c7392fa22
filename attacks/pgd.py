"""PGD: projected gradient descent with random start and restarts (Madry et al. 2018, arXiv 1706.06083)."""

from __future__ import annotations

import torch

from attacks.base import LOSSES, Attack, Eps, Norm, check_steps, parse_eps
from attacks.errors import ConfigError, choose


class PGD(Attack):
    """Projected gradient ascent on the attack loss in an L-inf or L2 ball.

    Examples that are already fooled get no further work: with `early_stop`, an example is frozen at the
    first iterate that the model misclassifies and leaves the batch, and later restarts run only on the
    examples still standing. Per example this is never weaker than plain PGD (which returns the last
    iterate, possibly no longer adversarial), and it costs less. Crafting on a surrogate for transfer
    needs the full budget instead, so `TransferAttack` turns early stopping off.

    Args:
        eps: the budget (a number or a fraction string such as "8/255").
        norm: linf or l2 (any case).
        steps: gradient steps per restart (>= 1).
        step_size: step length; default 2.5 * eps / steps (Madry et al.).
        random_start: start from a uniform point of the ball (L-inf) or a random direction and radius (L2).
        restarts: independent runs; each after the first runs only on examples not yet fooled.
        loss: ce (cross-entropy) or margin (CW margin).
        early_stop: stop working on an example once it is misclassified. Default: on, except with `eot` > 1,
            where one noisy pass must not decide that an example is fooled (evaluate after optimizing).
        eot: gradient samples per step for randomized models (EOT-PGD); see `Attack.loss_and_grad`.
        bpda: take gradients through the model's BPDA view (identity backward through its preprocessing).
    """

    name = "pgd"

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
    ):
        super().__init__(eps, norm, eot=eot, bpda=bpda)
        if early_stop and self.eot > 1:
            raise ConfigError("early_stop with eot > 1 would trust one noisy pass; use early_stop=false")
        choose("loss", loss, LOSSES)
        check_steps(steps, step_size)
        if int(restarts) != restarts or restarts < 1:
            raise ConfigError(f"restarts must be an integer >= 1, got {restarts}")
        self.steps = int(steps)
        self.step_size = parse_eps(step_size) if step_size is not None else 2.5 * self.eps / self.steps
        self.random_start = random_start
        self.restarts = int(restarts)
        self.loss = loss
        self.early_stop = self.eot == 1 if early_stop is None else bool(early_stop)

    def derived_config(self) -> dict:
        # The defaults that stand for a value: PGD(eps) and PGD(eps, step_size=2.5 * eps / 10) are one attack.
        return {"step_size": self.step_size, "early_stop": self.early_stop}

    def random_init(self, x: torch.Tensor) -> torch.Tensor:
        if not self.random_start or self.eps == 0:
            return x.clone()
        if self.norm == "linf":
            delta = torch.empty_like(x).uniform_(-self.eps, self.eps)
        else:
            delta = torch.randn_like(x)
            n = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.ndim - 1)))
            r = torch.rand(len(x), device=x.device, dtype=x.dtype).view_as(n)
            delta = delta / n * r * self.eps
        return (x + delta).clamp_(0, 1)

    def perturb(self, model, x, y):
        x_adv = x.clone()
        standing = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for r in range(self.restarts):
            idx = standing.nonzero().squeeze(1)
            if len(idx) == 0:
                break
            last = r == self.restarts - 1
            out, fooled = self._run(model, x[idx], y[idx], final_check=not last)
            x_adv[idx] = out
            standing[idx[fooled]] = False
        return x_adv

    def _run(self, model, x0: torch.Tensor, y: torch.Tensor, final_check: bool):
        """One restart. Returns the adversarial points and which of them are known to fool the model."""
        out = torch.empty_like(x0)
        fooled = torch.zeros(len(x0), dtype=torch.bool, device=x0.device)
        active = torch.arange(len(x0), device=x0.device)
        xa, x0a, ya = self.random_init(x0), x0, y
        for _ in range(self.steps):
            logits, grad = self.loss_and_grad(model, xa, ya, self.loss)
            if self.early_stop:
                hit = logits.argmax(1) != ya
                if hit.any():
                    out[active[hit]] = xa[hit]
                    fooled[active[hit]] = True
                    keep = ~hit
                    active, xa, x0a, ya, grad = active[keep], xa[keep], x0a[keep], ya[keep], grad[keep]
                    if len(active) == 0:
                        return out, fooled
            xa = self.project(self.step(xa, grad, self.step_size), x0a)
        out[active] = xa
        if final_check and len(active):
            with torch.no_grad():
                fooled[active[model(xa).argmax(1) != ya]] = True
            self.forward_passes += len(xa)
        return out, fooled
