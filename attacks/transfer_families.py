"""The gradient and input-transformation families of transfer attacks as one iterative FGSM: MI, DI, TI, VMI.

Each family is an option of `MIFGSM`, so the field's combinations (MI-DI, MI-DI-TI, VMI-DI-TI, ...) are configs:

- MI (momentum; Dong et al. 2018, arXiv 1710.06081): `decay` mu > 0; `decay: 0` is I-FGSM (BIM).
- DI (input diversity; Xie et al. 2019, arXiv 1803.06978): `diversity_prob` p > 0.
- TI (translation invariance; Dong et al. 2019, arXiv 1904.02884): `ti_kernel_size` > 0.
- VMI (variance tuning; Wang & He 2021, arXiv 2103.15571): `vmi_samples` N > 0.

The intermediate-level family (ILA) is `attacks.ila.ILA`. Both are white-box attacks of the model they are called
with; `attacks.transfer.TransferAttack` runs them on a surrogate (`benchmark/configs/attack/transfer_*.yaml`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from attacks.base import LOSSES, Attack, Eps, Norm, attack_loss, check_steps, eps_tag, parse_eps
from attacks.errors import ConfigError, choose


def gaussian_kernel(size: int, nsig: float) -> torch.Tensor:
    """The TI authors' (and torchattacks') Gaussian kernel: the standard normal density at `size` points evenly
    spaced on [-nsig, nsig], outer product, normalized to sum 1; float64, (size, size)."""
    t = torch.linspace(-nsig, nsig, size, dtype=torch.float64)
    k1 = torch.exp(-(t**2) / 2) / math.sqrt(2 * math.pi)
    k2 = torch.outer(k1, k1)
    return k2 / k2.sum()


def l1_normalized(g: torch.Tensor) -> torch.Tensor:
    """g divided per example by its mean absolute value (MI-FGSM's L1 normalization, as torchattacks writes it: the
    mean instead of the sum is a constant factor, which neither the sign nor the momentum's direction sees). An
    all-zero gradient stays zero (torchattacks would divide 0 by 0)."""
    scale = g.abs().mean(dim=tuple(range(1, g.ndim)), keepdim=True)
    return g / scale.clamp_min(torch.finfo(g.dtype).tiny)


class MIFGSM(Attack):
    """Momentum iterative FGSM (Dong et al. 2018, arXiv 1710.06081) with the input-diversity (DI), translation-
    invariant (TI) and variance-tuning (VMI) extensions as options. L-inf only.

    Each of `steps` iterations takes the gradient g of the loss at x_t (at a randomly resized and padded copy of it
    with probability `diversity_prob`), adds the variance term v (VMI), smooths it with a Gaussian kernel (TI),
    normalizes it by its mean absolute value, accumulates it into the momentum m = mu * m + g / mean|g|, and steps
    x_{t+1} = clip_{x, eps}(x_t + step_size * sign(m)). No random start. With VMI, v for the next step is the mean
    gradient at `vmi_samples` neighbours x_t + U(-beta * eps, beta * eps) (not clipped to [0, 1], as in the
    authors' code) minus the gradient at x_t.

    Matches torchattacks 3.5.1 iterate for iterate, drawing the global RNG in the same order (given the same
    `step_size`, which torchattacks calls alpha and defaults to 2/255 with 10 steps; ours is eps / steps):
    `MIFGSM` (decay mu), `DIFGSM` (`diversity_prob`, `resize_rate`, decay; its default decay is 0), `TIFGSM`
    (`ti_kernel_size` = len_kernel, `ti_nsig` = nsig, with DI on by default there: its diversity_prob 0.5) and
    `VMIFGSM` (`vmi_samples` = N, whose default there is 5, the paper's 20; `vmi_beta` = beta). Differences: TI
    convolves each channel with the kernel (groups = the input's channels; torchattacks hard-codes 3, RGB only),
    and its size is ours to set (torchattacks' 15 px is the authors' choice for 299 px images); VMI combines with
    DI and TI as in the authors' VMI-DI-TI code (DI on the neighbours too, TI on g + v), which torchattacks lacks;
    an all-zero gradient stays zero (torchattacks divides it by its zero mean).

    Args:
        eps: the L-inf budget (a number or a fraction string such as "8/255").
        norm: linf (the only norm these attacks are defined for).
        steps: iterations T (>= 1; the papers' 10 at 299 px; the suite's transfer configs 20).
        step_size: the step alpha; default eps / steps (the papers': the iterations just reach the budget).
        decay: the momentum factor mu (>= 0; the paper's 1.0; 0 is I-FGSM, no momentum).
        diversity_prob: DI's probability p of taking the gradient at the transformed input (0: no DI; the paper's
            0.5). One transform per step for the whole batch, as in the authors' and torchattacks' code.
        resize_rate: DI's resize, torchattacks' convention: below 1 (0.9), the image is shrunk to rnd x rnd, rnd
            uniform in [int(0.9 W), W), and zero-padded at a random offset back to W x W (the model sees the input's
            size); above 1 (the paper's 330/299 = 1.1), it is resized to rnd in [W, int(1.1 W)) and padded to
            int(1.1 W) (the model must take larger images). Non-square images are resized by the same factor.
        ti_kernel_size: TI's Gaussian kernel size (0: no TI; else an odd size >= 3). The TI authors' 15 px (the VMI
            authors' code: 7 px) is for 299 px images; at 16-96 px use 5: with `ti_nsig` 3 a 3-px kernel puts 96 %
            of its weight on the centre pixel (next to no smoothing), 5 px is the smallest that smooths (sigma 2/3
            px).
        ti_nsig: the kernel spans [-nsig, nsig] standard deviations (the authors' and torchattacks' 3), so sigma is
            (ti_kernel_size - 1) / (2 * nsig) px.
        vmi_samples: VMI's number N of neighbours per step (0: no variance tuning; the paper's 20).
        vmi_beta: VMI's neighbourhood radius, in units of eps (the paper's 1.5).
        loss: ce (cross-entropy, the papers') or margin (CW margin).
    """

    name = "mifgsm"

    def __init__(
        self,
        eps: Eps,
        norm: Norm = "linf",
        steps: int = 10,
        step_size: Eps | None = None,
        decay: float = 1.0,
        diversity_prob: float = 0.0,
        resize_rate: float = 0.9,
        ti_kernel_size: int = 0,
        ti_nsig: float = 3.0,
        vmi_samples: int = 0,
        vmi_beta: float = 1.5,
        loss: str = "ce",
    ):
        super().__init__(eps, norm)
        if self.norm != "linf":
            raise ConfigError(f"{type(self).__name__} supports norm linf only, got {norm}")
        check_steps(steps, step_size)
        if not (isinstance(decay, (int, float)) and math.isfinite(decay) and decay >= 0):
            raise ConfigError(f"decay must be a finite number >= 0, got {decay}")
        if not (isinstance(diversity_prob, (int, float)) and 0 <= diversity_prob <= 1):
            raise ConfigError(f"diversity_prob must be in [0, 1], got {diversity_prob}")
        if not (isinstance(resize_rate, (int, float)) and math.isfinite(resize_rate) and 0 < resize_rate != 1):
            raise ConfigError(
                f"resize_rate must be a finite number > 0 other than 1 (e.g. 0.9 or 1.1), got {resize_rate}"
            )
        if ti_kernel_size != 0 and (
            int(ti_kernel_size) != ti_kernel_size or ti_kernel_size < 3 or ti_kernel_size % 2 == 0
        ):
            raise ConfigError(f"ti_kernel_size must be 0 (no TI) or an odd integer >= 3, got {ti_kernel_size}")
        if not (isinstance(ti_nsig, (int, float)) and math.isfinite(ti_nsig) and ti_nsig > 0):
            raise ConfigError(f"ti_nsig must be a finite number > 0, got {ti_nsig}")
        if int(vmi_samples) != vmi_samples or vmi_samples < 0:
            raise ConfigError(f"vmi_samples must be an integer >= 0 (0: no variance tuning), got {vmi_samples}")
        if not (isinstance(vmi_beta, (int, float)) and math.isfinite(vmi_beta) and vmi_beta > 0):
            raise ConfigError(f"vmi_beta must be a finite number > 0, got {vmi_beta}")
        choose("loss", loss, LOSSES)
        self.steps = int(steps)
        self.step_size = parse_eps(step_size) if step_size is not None else self.eps / self.steps
        self.decay = float(decay)
        self.diversity_prob = float(diversity_prob)
        self.resize_rate = float(resize_rate)
        self.ti_kernel_size = int(ti_kernel_size)
        self.ti_nsig = float(ti_nsig)
        self.vmi_samples = int(vmi_samples)
        self.vmi_beta = float(vmi_beta)
        self.loss = loss

    def derived_config(self) -> dict:
        # The default step stands for its value; a switched-off family's settings do not change the attack, so
        # they are recorded as None (MIFGSM(eps) and MIFGSM(eps, resize_rate=1.1) share a cache key).
        return {
            "step_size": self.step_size,
            **({} if self.diversity_prob > 0 else {"resize_rate": None}),
            **({} if self.ti_kernel_size else {"ti_nsig": None}),
            **({} if self.vmi_samples else {"vmi_beta": None}),
        }

    @property
    def family(self) -> str:
        """The field's name of the configured attack: mi_fgsm, di_fgsm, vmi_di_ti_fgsm, ... (i_fgsm: none)."""
        parts = ["vmi" if self.vmi_samples else "mi" if self.decay > 0 else ""]
        parts += ["di" if self.diversity_prob > 0 else "", "ti" if self.ti_kernel_size else ""]
        return "_".join([p for p in parts if p] or ["i"]) + "_fgsm"

    @property
    def label(self) -> str:
        return f"{self.family}_{self.norm}_{eps_tag(self.eps, self.norm)}"

    # ---- the pieces --------------------------------------------------------------------------------
    def _gradient(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss's gradient with respect to x, taken at DI's transform of x when DI is on."""
        x = x.detach().requires_grad_(True)
        logits = model(self._diverse(x) if self.diversity_prob > 0 else x)
        # Averaged over the batch as torchattacks does: the normalization removes the factor, but with it the
        # iterates are bit-identical to torchattacks' (with the sum, a rounding flips a sign now and then).
        (grad,) = torch.autograd.grad(attack_loss(logits, y, self.loss) / len(x), x)
        self.forward_passes += len(x)
        self.backward_passes += len(x)
        return grad

    def _diverse(self, x: torch.Tensor) -> torch.Tensor:
        """DI's random resize and pad, with probability `diversity_prob`; else x.

        The draws are torchattacks' (`DIFGSM.input_diversity`), in its order and on the CPU generator as there: the
        size, the top and left padding, then the coin, every step whether the transform is applied or not."""
        h, w = x.shape[-2:]
        lo, hi = sorted((w, int(w * self.resize_rate)))
        if lo >= hi or lo < 1:
            raise ConfigError(
                f"resize_rate {self.resize_rate:g} leaves no sizes to draw on {w}-px images "
                f"(int({w} * {self.resize_rate:g}) = {int(w * self.resize_rate)}); use a rate further from 1"
            )
        out_h = h if self.resize_rate < 1 else int(h * self.resize_rate)
        rnd = int(torch.randint(low=lo, high=hi, size=(1,), dtype=torch.int32))
        rnd_h = rnd if h == w else max(1, min(out_h, round(rnd * h / w)))
        w_rem, h_rem = hi - rnd, out_h - rnd_h
        top = int(torch.randint(low=0, high=max(h_rem, 1), size=(1,), dtype=torch.int32))
        left = int(torch.randint(low=0, high=w_rem, size=(1,), dtype=torch.int32))
        if not torch.rand(1) < self.diversity_prob:
            return x
        rescaled = F.interpolate(x, size=[rnd_h, rnd], mode="bilinear", align_corners=False)
        return F.pad(rescaled, [left, w_rem - left, top, h_rem - top], value=0)

    def _smooth(self, g: torch.Tensor) -> torch.Tensor:
        """TI: each channel of g convolved with the Gaussian kernel (zero padding, same size)."""
        channels = g.shape[1]
        kernel = gaussian_kernel(self.ti_kernel_size, self.ti_nsig).to(g.dtype).to(g.device)
        weight = kernel.expand(channels, 1, *kernel.shape)
        return F.conv2d(g, weight, stride=1, padding="same", groups=channels)

    def _neighbour_gradient(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """VMI: the mean gradient at `vmi_samples` uniform neighbours of x within vmi_beta * eps."""
        bound = self.eps * self.vmi_beta
        total = torch.zeros_like(x)
        for _ in range(self.vmi_samples):
            # torchattacks' draw: a normal tensor overwritten by uniform values, so the RNG advances as there.
            total += self._gradient(model, x + torch.randn_like(x).uniform_(-bound, bound), y)
        return total / self.vmi_samples

    # ---- the attack --------------------------------------------------------------------------------
    def perturb(self, model, x, y):
        momentum = torch.zeros_like(x)
        variance = torch.zeros_like(x)
        x_adv = x.clone()
        for _ in range(self.steps):
            grad = self._gradient(model, x_adv, y)
            g = grad + variance if self.vmi_samples else grad
            if self.ti_kernel_size:
                g = self._smooth(g)
            g = l1_normalized(g) + momentum * self.decay
            momentum = g
            if self.vmi_samples:
                variance = self._neighbour_gradient(model, x_adv, y) - grad
            x_adv = x_adv + self.step_size * g.sign()
            delta = torch.clamp(x_adv - x, min=-self.eps, max=self.eps)
            x_adv = torch.clamp(x + delta, min=0, max=1)
        return x_adv
