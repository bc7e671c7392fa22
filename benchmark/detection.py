"""Adversarial-vs-clean detection from a model's learned representation (TLA's second claim).

Mao et al. 2019 (arXiv 1909.00900) report that the representation learned with a triplet loss separates
adversarial from clean inputs (detection AUC, MNIST and CIFAR-10). The paper's detector is not in the
notes we have, so the rule is OUR choice, the same for every model:

    score(x) = min over clean reference examples r of the predicted class  (1 - |cos(h(x), h(r))|)

with h the penultimate representation, the predicted class the model's own label for x, and the reference
set the target domain's labelled training split. An input whose representation is far from every clean
example of the class it is assigned to is likely adversarial: higher score, more suspicious. The AUROC
(torchmetrics) separates the clean versions of the clean-correct test examples (negatives) from the
adversarial examples that fool the model (positives).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_auroc


class RepresentationDetector:
    """Nearest-clean-neighbour distance of the predicted class, in the model's representation space.

    Args:
        embed: [0, 1] images -> representation (e.g. `module.representation`).
        ref_x: clean reference images (the target training split).
        ref_y: their labels.
        batch_size: batch size of the embedding passes.
        device: where to embed.
    """

    def __init__(self, embed, ref_x: torch.Tensor, ref_y: torch.Tensor, batch_size: int, device: torch.device):
        self.embed, self.batch_size, self.device = embed, batch_size, device
        self.ref = self._unit(ref_x)
        self.ref_y = ref_y.to(device)

    @torch.no_grad()
    def _unit(self, x: torch.Tensor) -> torch.Tensor:
        out = [self.embed(x[i : i + self.batch_size].to(self.device)) for i in range(0, len(x), self.batch_size)]
        return F.normalize(torch.cat(out).flatten(1).float(), dim=1)

    @torch.no_grad()
    def scores(self, x: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """1 - |cos| to the nearest clean reference example of each input's predicted class (CPU tensor)."""
        dist = 1 - (self._unit(x) @ self.ref.T).abs()
        other_class = pred.to(self.device)[:, None] != self.ref_y[None, :]
        return dist.masked_fill(other_class, float("inf")).amin(1).cpu()


def detection_auroc(out: dict) -> float:
    """AUROC of clean (clean-correct examples) vs successful adversarial examples, from a cell's outcome.

    Randomized models: everything comes from draw 0 (the draw the scores were computed with): the clean-correct
    examples of draw 0 against the adversarial examples that fool draw 0.
    """
    if "score_clean" not in out:
        return float("nan")
    clean = out["clean"][0]
    fooled = clean & ~out["adv"][0]
    neg, pos = out["score_clean"][clean], out["score_adv"][fooled]
    if len(neg) == 0 or len(pos) == 0:
        return float("nan")
    scores = torch.cat([neg, pos]).nan_to_num(posinf=1e6)
    target = torch.cat([torch.zeros(len(neg)), torch.ones(len(pos))]).long()
    return float(binary_auroc(scores, target))
