"""Hand-made models shared by the tests of attacks and of the runner."""

from __future__ import annotations

import torch
import torch.nn as nn


class Gatekeeper(nn.Module):
    """A hand-made abstaining model on 1x2x2 images: the class is the index of the brightest of the first three
    pixels; the input is rejected (the last logit) when the fourth pixel is above 0.5. It has no
    `acceptance_margins`."""

    reject_label = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        classes = 10 * flat[:, :3]
        reject = torch.where(flat[:, 3] > 0.5, classes.amax(1) + 1, classes.amin(1) - 1)
        return torch.cat([classes, reject[:, None]], dim=1)


class UnqueryableTarget(nn.Module):
    """A target that fails the test if the attacker ever runs it (it has parameters, so modes and flags apply): a
    transfer attack must never query the model it attacks."""

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(4, 10)

    def forward(self, x):
        raise AssertionError("a transfer attack queried the target model")
