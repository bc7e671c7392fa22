"""Backbones of the suite, registered with timm so that `timm.create_model(name)` builds them.

Every backbone follows timm's classifier interface (`forward_features`, `forward_head(pre_logits=...)`,
`get_classifier`, `reset_classifier`, `num_features`), so the modules, defenses and attacks treat ours and
any other timm model alike. Inputs are normalized images; normalization is added by `ImageClassifier`.

- `small_cnn`: the embedded default for 16x16 digits (two conv blocks, one hidden FC layer).
- `dtn`: the digits network of Zhang et al. 2020 (arXiv 2008.11089), for 32x32 inputs. Its parameter
  names follow the paper's code (`conv_params`, `fc_params`, `classifier`) so layer lists carry over.
- `resnet18_cifar`: ResNet-18 with a 3x3 stride-1 stem and no max-pool (the CIFAR variant; torchvision's
  parameter names, as solo-learn's CIFAR checkpoints).
- `wrn_28_10`: WideResNet-28-10 (Zagoruyko & Komodakis), dropout 0, as used for CIFAR-10/STL-10.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import register_model
from timm.models.resnet import BasicBlock as TimmBasicBlock
from timm.models.resnet import ResNet

_TIMM_ONLY_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir", "features_only")


class TimmStyleClassifier(nn.Module):
    """Shared timm-style plumbing: a feature body, global pooling, optional pre-logits, a linear classifier."""

    def __init__(self, num_features: int, num_classes: int, drop_rate: float = 0.0):
        super().__init__()
        self.num_features = num_features
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.classifier = nn.Linear(num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3)) if x.ndim == 4 else x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(x)
        if pre_logits:
            return x
        return self.classifier(F.dropout(x, self.drop_rate, self.training) if self.drop_rate else x)

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class SmallCNN(TimmStyleClassifier):
    """Two conv-BN-ReLU-pool blocks and a hidden FC layer; fast on the CPU for small images."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 32, hidden: int = 128, drop_rate=0.0):
        super().__init__(hidden, num_classes, drop_rate)
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(4),
        )
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, hidden), nn.ReLU(inplace=True))

    def forward_features(self, x):
        return self.features(x)

    def pre_logits(self, x):
        return self.fc(x)


class DTN(TimmStyleClassifier):
    """The DTN digits network of paper 1 (32x32 inputs); layer names as in the authors' code."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0):
        super().__init__(512, num_classes, drop_rate)
        self.conv_params = nn.Sequential(
            nn.Conv2d(in_chans, 64, 5, stride=2, padding=2),
            nn.BatchNorm2d(64),
            nn.Dropout2d(0.1),
            nn.ReLU(),
            nn.Conv2d(64, 128, 5, stride=2, padding=2),
            nn.BatchNorm2d(128),
            nn.Dropout2d(0.3),
            nn.ReLU(),
            nn.Conv2d(128, 256, 5, stride=2, padding=2),
            nn.BatchNorm2d(256),
            nn.Dropout2d(0.5),
            nn.ReLU(),
        )
        self.fc_params = nn.Sequential(
            nn.Flatten(), nn.Linear(256 * 4 * 4, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Dropout(0.5)
        )

    def forward_features(self, x):
        if x.shape[-2:] != (32, 32):
            raise ValueError(f"dtn expects 32x32 inputs, got {tuple(x.shape[-2:])}")
        return self.conv_params(x)

    def pre_logits(self, x):
        return self.fc_params(x)


class PreActBlock(nn.Module):
    """WideResNet's basic block (BN-ReLU-conv ordering), with optional dropout between the convs."""

    def __init__(self, cin: int, cout: int, stride: int, drop: float = 0.0):
        super().__init__()
        self.drop = drop
        self.bn1, self.bn2 = nn.BatchNorm2d(cin), nn.BatchNorm2d(cout)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        o = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        o = self.conv1(o)
        o = F.relu(self.bn2(o))
        if self.drop:
            o = F.dropout(o, self.drop, self.training)
        return self.conv2(o) + skip


class ResNet18Cifar(ResNet):
    """ResNet-18 for 32x32 images: a 3x3 stride-1 stem and no max-pool, widths 64-128-256-512.

    It is timm's (= torchvision's) ResNet-18 with that stem, as solo-learn's CIFAR backbone is torchvision's
    `resnet18()` with `conv1` a 3x3 stride-1 conv and `maxpool` an identity: the parameter names are
    torchvision's (`conv1`, `bn1`, `layer1.0.conv1`, `layer2.0.downsample.0`, `fc`), so those checkpoints load
    without remapping. The stem's top-level layers are `conv1`, `bn1`, `act1`, `maxpool` (an identity).
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, drop_rate: float = 0.0):
        super().__init__(TimmBasicBlock, [2, 2, 2, 2], num_classes=num_classes, in_chans=in_chans,
                         drop_rate=drop_rate, zero_init_last=False)  # fmt: skip
        self.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.maxpool = nn.Identity()


class WideResNet(TimmStyleClassifier):
    """WideResNet-depth-width with pre-activation blocks; the final BN-ReLU precedes global pooling."""

    def __init__(self, depth: int = 28, widen: int = 10, num_classes: int = 10, in_chans: int = 3, drop_rate=0.0):
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        super().__init__(widths[3], num_classes, 0.0)
        self.stem = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        blocks, cin = [], widths[0]
        for i, cout in enumerate(widths[1:]):
            group = [
                PreActBlock(cin if j == 0 else cout, cout, (1 if i == 0 else 2) if j == 0 else 1, drop_rate)
                for j in range(n)
            ]
            blocks.append(nn.Sequential(*group))
            cin = cout
        self.block1, self.block2, self.block3 = blocks
        self.bn = nn.BatchNorm2d(widths[3])

    def forward_features(self, x):
        x = self.block3(self.block2(self.block1(self.stem(x))))
        return F.relu(self.bn(x))


def _build(cls, pretrained: bool, **kwargs):
    if pretrained:
        raise ValueError(f"no pretrained weights are shipped for {cls.__name__}; train a teacher instead")
    for k in _TIMM_ONLY_KWARGS:
        kwargs.pop(k, None)
    kwargs.pop("global_pool", None)
    return cls(**kwargs)


@register_model
def small_cnn(pretrained: bool = False, **kwargs) -> SmallCNN:
    return _build(SmallCNN, pretrained, **kwargs)


@register_model
def dtn(pretrained: bool = False, **kwargs) -> DTN:
    return _build(DTN, pretrained, **kwargs)


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs) -> ResNet18Cifar:
    return _build(ResNet18Cifar, pretrained, **kwargs)


@register_model
def wrn_28_10(pretrained: bool = False, **kwargs) -> WideResNet:
    return _build(WideResNet, pretrained, depth=28, widen=10, **kwargs)


OUR_BACKBONES = ("small_cnn", "dtn", "resnet18_cifar", "wrn_28_10")
