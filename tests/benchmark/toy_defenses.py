"""Randomized toy defenses whose evaluation outcome is known in advance, for the runner's sanity checks.

`NoisyInput`: the classifier on x + sigma * noise, a fresh draw per pass. Its draws disagree near the decision
boundary, and with the noise frozen it is a plain undefended classifier: the attack must break it (healthy).
`MaskedNoisyInput`: the same, behind a layer that zeroes every input gradient: robust only because gradients are
masked. With its noise frozen a gradient attack still fails, so the frozen-randomness flag must fire.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn as nn

from defenses.base import FrozenRandomness
from lightning_modules.modules import StudentModule


class _ZeroGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return torch.zeros_like(grad)


class NoisyClassifier(FrozenRandomness, nn.Module):
    def __init__(self, classifier: nn.Module, sigma: float, mask_gradients: bool):
        super().__init__()
        self.classifier, self.sigma, self.mask_gradients = classifier, sigma, mask_gradients

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.seeded()
        noise = torch.randn(x.shape, generator=g).to(x.device)
        if self.mask_gradients:
            x = _ZeroGrad.apply(x)
        return self.classifier((x + self.sigma * noise).clamp(0, 1))


class NoisyInput(StudentModule):
    """Fine-tuning as usual; deployed behind input noise."""

    randomized: ClassVar[bool] = True
    mask_gradients: ClassVar[bool] = False

    def __init__(self, model, sigma: float = 0.3, **kwargs):
        super().__init__(model, **kwargs)
        self.sigma = sigma

    def deployed_model(self) -> nn.Module:
        return NoisyClassifier(self.model, self.sigma, self.mask_gradients)


class MaskedNoisyInput(NoisyInput):
    mask_gradients: ClassVar[bool] = True
