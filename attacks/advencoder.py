"""AdvEncoder (Zhou et al., ICCV'23, `CGCL-codes/AdvEncoder`): a generator's universal perturbation (PER) or patch
(PAT) against a pre-trained encoder, fitted on the attacker's data with the encoder alone.

Both train a DCGAN generator from a fixed noise batch with one loss (minimized over the generator):
alpha * (-InfoNCE(E(x), E(x')) + MSE(x', x) - MSE(HFC(x'), HFC(x)), InfoNCE with temperature 0.1 over L2-normalized
features, each image's clean and perturbed features as the positive pair and the other images' perturbed features
as negatives. Authors: alpha 5, Adam 2e-4 (0.5, 0.999), 20 epochs, batch 256 (= the fixed noise batch), 64 px
images, HFC radius 8, seed 100. Here the radius scales with the image side (`radius` None: 8 * side / 64) and
every image is in [0, 1] (the authors clamp neither the perturbed image nor the patch to it: threats.md 3.5, 0.2).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from attacks.base import Eps, Norm, parse_eps, patch_side
from attacks.errors import ConfigError
from attacks.universal import UniversalAttack

#: The side AdvEncoder's authors generate at (64 px); larger images get the generator's output resized, so its
#: size does not grow with the image (doubling the width per upsampling, it had about 185 M parameters at 224 px).
GENERATOR_SIDE = 64


class Generator(nn.Module):
    """AdvEncoder's DCGAN generator: a fixed noise batch z -> images, collapsed into one perturbation.

    ConvTranspose stack from 4x4 to the image side, at most `GENERATOR_SIDE` (the authors': 100 -> 1024 -> 512 ->
    256 -> 128 -> 3 for 64 px, i.e. `ngf` 128), batch norm and ReLU, tanh; then a Conv2d(z_batch -> 1, k3) over the
    batch axis; for images larger than 64 px that one perturbation is resized (bilinear) to the image.
    """

    def __init__(self, channels: int, size: tuple[int, int], nz: int = 100, ngf: int = 128, z_batch: int = 256):
        super().__init__()
        self.side = min(max(size), GENERATOR_SIDE)  # larger images: generated at the authors' side, then resized
        ups = max(1, math.ceil(math.log2(self.side / 4)))
        widths = [ngf * 2 ** (ups - 1 - i) for i in range(ups)]
        layers: list[nn.Module] = [nn.ConvTranspose2d(nz, widths[0], 4, 1, 0, bias=False)]
        layers += [nn.BatchNorm2d(widths[0]), nn.ReLU(True)]
        for cin, cout in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.collapse = nn.Conv2d(z_batch, 1, 3, padding=1)
        self.size = size

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        images = self.net(z)
        if max(self.size) > self.side:  # one perturbation generated at 64 px, resized to the image (authors' way)
            out = self.collapse(images.transpose(0, 1)).transpose(0, 1)
            return F.interpolate(out, size=tuple(self.size), mode="bilinear", align_corners=False)
        if tuple(images.shape[-2:]) != tuple(self.size):
            images = F.interpolate(images, size=tuple(self.size), mode="bilinear", align_corners=False)
        return self.collapse(images.transpose(0, 1)).transpose(0, 1)  # (1, C, H, W)


def high_frequency(x: torch.Tensor, radius: float) -> torch.Tensor:
    """AdvEncoder's HFC: zero the frequencies within `radius` of the centre of the shifted spectrum."""
    h, w = x.shape[-2:]
    spectrum = torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))
    yy, xx = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    keep = ((yy - h // 2) ** 2 + (xx - w // 2) ** 2) > radius**2
    return torch.fft.ifft2(torch.fft.ifftshift(spectrum * keep, dim=(-2, -1))).real


class AdvEncoderPER(UniversalAttack):
    """AdvEncoder-PER: the generator's output, projected onto the eps ball, added to every input (authors: eps
    10/255, here the suite's grid).

    Args:
        eps, norm, max_examples, seed, surrogate: see `UniversalAttack`.
        epochs, batch_size: passes over the attacker's data; images per step (= the fixed noise batch).
        lr, alpha, temperature, radius: Adam's learning rate, the InfoNCE weight and temperature, the HFC radius.
        ngf, nz: the generator's width and noise size.
    """

    name = "advencoder_per"

    def __init__(
        self,
        eps: Eps,
        norm: Norm = "linf",
        epochs: int = 20,
        batch_size: int = 256,
        lr: float = 2e-4,
        alpha: float = 5.0,
        temperature: float = 0.1,
        radius: float | None = None,
        ngf: int = 128,
        nz: int = 100,
        max_examples: int | None = None,
        seed: int = 100,
        surrogate: str = "teacher",
    ):
        super().__init__(eps, norm, None, epochs, batch_size, None, max_examples, seed, surrogate)
        self.lr, self.alpha, self.temperature = float(lr), float(alpha), float(temperature)
        self.radius, self.ngf, self.nz = radius, int(ngf), int(nz)

    def derived_config(self) -> dict:
        return {}

    def perturbation(self, generated: torch.Tensor) -> torch.Tensor:
        """What the generator's output becomes (PER: the perturbation in the eps ball)."""
        return self.project_delta(generated)

    def apply(self, x: torch.Tensor, perturbation: torch.Tensor) -> torch.Tensor:
        return (x + perturbation.to(x.dtype)).clamp(0, 1)

    def perturb(self, model, x, y):
        return self.apply(x, self.fitted(model, x.device))

    def fit(self, model, x):
        g = torch.Generator().manual_seed(self.seed)
        c, size = x.shape[1], tuple(x.shape[-2:])  # x: the attacker's images (`AttackerImages`)
        radius = 8 * max(size) / 64 if self.radius is None else self.radius
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            gen = Generator(c, size, self.nz, self.ngf, self.batch_size).to(x.device)
        z = torch.randn(self.batch_size, self.nz, 1, 1, generator=g).to(x.device)
        opt = torch.optim.Adam(gen.parameters(), lr=self.lr, betas=(0.5, 0.999))
        gen.train()
        for xb in self.batches(x, g):
            with torch.no_grad():
                clean = F.normalize(self.activations(model, xb)[0].flatten(1), dim=1)
            x_adv = self.apply(xb, self.perturbation(gen(z)))
            adv = F.normalize(self.activations(model, x_adv)[0].flatten(1), dim=1)
            info_nce = F.cross_entropy(clean @ adv.T / self.temperature, torch.arange(len(xb), device=xb.device))
            hfc = F.mse_loss(high_frequency(x_adv, radius), high_frequency(xb, radius))
            loss = self.alpha * -info_nce + F.mse_loss(x_adv, xb) - hfc
            opt.zero_grad()
            loss.backward()
            opt.step()
            self.backward_passes += len(xb)
        with torch.no_grad():
            return self.perturbation(gen(z)).detach()


class AdvEncoderPAT(AdvEncoderPER):
    """AdvEncoder-PAT: the generator's output, mapped onto (0, 1) by (tanh + 1) / 2, pasted as one square patch on
    every input.

    Its budget is not an L-p ball but the patch: `eps` is the patch's area as a fraction of the image (the
    authors' `noise_percentage` 0.03: 11 x 11 px on 64 x 64), and `check_adversarial(..., "patch", eps)` checks
    that every changed pixel lies in one square of side `patch_side(eps, H, W)`. Its rows form their own budget
    group (`norm` "patch") in the per-example worst case.

    Args:
        eps: the patch's area fraction, in [0, 1] (0: no patch).
        position: the patch's top-left (row, col); None: the authors' fixed place, row = H - 14 H / 64 - side
            (rows and columns 39..49 at 64 px; threats.md 0.2; 0 if that is negative), and the same for the column.
            Not random: the authors paste it at one place, so it is one perturbation for every input.
        the rest: see `AdvEncoderPER` (no `norm`).
    """

    name = "advencoder_pat"

    def __init__(
        self,
        eps: Eps = 0.03,
        position: list[int] | None = None,
        epochs: int = 20,
        batch_size: int = 256,
        lr: float = 2e-4,
        alpha: float = 5.0,
        temperature: float = 0.1,
        radius: float | None = None,
        ngf: int = 128,
        nz: int = 100,
        max_examples: int | None = None,
        seed: int = 100,
        surrogate: str = "teacher",
    ):
        area = parse_eps(eps)
        if area > 1:
            raise ConfigError(f"advencoder_pat: eps is the patch's area fraction, in [0, 1]; got {eps}")
        if position is not None and (len(position) != 2 or any(int(p) != p or p < 0 for p in position)):
            raise ConfigError(f"advencoder_pat: position is [row, col] of the patch's top-left, got {position}")
        super().__init__(area, "linf", epochs, batch_size, lr, alpha, temperature, radius, ngf, nz, max_examples, seed,
                         surrogate)  # fmt: skip
        self.norm = "patch"  # `check_adversarial` checks the patch budget
        self.position = None if position is None else (int(position[0]), int(position[1]))

    def mask(self, like: torch.Tensor) -> torch.Tensor:
        """1 on the patch, 0 elsewhere, (1, 1, H, W)."""
        h, w = like.shape[-2:]
        side = patch_side(self.eps, h, w)
        row, col = self.position or (max(0, h - round(14 * h / 64) - side), max(0, w - round(14 * w / 64) - side))
        if not (0 <= row <= h - side and 0 <= col <= w - side):
            raise ConfigError(f"advencoder_pat: a {side} px patch at ({row}, {col}) leaves the {h} x {w} image")
        mask = torch.zeros(1, 1, h, w, device=like.device, dtype=like.dtype)
        mask[..., row : row + side, col : col + side] = 1
        return mask

    def perturbation(self, generated):
        # The patch's pixels: (tanh + 1) / 2 maps the generator's output onto (0, 1) smoothly; a clamp to [0, 1]
        # would give the pixels below 0 or above 1 no gradient (about half of them at the start).
        return (torch.tanh(generated) + 1) / 2

    def apply(self, x, perturbation):
        return torch.where(self.mask(x).bool(), perturbation.to(x.dtype), x)
