"""The mimicry attack on the teacher's layer K (Wang et al., USENIX Security 2018, "With Great Training Comes Great
Vulnerability"; code `bolunwang/translearn`), the attack paper 2 (Wu et al., arXiv 1908.11230) defends against.

A student copies a public teacher's first K layers and retrains the rest. The attacker holds only the teacher: it
crafts x' close to a source image x_s whose layer-K representation mimics that of a target image x_t, so that any
student built on those layers takes x' for x_t's class. Crafted once on the teacher, scored on every student
(`Attack.crafted`).

Two budgets:

- `dssim` (the authors', `mimic_penalty_dssim.py`): x' = tanh(w + atanh((x_s - 0.5)(2 - 1e-6))) / (2 - 1e-6) + 0.5,
  w from 1e-6, minimize penalty * max(DSSIM(x', x_s) - P, 0)^2 + ||T_K(x') - T_K(x_t)||_2 (the distance, not its
  square) with Adadelta (lr 1, rho 0.95, eps 1e-8: TF1's defaults, not PyTorch's), and return the iterate with the
  smallest feature distance among those with DSSIM < P (strictly), evaluated after every step. The authors: 2000
  steps, penalty 1e10, P = 0.003 behind their published adversarial set (0.001 in the demo script). When no iterate
  is within budget their code returns the dataset-mean image; here x_s is returned (the attack failed).
- `linf` / `l2` (ours, threats.md 1.5): PGD from x_s, without random start, descending the same feature distance
  inside the eps ball (steepest-descent steps of `step_size`, default eps / 4), keeping the iterate with the smallest
  distance. This puts mimicry on the suite's epsilon grid and into the per-example worst case.

`quantize` (any budget) rounds x' to the 8-bit grid as the authors' `clipping()` does and re-checks the budget, x_s
where rounding breaks it; it only makes sense for 8-bit source images (CIFAR's test split, not interpolated digits).

Targets come from the data the attacker holds (`attacker_data`, the target domain's training split set by the
runner), never from the test example itself:

- targeted (the authors' protocol draws random ordered source/target class pairs): each source gets a target class
  drawn uniformly among the other classes and a target image of that class drawn uniformly from the attacker's data.
  The draws are keyed on the source image's pixels and `seed` (`target_classes`), so they do not depend on batching
  and the runner can recompute which class each example was pushed to (targeted success rate);
- non-targeted (ours; the authors' code has none): the target is the attacker's image of another class whose layer-K
  representation is closest to the source's, the cheapest one to mimic.

Layer K (`layer`): a module name of the model or of its backbone, or a list of them (a student's `feature_layers`,
whose last entry is the boundary); `pre_logits` for the penultimate representation. The paper bodies of Wang et al.
and Wu et al. could not be read (`../shared/threats.md` section 0-2): the choices marked ours are config options.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from attacks.base import Attack, Eps, check_steps, lp_norm, parse_eps, read_out
from attacks.errors import ConfigError, choose
from attacks.ms_ssim import dssim

BUDGETS = ("linf", "l2", "dssim")
#: The authors' tanh constant: keeps atanh finite at pixel values 0 and 1.
TANH_CONSTANT = 2 - 1e-6


def _rows(images, start: int, n: int) -> torch.Tensor:
    """Rows start..start+n of a tensor or of `LazyImages` (read now), as a tensor."""
    return images[torch.arange(start, min(start + n, len(images)))]


def resolve_layer(layer: str | Sequence[str]) -> str:
    """The layer name a config gives: a name, or the last of a list (a student's `feature_layers`)."""
    if isinstance(layer, str):
        return layer
    names = list(layer)
    if not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"layer must be a module name or a non-empty list of them, got {layer!r}")
    return names[-1]


def layer_function(model: nn.Module, layer: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """x -> the output of `layer` of `model` ([0, 1] images in), by a forward hook; `pre_logits`: `model.features`."""
    if layer == "pre_logits":
        return model.features
    module = None
    for owner in (model, getattr(model, "backbone", None)):
        if owner is None:
            continue
        try:
            module = owner.get_submodule(layer)
            break
        except AttributeError:
            continue
    if module is None:
        backbone = getattr(model, "backbone", model)
        valid = ", ".join(["pre_logits", *(n for n, _ in backbone.named_children())])
        raise ConfigError(f"layer '{layer}' is no module of {type(backbone).__name__}; valid: {valid}")

    def stop(_module, _inputs, out):
        raise _Reached(read_out(out))  # the layers after K are not needed: skip them

    def forward(x: torch.Tensor) -> torch.Tensor:
        handle = module.register_forward_hook(stop)
        try:
            model(x)
        except _Reached as reached:
            return reached.output
        finally:
            handle.remove()
        raise RuntimeError(f"layer '{layer}' was not run by {type(model).__name__}'s forward pass")

    return forward


class _Reached(Exception):
    """Carries layer K's output out of the forward pass (`layer_function`)."""

    def __init__(self, output: torch.Tensor):
        super().__init__()
        self.output = output


def feature_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-example L2 distance of two batches of representations (the authors' `bottlesim`)."""
    return (a - b).flatten(1).pow(2).sum(1).sqrt()


class MimicryAttack(Attack):
    """Mimic a target image's layer-K representation on the teacher; see the module docstring.

    Args:
        eps: the budget: the DSSIM threshold P for `dssim`, the ball's radius for `linf` / `l2`.
        norm: dssim, linf or l2.
        layer: layer K (a module name, a list whose last entry is used, or `pre_logits`).
        targeted: a random other class's image (targeted) or the nearest other-class image in layer K (not).
        steps: Adadelta iterations (dssim; the authors' 2000) or PGD steps (linf / l2).
        step_size: PGD's step (default eps / 4); unused by dssim.
        penalty: the weight of max(DSSIM - P, 0)^2 (the authors' 1e10: a hard constraint in practice).
        lr, rho, adadelta_eps: Adadelta's settings (the authors': 1, and TF1's 0.95 and 1e-8).
        quantize: round x' to the 8-bit grid and re-check the budget.
        seed: keys the target draws.
        surrogate: the model the attacker holds (the teacher).
    """

    name = "mimicry"
    crafted = True
    threat_model = "mimicry"

    def __init__(
        self,
        eps: Eps,
        norm: str = "linf",
        layer: str | Sequence[str] = "features",
        targeted: bool = True,
        steps: int = 100,
        step_size: Eps | None = None,
        penalty: float = 1e10,
        lr: float = 1.0,
        rho: float = 0.95,
        adadelta_eps: float = 1e-8,
        quantize: bool = False,
        seed: int = 0,
        surrogate: str = "teacher",
    ):
        norm = norm.lower() if isinstance(norm, str) else norm
        choose("mimicry budget", norm, BUDGETS)
        choose("surrogate", surrogate, ("teacher",))
        super().__init__(eps, "linf" if norm == "dssim" else norm)
        self.norm = norm  # `check_adversarial` checks DSSIM budgets too
        check_steps(steps, step_size)
        if penalty <= 0 or lr <= 0 or not 0 <= rho < 1 or adadelta_eps <= 0:
            raise ConfigError("need penalty > 0, lr > 0, 0 <= rho < 1 and adadelta_eps > 0")
        self.layer = resolve_layer(layer)
        self.targeted = bool(targeted)
        self.steps = int(steps)
        self.step_size = parse_eps(step_size) if step_size is not None else self.eps / 4
        self.penalty, self.lr, self.rho, self.adadelta_eps = float(penalty), float(lr), float(rho), float(adadelta_eps)
        self.quantize = bool(quantize)
        self.seed = int(seed)
        self.surrogate_name = surrogate
        self.surrogate: nn.Module | None = None
        self.attacker_data: tuple[torch.Tensor, torch.Tensor] | None = None

    def derived_config(self) -> dict:
        return {"layer": self.layer, "step_size": self.step_size}

    @property
    def label(self) -> str:
        return f"mimicry_{'targeted' if self.targeted else 'untargeted'}_{self.norm}_{self.eps:g}"

    # ---- targets ---------------------------------------------------------------------------------
    def _keys(self, x: torch.Tensor) -> list[int]:
        """A 64-bit key per example from its pixels and the seed (independent of batching and device)."""
        flat = x.detach().to("cpu", torch.float32).flatten(1).numpy()
        seed = self.seed.to_bytes(8, "little", signed=True)
        return [int.from_bytes(hashlib.blake2b(seed + row.tobytes(), digest_size=8).digest(), "little") for row in flat]

    def target_classes(self, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        """The class each source is pushed to by the targeted attack: uniform among the other classes."""
        if num_classes < 2:
            raise ConfigError("a targeted attack needs at least two classes")
        offsets = torch.tensor([k % (num_classes - 1) for k in self._keys(x)], dtype=torch.long)
        return (y.cpu().long() + 1 + offsets) % num_classes

    def _targets(self, phi, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Target images from the attacker's data (see the module docstring), on x's device."""
        if self.attacker_data is None:
            raise RuntimeError("MimicryAttack.attacker_data is not set: the runner hands over the attacker's data")
        ax, ay = self.attacker_data  # ax: a CPU tensor or `LazyImages` (read on access); only picks are moved
        ay = ay.cpu().long()
        if self.targeted:
            classes = self.target_classes(x, y, num_classes)
            picks = []
            for key, t in zip(self._keys(x), classes.tolist()):
                pool = (ay == t).nonzero().flatten()
                if len(pool) == 0:
                    raise ConfigError(f"the attacker's data holds no image of class {t}: it cannot target it")
                picks.append(int(pool[(key // (num_classes - 1)) % len(pool)]))
            return ax[picks].to(x.device, x.dtype)
        with torch.no_grad():
            src = phi(x).flatten(1)
            ref = torch.cat([phi(_rows(ax, i, 256).to(x.device, x.dtype)).flatten(1) for i in range(0, len(ax), 256)])
        self.forward_passes += len(x) + len(ax)
        dist = torch.cdist(src, ref)
        dist[y.to(x.device)[:, None] == ay.to(x.device)[None, :]] = float("inf")
        if torch.isinf(dist).all(1).any():
            raise ConfigError("the attacker's data holds no image of another class")
        return ax[dist.argmin(1).cpu()].to(x.device, x.dtype)

    # ---- the attack --------------------------------------------------------------------------------
    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        model = self.surrogate if self.surrogate is not None else model
        phi = layer_function(model, self.layer)
        with torch.no_grad():
            num_classes = int(model(x[:1]).shape[1])
            target = phi(self._targets(phi, x, y, num_classes))
        self.forward_passes += len(x)
        x_adv = self._dssim(phi, x, target) if self.norm == "dssim" else self._pgd(phi, x, target)
        return self._quantized(x, x_adv) if self.quantize else x_adv

    def _quantized(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """x' on the 8-bit grid where that stays within budget, else x (the attack failed there)."""
        rounded = torch.round(x_adv * 255) / 255
        with torch.no_grad():
            if self.norm == "dssim":
                ok = dssim(rounded, x) < self.eps
            else:
                ok = lp_norm(rounded - x, self.norm) <= self.eps * (1 + 1e-6)
        return torch.where(ok.view(-1, *[1] * (x.ndim - 1)), rounded, x)

    def _pgd(self, phi, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        best, best_d = x.clone(), torch.full((len(x),), float("inf"), device=x.device, dtype=x.dtype)
        xa = x.clone()
        for step in range(self.steps + 1):
            xa.requires_grad_(True)
            d = feature_distance(phi(xa), target)
            self.forward_passes += len(x)
            better = d.detach() < best_d
            best[better], best_d[better] = xa.detach()[better], d.detach()[better]
            if step == self.steps:
                break
            (grad,) = torch.autograd.grad(d.sum(), xa)
            self.backward_passes += len(x)
            xa = self.project(self.step(xa.detach(), -grad, self.step_size), x)
        return best

    def _dssim(self, phi, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        source_tanh = torch.atanh((x - 0.5) * TANH_CONSTANT)
        w = torch.full_like(x, 1e-6, requires_grad=True)
        opt = torch.optim.Adadelta([w], lr=self.lr, rho=self.rho, eps=self.adadelta_eps)
        best, best_d = x.clone(), torch.full((len(x),), float("inf"), device=x.device, dtype=x.dtype)
        for step in range(self.steps + 1):
            xa = torch.tanh(w + source_tanh) / TANH_CONSTANT + 0.5
            budget = dssim(xa, x)
            d = feature_distance(phi(xa), target)
            self.forward_passes += len(x)
            if step > 0:  # the iterate after each step (the authors never keep the start)
                better = (budget.detach() < self.eps) & (d.detach() < best_d)
                best[better], best_d[better] = xa.detach()[better], d.detach()[better]
            if step == self.steps:
                break
            loss = (self.penalty * F.relu(budget - self.eps).pow(2) + d).sum()
            opt.zero_grad()
            loss.backward()
            self.backward_passes += len(x)
            opt.step()
        return best.clamp(0, 1)
