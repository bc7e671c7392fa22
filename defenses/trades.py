"""TRADES (Zhang et al. 2019, arXiv 1901.08573): clean accuracy traded against smoothness around each input."""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from attacks.base import attack_mode, parse_eps
from defenses.base import AdversarialStudent, TrainAttack


class TRADES(AdversarialStudent):
    """Fine-tunes on CE(f(x), y) + beta * KL(f(x) || f(x')), with x' maximizing that KL inside the eps ball.

    As in the authors' code: x' starts at x + 0.001 * N(0, I) (the KL's gradient vanishes at x itself) and takes
    `steps` sign-gradient steps of `step_size` on the summed KL against the (fixed) clean prediction, with
    the model in eval mode; the loss's KL is averaged over the batch. The kept checkpoint is the best robust
    one on the validation split under PGD at the training budget (as for PGD-AT).

    Args:
        beta: weight of the robustness (KL) term; 6 in the paper's CIFAR-10 setting.
        **kwargs: see `AdversarialStudent` (`train_attack`: the inner maximization's budget, 8/255 L-inf by
            default, its steps, 10 in the paper, and its step, by default eps / 4, the paper's 0.007 for 0.031)
            and `StudentModule`.
    """

    def __init__(self, model, beta: float = 6.0, **kwargs):
        super().__init__(model, **kwargs)
        self.beta = beta

    def training_attack(self, settings: TrainAttack):
        # Its projection, step and step size drive the KL maximization of `adversary` (which starts from x plus
        # small Gaussian noise, so random_start is not used).
        step_size = settings.step_size or parse_eps(settings.eps) / 4
        return super().training_attack(replace(settings, step_size=step_size))

    def validation_attack(self, attack):
        return attack.replace(step_size=None)  # PGD with its default step, not the KL maximization's eps / 4

    def adversary(self, x: torch.Tensor) -> torch.Tensor:
        """The TRADES inner maximization of KL(f(x) || f(x')) over the eps ball."""
        a = self.attack
        with attack_mode(self.model), torch.enable_grad():
            with torch.no_grad():
                p_clean = F.softmax(self.model(x), dim=1)
            x_adv = a.project(x + 0.001 * torch.randn_like(x), x)
            for _ in range(a.steps):
                _, grad = a.loss_and_grad(self.model, x_adv, p_clean, "kl")
                x_adv = a.project(a.step(x_adv, grad, a.step_size), x)
        return x_adv.detach()

    def training_loss(self, x, y):
        x_adv = self.adversary(x)
        logits = self.model(x)
        # KL(p_clean || p_adv) with both sides as log-probabilities: the same value as with softmax(logits) as the
        # target, but a finite gradient when a clean probability underflows to 0 (large logits: log 0 otherwise)
        kl = F.kl_div(
            F.log_softmax(self.model(x_adv), dim=1),
            F.log_softmax(logits, dim=1),
            reduction="batchmean",
            log_target=True,
        )
        self.log("train/kl", kl.detach())
        return F.cross_entropy(logits, y) + self.beta * kl, logits
