"""Self-supervised teachers: SimCLR, BYOL and MoCo v2 pre-training of a classifier's encoder, without labels.

The public model of paper 3's threat model (Gen-AF, arXiv 2403.10801) is a self-supervised encoder. These modules
pre-train `model.features` (the encoder: pre-logits of an `ImageClassifier`) on the source domain with `lightly`'s
building blocks: its view transforms, projection and prediction heads, losses and momentum utilities. lightly's own
benchmark modules are written for the `pytorch_lightning` package; only its torch pieces are used here, inside our
`lightning` LightningModule, so the suite's fit loop, checkpoint selection and caching stay as they are.

The encoder never sees a label. Its classification head is an *online linear probe* (solo-learn's practice; the
zoo checkpoints Gen-AF and AdvEncoder use carry one as `classifier.*`): a linear classifier trained on the
detached features of the clean source images, so its validation accuracy (`val/acc`, the source val split)
tells that the encoder is usable and picks the kept epoch, and the teacher's rows are the encoder with that probe.
Students load the `model.*` weights (encoder and probe) like any teacher's; the projection heads and momentum
copies stay here.

The two views are drawn per image by the lightly transform, on the CPU, in the training step (about 0.3 ms per
16x16 grey image and 1 ms per 32x32 colour image for both views): fine on this CPU; on a GPU it is the
bottleneck of CIFAR-size runs.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from lightly.loss import NegativeCosineSimilarity, NTXentLoss
from lightly.models.modules.heads import (
    BYOLPredictionHead,
    BYOLProjectionHead,
    MoCoProjectionHead,
    SimCLRProjectionHead,
)
from lightly.models.utils import deactivate_requires_grad, update_momentum
from lightly.transforms import MoCoV2Transform, SimCLRTransform
from lightly.transforms.byol_transform import BYOLTransform, BYOLView1Transform, BYOLView2Transform
from lightly.utils.scheduler import cosine_schedule
from torchvision.transforms.functional import to_pil_image

from attacks.errors import ConfigError
from lightning_modules.modules import ClassifierModule


def encoder_dim(model: nn.Module) -> int:
    """The width of the encoder's output (`features`)."""
    return int(model.backbone.num_features)


class SSLModule(ClassifierModule):
    """Base of the self-supervised teachers: two views per image, a method loss, an online linear probe.

    Args:
        model: an `ImageClassifier`; its encoder is pre-trained, its head is the online linear probe.
        transform: arguments of the method's lightly transform (`input_size` defaults to the image side;
            `normalize` is always None: the model normalizes inside).
        probe_weight: weight of the probe's cross-entropy (it only reaches the head: the features are detached).
        **kwargs: optimizer and scheduler arguments of `ClassifierModule` (`momentum` is SGD's; selection is by
            the probe's val/acc).
    """

    def __init__(self, model: nn.Module, transform: dict | None = None, probe_weight: float = 1.0, **kwargs):
        super().__init__(model, **kwargs)
        self.transform_args = dict(transform or {})
        if "normalize" in self.transform_args:
            raise ConfigError("ssl transform: 'normalize' is not an option (the model normalizes its inputs)")
        self.probe_weight = probe_weight
        self._transform = None

    # ---- views ---------------------------------------------------------------------------------
    def make_transform(self, args: dict[str, Any]):
        """The lightly transform of the method: one image in, a list of two views out."""
        raise NotImplementedError

    def views(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two augmented views of every image of a batch of [0, 1] images (each image drawn on its own)."""
        if self._transform is None:
            args = {"input_size": int(x.shape[-1]), **self.transform_args, "normalize": None}
            try:
                self._transform = self.make_transform(args)
            except TypeError as e:
                raise ConfigError(f"{type(self).__name__} transform: {e}") from None
        # lightly's transforms are written for PIL images (solarization is PIL-only): each image goes through one
        pairs = [self._transform(to_pil_image(img)) for img in x.detach().cpu()]
        v1 = torch.stack([p[0] for p in pairs]).to(x.device, x.dtype)
        v2 = torch.stack([p[1] for p in pairs]).to(x.device, x.dtype)
        return v1.clamp(0, 1), v2.clamp(0, 1)

    # ---- the loss ------------------------------------------------------------------------------
    def ssl_loss(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1, x2 = self.views(x)
        loss = self.ssl_loss(x1, x2)
        with torch.no_grad():  # the probe must not shape the encoder
            feats = self.model.features(x)
        logits = self.model.head(feats)
        self.log("train/ssl_loss", loss.detach(), prog_bar=True)
        return loss + self.probe_weight * F.cross_entropy(logits, y), logits

    def load_init_state(self, state) -> None:
        """Start from a common pre-trained model's weights; the momentum copies (BYOL, MoCo) start from them too."""
        super().load_init_state(state)
        for online, target in self.momentum_pairs():
            target.load_state_dict(online.state_dict())

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, momentum copy) pairs of the method (none for SimCLR)."""
        return []

    def on_train_batch_start(self, batch, batch_idx):
        if pairs := self.momentum_pairs():
            m = self.ema_momentum_at(self.momentum_start)
            for online, target in pairs:
                update_momentum(online, target, m)

    def ema_momentum_at(self, start: float) -> float:
        """The momentum of the target network at this step: cosine from `start` to 1 over the run."""
        total = max(1, int(self.trainer.estimated_stepping_batches))
        return cosine_schedule(self.global_step, total, start, 1.0)


class SimCLR(SSLModule):
    """SimCLR (Chen et al. 2020): NT-Xent between the projections of two views (lightly's CIFAR-10 recipe).

    Args:
        hidden_dim, output_dim: `SimCLRProjectionHead(encoder, hidden_dim, output_dim)` (lightly: 512, 128).
        temperature: NT-Xent temperature (lightly's benchmark: 0.5; solo-learn's CIFAR config: 0.2).
        transform: `SimCLRTransform` arguments.
    """

    def __init__(self, model, hidden_dim: int = 512, output_dim: int = 128, temperature: float = 0.5, **kwargs):
        super().__init__(model, **kwargs)
        self.projection = SimCLRProjectionHead(encoder_dim(model), hidden_dim, output_dim)
        self.criterion = NTXentLoss(temperature=temperature)

    def make_transform(self, args):
        return SimCLRTransform(**args)

    def ssl_loss(self, x1, x2):
        return self.criterion(self.projection(self.model.features(x1)), self.projection(self.model.features(x2)))


class BYOL(SSLModule):
    """BYOL (Grill et al. 2020): an online network predicts a momentum network's projection of the other view.

    Args:
        hidden_dim, output_dim: widths of the projection and prediction heads (lightly: 4096, 256 for ResNet-50;
            1024, 256 in its CIFAR-10 benchmark).
        ema_momentum: the target network's momentum at the start (cosine schedule to 1; lightly, solo-learn: 0.99).
        transform: arguments given to both `BYOLView1Transform` and `BYOLView2Transform`.
    """

    def __init__(self, model, hidden_dim: int = 1024, output_dim: int = 256, ema_momentum: float = 0.99, **kwargs):
        super().__init__(model, **kwargs)
        dim = encoder_dim(model)
        self.projection = BYOLProjectionHead(dim, hidden_dim, output_dim)
        self.prediction = BYOLPredictionHead(output_dim, hidden_dim, output_dim)
        self.momentum_start = ema_momentum
        self.target_model = _frozen_copy(self.model)
        self.target_projection = _frozen_copy(self.projection)
        self.criterion = NegativeCosineSimilarity()

    def make_transform(self, args):
        return BYOLTransform(BYOLView1Transform(**args), BYOLView2Transform(**args))

    def momentum_pairs(self):
        return [(self.model, self.target_model), (self.projection, self.target_projection)]

    def _target(self, x):
        with torch.no_grad():
            return self.target_projection(self.target_model.features(x))

    def ssl_loss(self, x1, x2):
        p1 = self.prediction(self.projection(self.model.features(x1)))
        p2 = self.prediction(self.projection(self.model.features(x2)))
        return 0.5 * (self.criterion(p1, self._target(x2)) + self.criterion(p2, self._target(x1)))


class MoCoV2(SSLModule):
    """MoCo v2 (Chen et al. 2020): queries against a momentum encoder's keys and a queue of past keys.

    Args:
        hidden_dim, output_dim: `MoCoProjectionHead(encoder, hidden_dim, output_dim)` (lightly: 512, 128).
        temperature: InfoNCE temperature (lightly's benchmark: 0.1; solo-learn: 0.2).
        memory_bank_size: the queue of negative keys (lightly's benchmark: 4096; solo-learn: 32768).
        ema_momentum: the key encoder's momentum at the start (cosine schedule to 1; solo-learn: 0.99).
        batch_norm: batch norm in the projection head (MoCo v2 has none, MoCo v3 has it). On the digits' small CNN
            the head without it loses every hidden unit within a few epochs and projects all images alike
            (measured: mean cosine 0.99 between the projections of different images, loss at the uniform level).
        transform: `MoCoV2Transform` arguments.
    """

    def __init__(
        self,
        model,
        hidden_dim: int = 512,
        output_dim: int = 128,
        temperature: float = 0.1,
        memory_bank_size: int = 4096,
        ema_momentum: float = 0.99,
        batch_norm: bool = False,
        **kwargs,
    ):
        super().__init__(model, **kwargs)
        self.projection = MoCoProjectionHead(encoder_dim(model), hidden_dim, output_dim, batch_norm=batch_norm)
        self.momentum_start = ema_momentum
        self.key_model = _frozen_copy(self.model)
        self.key_projection = _frozen_copy(self.projection)
        self.criterion = NTXentLoss(temperature=temperature, memory_bank_size=(memory_bank_size, output_dim))

    def make_transform(self, args):
        return MoCoV2Transform(**args)

    def momentum_pairs(self):
        return [(self.model, self.key_model), (self.projection, self.key_projection)]

    def ssl_loss(self, x1, x2):
        query = self.projection(self.model.features(x1))
        with torch.no_grad():
            key = self.key_projection(self.key_model.features(x2))
        return self.criterion(query, key)


def _frozen_copy(module: nn.Module) -> nn.Module:
    copied = copy.deepcopy(module)
    deactivate_requires_grad(copied)
    return copied
