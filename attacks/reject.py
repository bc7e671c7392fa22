"""The adaptive attack on a model that may reject its input (an abstaining model, e.g. paper 2's differentiators).

An abstaining deployed model returns C + 1 logits: the C classes, then the reject decision as an extra logit
(`reject_label` = C, the last). The scoring rule of the suite (`benchmark.stages.score.outcome`) counts a rejected
adversarial input as defended and a rejected clean input as an error, so an attack that ignores the reject option
(plain PGD on the cross-entropy of the true label) happily drives inputs into rejection and stops there, and a
detector looks robust for the wrong reason (Carlini & Wagner 2017, "Adversarial examples are not easily detected:
bypassing ten detection methods").

`RejectAwarePGD` attacks the whole accept/reject pipeline: the true class and the reject logit are merged into one
"defended" class, z'_y = logsumexp(z_y, z_R), so the cross-entropy it ascends is -log(p_y + p_R) (a margin loss,
max_{j not in {y, R}} z_j - z'_y, with `loss=margin`), and an example counts as fooled (early stop, restarts) only
when the model's answer is another class and not a rejection. On a model without a reject logit it is plain PGD.
"""

from __future__ import annotations

import torch
import torch.nn as nn

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


class RejectAwarePGD(PGD):
    """PGD on the accept/reject pipeline: the reject logit counts as the true class; see the module docstring.

    Args: those of `PGD`.
    """

    name = "pgd_reject_aware"
    #: Aims at the reject decision: the runner's rule for abstaining models (`benchmark.checks`) looks for it.
    reject_aware = True

    def loss_and_grad(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce"):
        reject = reject_label(model)
        return super().loss_and_grad(model if reject is None else _Merged(model, y, reject), x, y, loss)

    def perturb(self, model, x, y):
        # PGD's restarts, with "fooled" meaning a wrong class that is not a rejection.
        reject = reject_label(model)
        x_adv = x.clone()
        standing = torch.ones(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            idx = standing.nonzero().squeeze(1)
            if len(idx) == 0:
                break
            out, _ = self._run(model, x[idx], y[idx], final_check=False)
            x_adv[idx] = out
            with torch.no_grad():
                standing[idx[fooled(model(out), y[idx], reject)]] = False
            self.forward_passes += len(idx)
        return x_adv
