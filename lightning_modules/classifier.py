"""The model under attack: [0, 1] images in, logits out, normalization inside."""

from __future__ import annotations

from collections.abc import Sequence

import timm
import torch
import torch.nn as nn

import lightning_modules.backbones  # noqa: F401  (registers our backbones with timm)
from attacks.errors import ConfigError
from lightning_modules.backbones import OUR_BACKBONES


class ImageClassifier(nn.Module):
    """A timm-style backbone behind a fixed per-channel normalization.

    `forward(x)` takes float images in [0, 1] (NCHW) and returns logits: the contract every attack relies
    on. `features(x)` returns the penultimate representation (timm's pre-logits).
    """

    def __init__(self, backbone: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.backbone = backbone
        self.num_classes = backbone.num_classes
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.normalize(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        return b.forward_head(b.forward_features(self.normalize(x)), pre_logits=True)

    @property
    def head(self) -> nn.Module:
        return self.backbone.get_classifier()


def known_model(name: str) -> bool:
    """A timm architecture name (ours included), or one with a pretrained tag timm knows (`resnet50.a1_in1k`)."""
    return name in timm.list_models() or ("." in name and name in timm.list_models(pretrained=True))


def build_classifier(
    backbone: str, num_classes: int, in_chans: int, mean: Sequence[float], std: Sequence[float], **kwargs
) -> ImageClassifier:
    """Build `ImageClassifier` around `timm.create_model(backbone)`; a one-line error for unknown names."""
    if not known_model(backbone):
        raise ConfigError(
            f"unknown model '{backbone}'; valid: {', '.join(OUR_BACKBONES)} "
            f"or any of timm's {len(timm.list_models())} names (python -c 'import timm; print(timm.list_models())'), "
            "or a name with its pretrained tag (timm.list_models(pretrained=True), e.g. vit_small_patch16_224.dino)"
        )
    if len(mean) != in_chans:  # broadcast a grey-scale normalization to every channel
        mean, std = list(mean) * in_chans, list(std) * in_chans
    net = timm.create_model(backbone, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kwargs)
    return ImageClassifier(net, mean[:in_chans], std[:in_chans])


def replace_head(model: ImageClassifier, head: nn.Module) -> None:
    """Put `head` where the backbone's classification head is (whatever its attribute name)."""
    old = model.head
    for parent in model.backbone.modules():
        for name, child in parent.named_children():
            if child is old:
                setattr(parent, name, head)
                return
    raise ValueError(f"cannot find the classification head of {type(model.backbone).__name__}")
