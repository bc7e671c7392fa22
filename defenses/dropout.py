"""Test-time dropout (Wang et al., USENIX Security 2018, proposed randomization against the mimicry attack): the
deployed student drops units at inference, so the layer-K representation an attacker mimics on the teacher reaches
the student's later layers only partly and differently at every query.

The authors' code has no dropout defense and the paper body could not be read (`../shared/threats.md` 1.7), so the
design is ours (config options): dropout with probability `p` on the output of layer `layer` (default: layer K, the
boundary of the frozen `feature_layers`; `input` for the pixels), masks drawn per example and per pass and scaled by
1 / (1 - p) as in training; the student's layers after K are fine-tuned with the same dropout active (`init_from` a
trained student), so that they learn to read a thinned representation.

A randomized model: the runner evaluates it with the EOT attacks, scores every adversarial example over fresh draws,
and runs the randomized-defense sanity checks; `frozen(seed)` fixes the masks, `bpda()` takes gradients as if no
unit were dropped (identity backward through the mask).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from attacks.errors import ConfigError
from attacks.mimicry import resolve_layer
from defenses.base import FrozenRandomness
from lightning_modules.modules import StudentModule


class DropoutClassifier(FrozenRandomness, nn.Module):
    """A classifier with dropout at one layer (or on the input) in every pass: [0, 1] images in, logits out."""

    def __init__(self, classifier: nn.Module, p: float, layer: str, straight_through: bool = False):
        super().__init__()
        self.classifier, self.p, self.layer, self.straight_through = classifier, p, layer, straight_through
        self._generator: torch.Generator | None = None

    def drop(self, t: torch.Tensor) -> torch.Tensor:
        keep = torch.rand(t.shape, generator=self._generator, device="cpu" if self._generator else t.device)
        mask = (keep.to(t.device) >= self.p).to(t.dtype) / (1 - self.p)
        dropped = t * mask
        return t + (dropped - t).detach() if self.straight_through else dropped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A frozen model replays the same masks in every pass (a fresh generator from the seed per call).
        self._generator = self.seeded()
        if self.layer == "input":
            return self.classifier(self.drop(x))
        module = self.classifier.backbone.get_submodule(self.layer)
        handle = module.register_forward_hook(lambda _m, _i, out: self.drop(out))
        try:
            return self.classifier(x)
        finally:
            handle.remove()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(x)

    def bpda(self) -> nn.Module:
        """The same masks in the forward pass, the gradient of the undropped network in the backward pass."""
        view = DropoutClassifier(self.classifier, self.p, self.layer, straight_through=True)
        view._seed = self._seed
        return view


class InferenceDropout(StudentModule):
    """A trained student (`init_from`) behind test-time dropout; see the module docstring.

    Args:
        model: the classifier; its weights come from `init_from`.
        p: the dropout probability (ours; threats.md suggests sweeping 0.1 to 0.5).
        layer: where: a backbone layer name, a list whose last entry is used (the model's `feature_layers`), or
            `input`.
        **kwargs: see `StudentModule` (e.g. mode freeze with the same frozen_layers as the student it starts from,
            reinit_trainable false, to fine-tune only the layers after K under dropout).
    """

    randomized = True

    def __init__(self, model, p: float = 0.3, layer: str | Sequence[str] = "features", **kwargs):
        if not 0 < p < 1:
            raise ConfigError(f"dropout p must be in (0, 1), got {p}")
        super().__init__(model, **kwargs)
        self.p, self.layer = float(p), resolve_layer(layer)
        if self.layer != "input":
            children = dict(self.model.backbone.named_modules())
            if self.layer not in children:
                valid = ", ".join(["input", *(n for n, _ in self.model.backbone.named_children())])
                raise ConfigError(f"dropout layer '{self.layer}' is no layer of the backbone; valid: {valid}")

    def deployed_model(self) -> DropoutClassifier:
        return DropoutClassifier(self.model, self.p, self.layer)

    def training_loss(self, x, y):
        logits = self.deployed_model()(x)  # trained under the same dropout it is deployed with
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing), logits
