"""TLA: triplet-loss adversarial fine-tuning (Mao et al. 2019, "Metric Learning for Adversarial Robustness",
arXiv 1909.00900), following the authors' code as summarized in papers.md section 5."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from attacks.base import attack_mode, parse_eps
from attacks.errors import ConfigError, choose
from defenses.base import AdversarialStudent

NEGATIVES = ("hard", "random")


def cos_distance(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """D(u, v) = 1 - |cos(u, v)| row-wise, the paper's `triplet_loss_type: cos`."""
    return 1 - F.cosine_similarity(u.flatten(1), v.flatten(1), dim=1).abs()


class TLA(AdversarialStudent):
    """Fine-tunes on CE(f(x'_a), y) + lambda1 * triplet + lambda2 * feature norm, in the penultimate space h.

    - Anchor: the PGD example x'_a of a clean training example x_a (CE is on adversarial examples only).
    - Positives (each switchable): the clean x_a itself (the paper's `A_Ap_B`) and another clean example of
      the same class (`A1_Ap_B`), drawn at random from the dictionary.
    - Negative: the clean example of another class whose representation is nearest to the anchor's (largest
      |cos|), mined from a dictionary of clean training examples embedded with the current model (eval mode,
      no gradient; one matrix product, no per-example loop). `negative="random"` draws a random example of
      another class instead (the paper's TLA-RN ablation).
    - Triplet: mean over the batch of [D(a, p) - D(a, n) + margin]_+ with D = 1 - |cos|; one term per positive.
    - Norm penalty: mean of a^2 + p^2 + n^2 over the features, as in the code.

    Our choices (the paper samples `mul_num x batch` fresh training images each step): the dictionary is the
    most recent `dictionary_size` clean training images, a queue over batches that includes the current one,
    re-embedded at every step. The paper's scales are margin 0.03 / lambda1 2 / lambda2 1e-3 (CIFAR-10) and
    0.05 / 0.5 / 1e-4 (MNIST); the digits default takes MNIST's (small grey digits, a small CNN) with a
    dictionary of 100 images, the whole labelled target set, since the README of the authors' code advises
    fewer negatives for small models. Clean inputs may get uniform noise of +-`clean_noise` (the code's
    `nat_noise_level`, 8/255 on CIFAR-10).

    Args:
        margin: the triplet margin alpha.
        lambda_triplet: lambda1.
        lambda_norm: lambda2.
        dictionary_size: clean examples the negatives (and the second positives) are mined from.
        positive_clean: use the clean version of the anchor as a positive.
        positive_other: use another clean example of the anchor's class as a positive.
        negative: hard (nearest other-class example) or random.
        clean_noise: L-inf size of the uniform noise added to clean inputs.
        **kwargs: see `AdversarialStudent` (`train_attack`: the anchors' PGD; default 8/255 L-inf, 10 steps of
            2.5 * eps / steps) and `StudentModule`.
    """

    def __init__(
        self,
        model,
        margin: float = 0.05,
        lambda_triplet: float = 0.5,
        lambda_norm: float = 1e-4,
        dictionary_size: int = 100,
        positive_clean: bool = True,
        positive_other: bool = True,
        negative: str = "hard",
        clean_noise: float = 0.0,
        **kwargs,
    ):
        choose("negative", negative, NEGATIVES)
        super().__init__(model, **kwargs)
        if dictionary_size < 2:
            raise ConfigError(f"dictionary_size must be >= 2, got {dictionary_size}")
        if not (positive_clean or positive_other):
            raise ConfigError("at least one of positive_clean and positive_other must be on")
        self.margin, self.lambda_triplet, self.lambda_norm = margin, lambda_triplet, lambda_norm
        self.dictionary_size = dictionary_size
        self.positive_clean, self.positive_other, self.negative = positive_clean, positive_other, negative
        self.clean_noise = parse_eps(clean_noise)
        self._queue_x: torch.Tensor | None = None
        self._queue_y: torch.Tensor | None = None

    def _dictionary(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The current batch first, then the most recent earlier clean examples, up to `dictionary_size`."""
        if self._queue_x is None or self._queue_x.shape[1:] != x.shape[1:]:
            dx, dy = x, y
        else:
            dx, dy = torch.cat([x, self._queue_x.to(x.device)]), torch.cat([y, self._queue_y.to(y.device)])
        dx, dy = dx[: self.dictionary_size], dy[: self.dictionary_size]
        self._queue_x, self._queue_y = dx.detach(), dy.detach()
        return dx, dy

    def mine(self, anchor: torch.Tensor, y: torch.Tensor, dict_x: torch.Tensor, dict_y: torch.Tensor):
        """Indices into the dictionary of each anchor's negative and of its other positive (-1: none).

        The batch is the dictionary's first `len(y)` entries, so an anchor's own clean example is never
        drawn as its other positive.
        """
        with attack_mode(self.model), torch.no_grad():
            d = F.normalize(self.model.features(dict_x).flatten(1), dim=1)
        a = F.normalize(anchor.detach().flatten(1), dim=1)
        same = y[:, None] == dict_y[None, :]
        n = len(y)
        noise = torch.rand(n, len(dict_y), device=y.device)
        if self.negative == "hard":
            negative = (a @ d.T).abs().masked_fill(same, -1.0).argmax(1)
        else:
            negative = noise.masked_fill(same, -1.0).argmax(1)
        others = same.clone()
        others[torch.arange(n), torch.arange(n)] = False  # not itself
        positive = noise.masked_fill(~others, -1.0).argmax(1)
        positive[~others.any(1)] = -1
        negative[same.all(1)] = -1
        return negative, positive

    def training_loss(self, x, y):
        if self.clean_noise:
            x = (x + torch.empty_like(x).uniform_(-self.clean_noise, self.clean_noise)).clamp(0, 1)
        x_adv = self.attack(self.model, x, y)
        dict_x, dict_y = self._dictionary(x, y)
        feats_adv = self.model.features(x_adv)
        logits_adv = self.model.head(feats_adv)  # the head on the pre-logits: one forward pass for both
        negative, positive = self.mine(feats_adv, y, dict_x, dict_y)
        ok = negative >= 0
        neg = self.model.features(dict_x[negative.clamp_min(0)])
        triplet = feats_adv.new_zeros(())
        feats = [feats_adv, neg]
        if self.positive_clean:
            pos = self.model.features(x)
            triplet = triplet + self._triplet(feats_adv, pos, neg, ok)
            feats.append(pos)
        if self.positive_other:
            has = ok & (positive >= 0)
            pos2 = self.model.features(dict_x[positive.clamp_min(0)])
            triplet = triplet + self._triplet(feats_adv, pos2, neg, has)
            feats.append(pos2)
        norm = sum(f.flatten(1).pow(2).mean() for f in feats)
        ce = F.cross_entropy(logits_adv, y)
        self.log_dict({"train/ce_adv": ce.detach(), "train/triplet": triplet.detach()})
        return ce + self.lambda_triplet * triplet + self.lambda_norm * norm, logits_adv

    def _triplet(self, a, p, n, mask):
        losses = F.relu(cos_distance(a, p) - cos_distance(a, n) + self.margin)
        return losses[mask].mean() if mask.any() else losses.sum() * 0
