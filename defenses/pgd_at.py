"""PGD adversarial fine-tuning (Madry et al. 2018, arXiv 1706.06083)."""

from __future__ import annotations

import torch.nn.functional as F

from defenses.base import AdversarialStudent


class PGDAT(AdversarialStudent):
    """Fine-tunes the student on PGD examples crafted against its current weights.

    Loss: (1 - clean_weight) * CE(f(x'), y) + clean_weight * CE(f(x), y), with x' from L-inf or L2 PGD
    (random start, no early stopping: training wants the full-budget example). The examples are crafted
    in eval mode (batch-norm statistics fixed), a common choice for fine-tuning. The kept checkpoint is
    the one with the best robust accuracy on the validation split under the same PGD (our choice;
    it guards against robust overfitting, Rice et al. 2020).

    Args:
        clean_weight: weight of the clean cross-entropy term (0: pure Madry).
        **kwargs: see `AdversarialStudent` (`train_attack`: the PGD; default 8/255 L-inf, 10 steps of
            2.5 * eps / steps) and `StudentModule`.
    """

    def __init__(self, model, clean_weight: float = 0.0, **kwargs):
        super().__init__(model, **kwargs)
        self.clean_weight = clean_weight

    def training_loss(self, x, y):
        x_adv = self.attack(self.model, x, y)
        logits = self.model(x_adv)
        loss = F.cross_entropy(logits, y)
        if self.clean_weight:
            loss = (1 - self.clean_weight) * loss + self.clean_weight * F.cross_entropy(self.model(x), y)
        return loss, logits
