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

from datamodules.base import chunks


class RepresentationDetector:
    """Nearest-clean-neighbour distance of the predicted class, in the model's representation space.

    Args:
        embed: [0, 1] images -> representation (e.g. `module.representation`).
        ref_x: clean reference images (the target training split; a tensor, or images read on access).
        ref_y: their labels.
        batch_size: batch size of the embedding passes.
        device: where to embed.
    """

    def __init__(self, embed, ref_x, ref_y: torch.Tensor, batch_size: int, device: torch.device):
        self.embed_fn, self.batch_size, self.device = embed, batch_size, device
        self.ref = F.normalize(self.embed(ref_x), dim=1)
        self.ref_y = ref_y.to(device)

    @torch.no_grad()
    def embed(self, x) -> torch.Tensor:
        """The flattened representations of x (a tensor, or images read on access), `batch_size` at a time."""
        return torch.cat([self.embed_fn(xb.to(self.device)) for xb in chunks(x, self.batch_size)]).flatten(1).float()

    @torch.no_grad()
    def nearest(self, embedded: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """1 - |cos| of each representation (`embed`) to the nearest clean reference example of its predicted class
        (CPU tensor)."""
        dist = 1 - (F.normalize(embedded, dim=1) @ self.ref.T).abs()
        other_class = pred.to(self.device)[:, None] != self.ref_y[None, :]
        return dist.masked_fill(other_class, float("inf")).amin(1).cpu()

    def scores(self, x, pred: torch.Tensor) -> torch.Tensor:
        """1 - |cos| to the nearest clean reference example of each input's predicted class (CPU tensor)."""
        return self.nearest(self.embed(x), pred)


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
