"""Downstream-agnostic adversarial examples (DAEs): perturbations crafted on a pre-trained encoder alone.

Paper 3's threat model (Gen-AF, arXiv 2403.10801): a provider publishes a pre-trained encoder, users fine-tune it
downstream, and an attacker who holds only the encoder (no labels, no head, no downstream data) crafts inputs that
fool every downstream model. The attacks here read the surrogate's encoder only: `model.features(x)` (the
penultimate representation of an `ImageClassifier`) or the output of one of its layers (`layer`, a module name
such as `backbone.features.2`), never its logits.

- `FeatureUAP`: one perturbation that minimizes the cosine similarity of clean and perturbed features (threats.md
  3.4: what AdvEncoder's `cos` criterion intends, with the similarity taken per example).
- `SSPUniversal`: PAP's universal SSP, `MSE(a_l(x)^2, a_l(x + d)^2)` at one layer (`banyuanhao/PAP`, utils/ssp.py).
- `SSP`: Naseer et al.'s per-sample self-supervised perturbation (`Muzammal-Naseer/NRP`, ssp.py): each input's
  own perturbation maximizing `MSE(a_l(x'), a_l(x))`; crafted on the encoder for the attacked inputs themselves.
- `L4A`: PAP / L4A (Ban & Dong 2022): lift the activations of low-level layers, variants `base`, `fuse`, `ugs`.
- AdvEncoder's generator perturbation and patch (Zhou et al. 2023): `attacks.advencoder`.

Left out: the DeepFool UAP (it needs the pre-training label head, which an SSL encoder does not have).

The universal attacks are fitted once per encoder on data the attacker holds (`attacker_data`, set by the runner:
the source domain's training split, never the test split), then the same perturbation is added to every input.
Every perturbed image is clamped to [0, 1], in fitting and in use, and checked like any other x_adv; AdvEncoder and
PAP do not clamp (threats.md 3.5), so their numbers are not directly comparable with ours.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F

from attacks.base import Attack, Eps, Norm, check_steps, read_out
from attacks.errors import ConfigError, choose

SURROGATES = ("teacher", "common")
L4A_VARIANTS = ("base", "fuse", "ugs")


@contextmanager
def captured(model: nn.Module, layers: list[str]):
    """Record the outputs of the named submodules of `model` during the forward passes inside the block."""
    names = dict(model.named_modules())
    for layer in layers:
        if layer not in names:
            valid = [n for n in names if n and n.count(".") <= 2][:12]
            raise ConfigError(f"layer '{layer}' is not a module of {type(model).__name__}; e.g. {', '.join(valid)}")
    store: dict[str, torch.Tensor] = {}
    hooks = [names[n].register_forward_hook(lambda m, i, o, n=n: store.__setitem__(n, read_out(o))) for n in layers]
    try:
        yield store
    finally:
        for h in hooks:
            h.remove()


def encoder_of(model: nn.Module):
    """The encoder of a surrogate: its `features` method (the representation a downstream head reads)."""
    features = getattr(model, "features", None)
    if not callable(features):
        raise ConfigError(f"a downstream-agnostic attack needs an encoder: {type(model).__name__} has no features(x)")
    return features


class AttackerImages:
    """The attacker's images, kept where they are (a CPU tensor, or `LazyImages` read on access) and moved to the
    device one batch at a time: a fit never puts the whole attacker set on the device, nor reads it all at once."""

    def __init__(self, images, device):
        self.images, self.device = images, torch.device(device)
        self.shape = tuple(images.shape)

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, index: torch.Tensor) -> torch.Tensor:
        if isinstance(self.images, torch.Tensor):
            index = index.to(self.images.device)
        return self.images[index].to(self.device)


class EncoderAttack(Attack):
    """Base of the attacks crafted on an encoder alone: crafted once on the surrogate, scored on every student.

    Args:
        eps: the budget.
        norm: linf or l2.
        layer: the module whose output the loss reads (None: the encoder's output, `features(x)`).
        surrogate: the model the attacker holds: the `teacher`, or the `common` pre-trained model of CommonInit.
    """

    crafted = True
    threat_model = "agnostic"

    def __init__(self, eps: Eps, norm: Norm = "linf", layer: str | None = None, surrogate: str = "teacher"):
        choose("surrogate", surrogate, SURROGATES)
        super().__init__(eps, norm)
        self.layer = layer
        self.surrogate_name = surrogate
        self.surrogate: nn.Module | None = None
        self.attacker_data: tuple[torch.Tensor, torch.Tensor] | None = None

    def activations(self, model: nn.Module, x: torch.Tensor, layers: list[str | None] | None = None) -> list:
        """The outputs of `layers` (default: [self.layer]) for x; None stands for the encoder's output."""
        layers = [self.layer] if layers is None else layers
        named = [n for n in layers if n is not None]
        with captured(model, named) as store:
            out = encoder_of(model)(x)
        self.forward_passes += len(x)
        return [out if n is None else store[n] for n in layers]

    def project_delta(self, delta: torch.Tensor) -> torch.Tensor:
        """A perturbation onto the eps ball (for the whole batch of one or more perturbations)."""
        if self.norm == "linf":
            return delta.clamp(-self.eps, self.eps)
        n = delta.flatten(1).norm(dim=1).view(-1, *([1] * (delta.ndim - 1)))
        return delta * (self.eps / n.clamp_min(1e-12)).clamp(max=1.0)


class UniversalAttack(EncoderAttack):
    """A universal perturbation: one `delta` for every input, fitted on the attacker's data, then added to each.

    Subclasses define `objective(model, x, x_adv, clean)` (maximized; `clean` holds `clean_activations`) or a
    whole `fit`. The default fit is PAP's: delta from U(-eps, eps), one steepest-ascent step per mini-batch of
    `batch_size` attacker images, `epochs` passes over them.

    Args:
        eps, norm, layer, surrogate: see `EncoderAttack`.
        epochs: passes over the attacker's data.
        batch_size: attacker images per step.
        step_size: the step (None: eps / 10, threats.md 3.4; PAP takes 2e-4 for thousands of ImageNet batches).
        max_examples: fit on at most this many attacker images (None: all).
        seed: the fit's randomness (start, order).
    """

    #: Whose data the attacker fits on: the source domain's training split, the public pre-training data (AdvEncoder
    #: and PAP fit on a surrogate dataset, not the downstream one). The runner reads it when it sets `attacker_data`.
    attacker_domain = "source"

    def __init__(
        self,
        eps: Eps,
        norm: Norm = "linf",
        layer: str | None = None,
        epochs: int = 5,
        batch_size: int = 64,
        step_size: float | None = None,
        max_examples: int | None = None,
        seed: int = 0,
        surrogate: str = "teacher",
    ):
        super().__init__(eps, norm, layer, surrogate)
        if int(epochs) != epochs or epochs < 1 or int(batch_size) != batch_size or batch_size < 1:
            raise ConfigError(f"epochs and batch_size must be integers >= 1, got {epochs} and {batch_size}")
        self.epochs, self.batch_size = int(epochs), int(batch_size)
        self.step_size = eps_step = self.eps / 10 if step_size is None else float(step_size)
        if eps_step <= 0 and self.eps > 0:
            raise ConfigError(f"step_size must be > 0, got {step_size}")
        self.max_examples, self.seed = max_examples, seed
        self.delta: torch.Tensor | None = None  # the fitted perturbation, (1, C, H, W)
        self._fitted_on: int | None = None

    def derived_config(self) -> dict:
        return {"step_size": self.step_size}

    # ---- fitting -------------------------------------------------------------------------------
    def attacker_images(self, device) -> AttackerImages:
        if self.attacker_data is None:
            raise RuntimeError(
                f"{type(self).__name__}: attacker_data is not set; a universal perturbation is fitted on data the "
                "attacker holds (the runner sets the source training split), never on the test inputs"
            )
        x = self.attacker_data[0] if isinstance(self.attacker_data, (tuple, list)) else self.attacker_data
        return AttackerImages(x if self.max_examples is None else x[: self.max_examples], device)

    def batches(self, x: AttackerImages, g: torch.Generator):
        for _ in range(self.epochs):
            order = torch.randperm(len(x), generator=g)
            for i in range(0, len(x), self.batch_size):
                yield x.batch(order[i : i + self.batch_size])

    def initial_delta(self, shape, g: torch.Generator, device) -> torch.Tensor:
        if self.norm == "linf":
            return ((torch.rand(shape, generator=g) * 2 - 1) * self.eps).to(device)
        d = torch.randn(shape, generator=g)
        return (d * self.eps / d.norm().clamp_min(1e-12)).to(device)

    def clean_activations(self, model: nn.Module, x: torch.Tensor):
        """What the objective compares against (computed once per batch, without gradients); None if nothing."""
        return None

    def objective(self, model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, clean) -> torch.Tensor:
        raise NotImplementedError

    def fit(self, model: nn.Module, x: AttackerImages) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed)
        delta = self.initial_delta((1, *x.shape[1:]), g, x.device)
        for xb in self.batches(x, g):
            with torch.no_grad():
                clean = self.clean_activations(model, xb)
            d = delta.detach().requires_grad_(True)
            self._delta = d  # the perturbation itself, for objectives that add it to other images (L4A ugs)
            loss = self.objective(model, xb, (xb + d).clamp(0, 1), clean)
            (grad,) = torch.autograd.grad(loss, d)
            self.backward_passes += len(xb)
            delta = self.project_delta(self.step(delta, grad, self.step_size))
        return delta.detach()

    def fitted(self, model: nn.Module, device) -> torch.Tensor:
        if self.delta is None or self._fitted_on != id(model):
            self.delta = self.fit(model, self.attacker_images(device))
            self._fitted_on = id(model)
        return self.delta

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x + self.fitted(model, x.device).to(x.dtype)).clamp(0, 1)


class FeatureUAP(UniversalAttack):
    """Feature-space UAP: minimize mean_i cos(E(x_i), E(x_i + d)) over the attacker's data (threats.md 3.4)."""

    name = "uap_feature"

    def clean_activations(self, model, x):
        return self.activations(model, x)[0].flatten(1)

    def objective(self, model, x, x_adv, clean):
        adv = self.activations(model, x_adv)[0].flatten(1)
        return -F.cosine_similarity(adv, clean, dim=1).mean()


class SSPUniversal(UniversalAttack):
    """PAP's universal SSP: maximize MSE(a_l(x)^2, a_l(x + d)^2) at one layer (PAP's SimCLR choice: stage 2)."""

    name = "ssp_universal"

    def clean_activations(self, model, x):
        return self.activations(model, x)[0] ** 2

    def objective(self, model, x, x_adv, clean):
        return F.mse_loss(self.activations(model, x_adv)[0] ** 2, clean)


class L4A(UniversalAttack):
    """PAP / L4A (Ban & Dong, NeurIPS'22): lift the mean squared activation of low-level layers.

    Variants: `base` maximizes mean(a_l(x + d)^2) at `layer`; `fuse` adds `lam` * the same at `layer2`; `ugs`
    concatenates `noise_images` Gaussian images to each batch (per-channel mean from U[0.4, 0.6], std from
    U[0.05, 0.10], redrawn every `resample_every` steps) and maximizes mean(a^2 on noise) + `lam` * mean(a^2 on
    real). Authors: eps 0.05, step 2e-4, batch 16, the stem of SimCLRv2 ResNets, lam 0.01 for ugs.
    """

    name = "l4a"

    def __init__(
        self,
        eps: Eps,
        norm: Norm = "linf",
        layer: str | None = None,
        variant: str = "base",
        layer2: str | None = None,
        lam: float = 0.01,
        noise_images: int = 8,
        resample_every: int = 20,
        epochs: int = 5,
        batch_size: int = 64,
        step_size: float | None = None,
        max_examples: int | None = None,
        seed: int = 0,
        surrogate: str = "teacher",
    ):
        choose("l4a variant", variant, L4A_VARIANTS)
        if layer is None:
            raise ConfigError("l4a needs `layer`: a low-level module of the surrogate (e.g. backbone.features.2)")
        if variant == "fuse" and layer2 is None:
            raise ConfigError("l4a variant 'fuse' needs `layer2`")
        super().__init__(eps, norm, layer, epochs, batch_size, step_size, max_examples, seed, surrogate)
        self.variant, self.layer2, self.lam = variant, layer2, float(lam)
        self.noise_images, self.resample_every = int(noise_images), int(resample_every)
        self._steps = 0
        self._noise_stats: tuple[torch.Tensor, torch.Tensor] | None = None

    def _noise(self, x: torch.Tensor) -> torch.Tensor:
        if self._noise_stats is None or self._steps % self.resample_every == 0:
            c = x.shape[1]
            self._noise_stats = (torch.rand(c) * 0.2 + 0.4, torch.rand(c) * 0.05 + 0.05)
        mean, std = (s.view(1, -1, 1, 1).to(x) for s in self._noise_stats)
        return (torch.randn(self.noise_images, *x.shape[1:], device=x.device) * std + mean).clamp(0, 1)

    def objective(self, model, x, x_adv, clean):
        if self.variant == "ugs":
            noisy = (self._noise(x) + self._delta).clamp(0, 1)
            self._steps += 1
            a = self.activations(model, torch.cat([noisy, x_adv]))[0]
            return (a[: self.noise_images] ** 2).mean() + self.lam * (a[self.noise_images :] ** 2).mean()
        layers = [self.layer] + ([self.layer2] if self.variant == "fuse" else [])
        acts = self.activations(model, x_adv, layers)
        loss = (acts[0] ** 2).mean()
        return loss + self.lam * (acts[1] ** 2).mean() if self.variant == "fuse" else loss


class SSP(EncoderAttack):
    """Naseer et al.'s self-supervised perturbation (CVPR'20), per sample: maximize MSE(a_l(x'), a_l(x)) with
    sign steps from a random start in the box (their x' = randn, projected after the first step); 100 steps of
    0.01 at eps 16/255 in their code. No labels; crafted on the encoder for the attacked inputs."""

    name = "ssp"

    def __init__(
        self,
        eps: Eps,
        norm: Norm = "linf",
        layer: str | None = None,
        steps: int = 100,
        step_size: float = 0.01,
        surrogate: str = "teacher",
    ):
        super().__init__(eps, norm, layer, surrogate)
        self.steps, self.step_size = check_steps(steps), float(step_size)

    def perturb(self, model, x, y):
        with torch.no_grad():
            clean = self.activations(model, x)[0]
        x_adv = self.project(torch.randn_like(x), x)
        for _ in range(self.steps):
            x_adv = x_adv.detach().requires_grad_(True)
            loss = F.mse_loss(self.activations(model, x_adv)[0], clean, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
            self.backward_passes += len(x)
            x_adv = self.project(self.step(x_adv.detach(), grad, self.step_size), x)
        return x_adv
