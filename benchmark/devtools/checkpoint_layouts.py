"""Checkpoint files in the key layouts of the projects people download encoders from, written the way each project
writes them (the architecture built with torchvision / timm / lightly, saved as that project saves it), with random
weights and no network: for the loader's tests and `make perf-checkpoints`.

- `torchvision`: `torch.save(resnet18().state_dict())` (torchvision's model zoo files);
- `timm`: `torch.save(timm.create_model(name).state_dict())`, with its head or encoder-only (`num_classes=0`);
- `deit`: `{"model": state_dict}` (DeiT's / MAE's released files);
- `moco`: MoCo v2's official files: `{"epoch", "arch", "state_dict": DDP's `module.encoder_q.*` / `encoder_k.*` /
  `queue`, "optimizer"}`, the query encoder's `fc` an MLP;
- `solo-learn`: a Lightning checkpoint of a module with solo-learn's attributes (`backbone`: torchvision's resnet18
  with the CIFAR stem and `fc = Identity()`, `projector`, `predictor`, `classifier`, `momentum_backbone`,
  `momentum_projector`), hyper-parameters saved as a plain dict or, as solo-learn does, as an OmegaConf config;
- `lightly`: a Lightning checkpoint of lightly's SimCLR / MoCo examples (`backbone = nn.Sequential(*list(
  resnet.children())[:-1])`, `projection_head`, `backbone_momentum`, `projection_head_momentum`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import timm
import torch
import torch.nn as nn
import torchvision
from omegaconf import OmegaConf


def cifar_resnet18(num_classes: int = 1000) -> nn.Module:
    """solo-learn's CIFAR backbone: torchvision's resnet18 with a 3x3 stride-1 stem and no max-pool."""
    net = torchvision.models.resnet18(num_classes=num_classes)
    net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    return net


def torchvision_file(path: Path, cifar_stem: bool = False, num_classes: int = 1000) -> Path:
    net = cifar_resnet18(num_classes) if cifar_stem else torchvision.models.resnet18(num_classes=num_classes)
    torch.save(net.state_dict(), path)
    return path


def timm_file(path: Path, name: str, num_classes: int = 1000, wrapper: str | None = None, **kwargs) -> Path:
    state = timm.create_model(name, num_classes=num_classes, **kwargs).state_dict()
    torch.save({wrapper: state} if wrapper else state, path)
    return path


def moco_file(path: Path) -> Path:
    """MoCo v2's `main_moco.py` layout (DDP-wrapped `MoCo` module, ResNet encoders with an MLP `fc`)."""

    def encoder():
        net = torchvision.models.resnet18(num_classes=128)
        net.fc = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), net.fc)
        return net

    moco = nn.Module()
    moco.encoder_q = encoder()
    moco.encoder_k = copy.deepcopy(moco.encoder_q)
    moco.register_buffer("queue", torch.randn(128, 64))
    moco.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
    optimizer = torch.optim.SGD(moco.encoder_q.parameters(), lr=0.03, momentum=0.9)
    state = {f"module.{k}": v for k, v in moco.state_dict().items()}
    torch.save({"epoch": 200, "arch": "resnet18", "state_dict": state, "optimizer": optimizer.state_dict()}, path)
    return path


class _SoloLearnLike(L.LightningModule):
    """solo-learn's `BaseMomentumMethod` attributes (BYOL), its CIFAR backbone, an online linear classifier."""

    def __init__(self, num_classes: int, hparams):
        super().__init__()
        self.save_hyperparameters(hparams)
        self.backbone = cifar_resnet18()
        self.backbone.fc = nn.Identity()
        self.projector = nn.Sequential(nn.Linear(512, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 64))
        self.predictor = nn.Sequential(nn.Linear(64, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Linear(256, 64))
        self.classifier = nn.Linear(512, num_classes)
        self.momentum_backbone = copy.deepcopy(self.backbone)
        self.momentum_projector = copy.deepcopy(self.projector)

    def training_step(self, batch, _):
        feats = self.backbone(batch[0])
        return self.predictor(self.projector(feats)).pow(2).mean() + self.classifier(feats.detach()).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


class _LightlyExample(L.LightningModule):
    """lightly's `examples/pytorch_lightning/moco.py` (SimCLR's without the momentum copies)."""

    def __init__(self, momentum: bool):
        from lightly.models.modules import MoCoProjectionHead

        super().__init__()
        resnet = torchvision.models.resnet18()
        self.backbone = nn.Sequential(*list(resnet.children())[:-1])
        self.projection_head = MoCoProjectionHead(512, 512, 128)
        if momentum:
            self.backbone_momentum = copy.deepcopy(self.backbone)
            self.projection_head_momentum = copy.deepcopy(self.projection_head)

    def training_step(self, batch, _):
        return self.projection_head(self.backbone(batch[0]).flatten(start_dim=1)).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.06)


def _lightning_save(module: L.LightningModule, path: Path) -> Path:
    """One training step with Lightning, then `Trainer.save_checkpoint` (what ModelCheckpoint writes)."""
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(4, 3, 32, 32)), batch_size=2)
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(path.parent),
    )
    trainer.fit(module, data)
    trainer.save_checkpoint(path)
    return path


def solo_learn_file(path: Path, num_classes: int = 10, omegaconf: bool = False) -> Path:
    hparams = {"method": "byol", "backbone": {"name": "resnet18"}, "data": {"dataset": "cifar10"}}
    if omegaconf:  # solo-learn saves its Hydra config: the file then needs arbitrary unpickling
        hparams = {"cfg": OmegaConf.create(hparams)}
    return _lightning_save(_SoloLearnLike(num_classes, hparams), path)


def lightly_file(path: Path, momentum: bool = True) -> Path:
    return _lightning_save(_LightlyExample(momentum), path)
