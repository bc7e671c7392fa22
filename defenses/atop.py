"""AToP: adversarial training on purification (Lin et al. 2024, ICLR, arXiv 2401.16352), papers.md section 4.

The deployed model is random transform -> purifier -> the frozen student classifier. Only the purifier (an
inpainting generator) and its discriminator are trained, in two stages, two defenses:

1. `purifier`: the GAN purifier pretrained on clean target images: hinge GAN loss + L1 reconstruction
   (L_df(x) of the paper). It starts from a trained classifier (`init_from: finetune`), which it never changes.
2. `atop`: the purifier fine-tuned on adversarial examples: L_df(x') + lambda * CE(f(g(t(x'))), y), the CE
   switched on after `cls_start_epoch` epochs, x' from FGSM on the classifier alone by default (as the code).

Random transforms, with the block grid and noise as in the code but scaled to the image size:
- RT1: the image is cut into `grid` x `grid` blocks and `mask_fraction` of them are masked; the purifier
  regenerates the image.
- RT2: Gaussian noise N(0, `noise_std`^2) added and clipped to [0, 1], then the RT1 mask.
- RT3: the RT2 noise, then `num_masks` disjoint masks that together cover every block; each masked copy is
  completed by the purifier and every block is taken from the copy in which it was masked.

Our choices: masks are drawn per example (the code shares one mask across a batch), so every example's
randomness is independent (EOT samples and K-draw scoring stay independent draws); the purifier's output is
the whole regenerated image in [0, 1] (as the code, which does not composite), fed to the classifier in the
same [0, 1] range in training and evaluation (the code mixes [-1, 1] and [0, 1]); the generator is a small
gated-convolution network (`GatedGenerator`), configurable through `generator` (any `_target_`) so that a
DeepFillv2-size one fits without a new defense.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra.utils import instantiate

from attacks.base import attack_mode
from attacks.errors import ConfigError, choose
from attacks.fgsm import FGSM
from defenses.base import AdversarialStudent, FrozenRandomness, TrainAttack

TRANSFORMS = ("rt1", "rt2", "rt3")


class GatedConv(nn.Module):
    """Gated convolution (Yu et al. 2019, DeepFillv2): features * sigmoid(gate)."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(cin, 2 * cout, k, stride, padding=dilation * (k - 1) // 2, dilation=dilation)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f, g = self.conv(x).chunk(2, dim=1)
        return (F.elu(f) if self.act else f) * torch.sigmoid(g)


class GatedGenerator(nn.Module):
    """A small gated-conv inpainting network: [masked image, ones, mask] -> the whole image in [0, 1].

    Encoder (one stride-2 step), dilated gated convolutions for context, decoder back to full size, and a
    skip connection from the first layer so that the unmasked pixels need not pass the bottleneck.

    Args:
        channels: image channels.
        cnum: base width (8: about 3M multiply-adds per 16x16 image, small enough for the CPU default; the
            code's DeepFillv2 uses 48).
    """

    def __init__(self, channels: int = 1, cnum: int = 8):
        super().__init__()
        self.stem = GatedConv(channels + 2, cnum, 5)
        self.down = nn.Sequential(
            GatedConv(cnum, 2 * cnum, 3, stride=2),
            GatedConv(2 * cnum, 2 * cnum, 3),
            GatedConv(2 * cnum, 2 * cnum, 3, dilation=2),
            GatedConv(2 * cnum, 2 * cnum, 3, dilation=4),
            GatedConv(2 * cnum, 2 * cnum, 3),
        )
        self.up = GatedConv(2 * cnum, cnum, 3)
        self.head = nn.Sequential(GatedConv(2 * cnum, cnum, 3), nn.Conv2d(cnum, channels, 3, padding=1))

    def forward(self, masked: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.stem(torch.cat([masked, torch.ones_like(mask), mask], dim=1))
        up = self.up(F.interpolate(self.down(h), size=h.shape[-2:], mode="nearest"))  # odd sizes too
        return torch.sigmoid(self.head(torch.cat([up, h], dim=1)))


class PatchDiscriminator(nn.Module):
    """SN-PatchGAN (Yu et al. 2019): spectral-normalized stride-2 convolutions on [image, mask], a score per patch.

    Args:
        channels: image channels.
        cnum: base width (8: about 3M multiply-adds per 16x16 image, small enough for the CPU default; the
            code's DeepFillv2 uses 48).
        depth: stride-2 layers (the patch size grows with it).
    """

    def __init__(self, channels: int = 1, cnum: int = 32, depth: int = 3):
        super().__init__()
        layers, cin = [], channels + 1
        for i in range(depth):
            cout = cnum * 2 ** min(i, 2)
            layers += [nn.utils.spectral_norm(nn.Conv2d(cin, cout, 5, 2, 2)), nn.LeakyReLU(0.2)]
            cin = cout
        layers.append(nn.utils.spectral_norm(nn.Conv2d(cin, 1, 3, 1, 1)))
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([image, mask], dim=1)).flatten(1)


class RandomTransform:
    """RT1 / RT2 / RT3 masks and noise, drawn per example; `generator` fixes the draws (frozen randomness)."""

    def __init__(
        self, kind: str = "rt2", grid: int = 8, mask_fraction: float = 0.25, noise_std: float = 0.25, num_masks: int = 4
    ):
        choose("transform", kind, TRANSFORMS)
        if not 0 < mask_fraction < 1 or grid < 2 or not 2 <= num_masks <= grid * grid:
            raise ConfigError("need 0 < mask_fraction < 1, grid >= 2 and 2 <= num_masks <= grid * grid")
        self.kind, self.grid, self.mask_fraction = kind, grid, mask_fraction
        self.noise_std, self.num_masks = noise_std, num_masks

    def _blocks_to_pixels(self, blocks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return F.interpolate(blocks, size=size, mode="nearest")

    def masks(self, x: torch.Tensor, generator: torch.Generator | None) -> list[torch.Tensor]:
        """Pixel masks (1 = masked) of shape (n, 1, H, W): one for RT1/RT2, `num_masks` disjoint ones for RT3."""
        n, g2 = len(x), self.grid * self.grid
        scores = torch.rand(n, g2, generator=generator, device=generator.device if generator else None).to(x.device)
        order = scores.argsort(dim=1)
        if self.kind == "rt3":
            groups = order.tensor_split(self.num_masks, dim=1)  # exactly num_masks groups (chunk may give fewer)
        else:
            groups = [order[:, : max(1, round(self.mask_fraction * g2))]]
        out = []
        for idx in groups:
            blocks = torch.zeros(n, g2, device=x.device).scatter_(1, idx, 1.0)
            out.append(self._blocks_to_pixels(blocks.view(n, 1, self.grid, self.grid), tuple(x.shape[-2:])))
        return out

    def noise(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if self.kind == "rt1" or self.noise_std == 0:
            return x
        z = torch.randn(x.shape, generator=generator, device=generator.device if generator else None).to(x.device)
        return (x + self.noise_std * z).clamp(0, 1)


class PurifiedClassifier(FrozenRandomness, nn.Module):
    """The deployed AToP model: random transform -> purifier -> classifier; [0, 1] images in, logits out.

    Randomized: every forward pass draws new masks and noise, unless inside `frozen(seed)`, where every pass
    uses the same draws (the sanity check "with the randomness frozen the attack must succeed").
    """

    def __init__(self, transform: RandomTransform, purifier: nn.Module, classifier: nn.Module):
        super().__init__()
        self.transform = transform
        self.purifier = purifier
        self.classifier = classifier

    def purify(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(purified image in [0, 1], mask of the regenerated pixels)."""
        g = self.seeded()
        noisy = self.transform.noise(x, g)
        masks = self.transform.masks(x, g)
        if len(masks) == 1:
            (m,) = masks
            return self.purifier(noisy * (1 - m), m), m
        out = sum(m * self.purifier(noisy * (1 - m), m) for m in masks)
        return out, torch.ones_like(masks[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.purify(x)[0])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(self.purify(x)[0])

    def bpda(self) -> nn.Module:
        """The same forward pass, with an identity backward through transform and purifier (BPDA)."""
        return _BPDAView(self)


class _BPDAView(nn.Module):
    def __init__(self, model: PurifiedClassifier):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        purified = self.model.purify(x)[0]
        return self.model.classifier(x + (purified - x).detach())


class AToP(AdversarialStudent):
    """AToP's purifier training around a frozen classifier; see the module docstring.

    Args:
        model: the classifier; its weights come from `init_from` (a trained student) and stay frozen.
        transform: rt1, rt2 or rt3; grid, mask_fraction, noise_std, num_masks: its parameters.
        generator: the purifier as a `_target_` config (default `GatedGenerator` for the data's channels).
        discriminator: likewise (default `PatchDiscriminator`).
        adversarial: stage 2 (fine-tuning on adversarial examples) instead of stage 1 (pretraining).
        cls_weight: lambda of the classifier's cross-entropy (0.05 in the CIFAR notebooks, 0.1 elsewhere).
        cls_start_epoch: the CE term is added from this epoch on (the code: epoch > 2).
        gan_weight, l1_weight: weights of the hinge GAN and L1 terms (1 and 1); at GAN weight 0 the discriminator
            is not trained (it could not move the generator).
        lr, betas: Adam for generator and discriminator (1e-4, (0.5, 0.999)).
        **kwargs: see `AdversarialStudent` and `StudentModule` (stage 1: no validation attack, selection on
            val/acc; stage 2: the training attack on the classifier alone, selection on val/robust_acc).
            `train_attack`: its budget (8/255 in the code) and steps: 1 (the default) for FGSM on the classifier
            alone, more for PGD on it.
    """

    randomized = True
    train_attack_defaults = {"steps": 1}  # the code's FGSM

    def __init__(
        self,
        model,
        transform: str = "rt2",
        grid: int = 8,
        mask_fraction: float = 0.25,
        noise_std: float = 0.25,
        num_masks: int = 4,
        generator: dict | None = None,
        discriminator: dict | None = None,
        adversarial: bool = False,
        cls_weight: float = 0.05,
        cls_start_epoch: int = 3,
        gan_weight: float = 1.0,
        l1_weight: float = 1.0,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.5, 0.999),
        **kwargs,
    ):
        if not adversarial:
            kwargs.setdefault("val_attack", None)
        kwargs["mode"] = "finetune"
        super().__init__(model, lr=lr, **kwargs)
        for p in self.model.parameters():
            p.requires_grad_(False)
        channels = self.model.mean.shape[1]
        self.transform = RandomTransform(transform, grid, mask_fraction, noise_std, num_masks)
        self.purifier = _network(generator) or GatedGenerator(channels)
        self.discriminator = _network(discriminator) or PatchDiscriminator(channels)
        self.adversarial, self.cls_weight, self.cls_start_epoch = adversarial, cls_weight, cls_start_epoch
        self.gan_weight, self.l1_weight, self.betas = gan_weight, l1_weight, tuple(betas)
        self.automatic_optimization = False  # the discriminator steps, then the generator

    def training_attack(self, settings: TrainAttack):
        # The code's FGSM, or PGD (full budget) for more steps; both on the classifier alone.
        return FGSM(settings.eps, settings.norm) if settings.steps == 1 else super().training_attack(settings)

    def deployed_model(self) -> PurifiedClassifier:
        return PurifiedClassifier(self.transform, self.purifier, self.model)

    def val_attack_model(self) -> nn.Module:
        return self.model  # the code's protocol: examples crafted on the classifier alone

    def representation(self, x: torch.Tensor) -> torch.Tensor:
        return self.deployed_model().features(x)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # the classifier is frozen, batch-norm statistics included
        return self

    def configure_optimizers(self):
        opt_g = torch.optim.Adam(self.purifier.parameters(), lr=self.hparams.lr, betas=self.betas)
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=self.hparams.lr, betas=self.betas)
        return [opt_g, opt_d]

    def manual_step(self, x, y):
        opt_g, opt_d = self.optimizers()
        if self.adversarial:
            with attack_mode(self.model):
                x = self.attack(self.model, x, y)
        deployed = self.deployed_model()
        fake, mask = deployed.purify(x)  # the reference ("real") is the input itself: clean, or adversarial
        loss_l1 = (x - fake).abs().mean()
        logits = self.model(fake)
        loss_g = self.l1_weight * loss_l1
        if self.gan_weight:  # at weight 0 the discriminator cannot move the generator: not trained (the same purifier)
            d_real, d_fake = self.discriminator(x, mask), self.discriminator(fake.detach(), mask)
            loss_d = 0.5 * F.relu(1 - d_real).mean() + 0.5 * F.relu(1 + d_fake).mean()
            opt_d.zero_grad()
            self.manual_backward(loss_d)
            opt_d.step()
            loss_gan = -self.discriminator(fake, mask).mean()
            loss_g = self.gan_weight * loss_gan + loss_g
            self.log_dict({"train/d": loss_d.detach(), "train/g_gan": loss_gan.detach()})
        if self.adversarial and self.current_epoch >= self.cls_start_epoch:
            loss_cls = F.cross_entropy(logits, y)
            loss_g = loss_g + self.cls_weight * loss_cls
            self.log("train/cls", loss_cls.detach())
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        opt_g.step()
        self.log("train/l1", loss_l1.detach())
        return loss_g.detach(), logits


def _network(spec) -> nn.Module | None:
    """A network given as a module or as a `_target_` config (None: the default)."""
    if spec is None or isinstance(spec, nn.Module):
        return spec
    return instantiate(spec)
