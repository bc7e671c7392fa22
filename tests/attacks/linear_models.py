"""Linear float64 models whose gradients are known, and images for them: the helpers the tests of the attack core
share (tests/attacks/test_base.py, test_pgd.py, test_fgsm.py).

For a two-class linear model with logit difference d.x + c, the cross-entropy gradient always points along d, so L-inf
steps move by sign(d) and L2 steps along d / ||d||: every adversarial example has a closed form, computed in the tests
with numpy, independently of the attack code.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

D = np.array([1.0, -2.0, 0.0, 3.0])  # logit(1) - logit(0) = D.x + b1 - b0; a zero coordinate never moves


class Linear(nn.Module):
    """logits = x.flatten(1) @ W.T + b in float64; records every input it sees (the attack's iterates)."""

    def __init__(self, weight, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.as_tensor(np.asarray(weight), dtype=torch.float64))
        self.bias = nn.Parameter(torch.as_tensor(np.asarray(bias), dtype=torch.float64))
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return x.flatten(1) @ self.weight.T + self.bias


def two_class(b0: float = 1.5) -> Linear:
    return Linear(np.stack([np.zeros(4), D]), [b0, 0.0])


def images(levels) -> torch.Tensor:
    """One 1x2x2 image per level, every pixel at that level (so D.x = 2 * level)."""
    return torch.tensor(levels, dtype=torch.float64)[:, None, None, None].expand(-1, 1, 2, 2).clone()


def flat(t: torch.Tensor) -> np.ndarray:
    return t.detach().flatten(1).numpy()
