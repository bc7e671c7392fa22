"""ILA, the intermediate level attack (Huang et al., ICCV 2019, arXiv 1907.10823), on a named layer of the model."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn as nn

from attacks.base import Attack, Eps, Norm, check_steps, eps_tag, parse_eps
from attacks.errors import ConfigError
from attacks.mimicry import layer_function, resolve_layer
from attacks.transfer_families import MIFGSM


class ILA(Attack):
    """Fine-tune a base attack's adversarial example for transfer by enlarging its feature change at layer l along
    the base attack's own direction (ILA with the projection loss, ILAP).

    The base attack (`base`, I-FGSM by default) gives x'; with F_l the output of layer l and
    dy' = F_l(x') - F_l(x), ILA starts again from x and takes `steps` sign-gradient steps that maximize the
    projection of the new feature change onto dy', (F_l(x'') - F_l(x)) . dy', per example:
    x''_{k+1} = clip_{x, eps}(x''_k + step_size * sign(J_l(x''_k)^T dy')), returning the last iterate. This is the
    authors' `ILA(..., with_projection=True)` (CUAI/Intermediate-Level-Attack, attacks.py): they start from x too,
    and their loss, normalized by ||dy'||^2 over the whole batch, differs from ours by a positive factor that the
    sign removes. torchattacks has no ILA. L-inf only.

    Its cost is the base attack's plus `steps` forward and backward passes to layer l (two more forward passes for
    F_l(x) and F_l(x')): the transfer config runs 10 base and 10 ILA steps, 20 gradients like transfer PGD.

    Args:
        eps: the L-inf budget (a number or a fraction string such as "8/255"); the base attack gets it too.
        norm: linf (the only norm supported).
        layer: layer l, a module name of the model or of its backbone, or a list whose last entry is used (a
            model's `feature_layers`, as `attacks.mimicry.MimicryAttack` takes it); `pre_logits` for the
            penultimate representation.
        steps: ILA iterations (>= 1; the authors' 10 on ImageNet and 20 on CIFAR-10).
        step_size: ILA's step; default eps / steps.
        base: a factory of the base attack, called with `eps` (a Hydra `_partial_`), L-inf; default (None): I-FGSM,
            `MIFGSM(eps, steps=steps, decay=0)`. A PGD base runs without early stopping.
    """

    name = "ila"

    def __init__(
        self,
        eps: Eps,
        norm: Norm = "linf",
        layer: str | Sequence[str] = "features",
        steps: int = 10,
        step_size: Eps | None = None,
        base: Callable[..., Attack] | None = None,
    ):
        super().__init__(eps, norm)
        if self.norm != "linf":
            raise ConfigError(f"{type(self).__name__} supports norm linf only, got {norm}")
        check_steps(steps, step_size)
        self.layer = resolve_layer(layer)
        self.steps = int(steps)
        self.step_size = parse_eps(step_size) if step_size is not None else self.eps / self.steps
        inner = MIFGSM(eps, steps=self.steps, decay=0.0) if base is None else base(eps=eps)
        if not isinstance(inner, Attack):
            raise ConfigError(f"base must be an Attack factory; got {type(inner).__name__}")
        if inner.norm != "linf":
            raise ConfigError(f"ILA's base attack must be linf, got {inner.norm}")
        if "early_stop" in inner.arguments:
            inner = inner.replace(early_stop=False)
        self.base = inner

    def derived_config(self) -> dict:
        # The layer as resolved, the default step's value, and the base attack as it runs (eps given).
        return {"layer": self.layer, "step_size": self.step_size, "base": self.base.config()}

    @property
    def label(self) -> str:
        return f"ila_{self.base.label.rsplit('_', 2)[0]}_{self.norm}_{eps_tag(self.eps, self.norm)}"

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        phi = layer_function(model, self.layer)
        passes = self.base.forward_passes, self.base.backward_passes
        x_base = self.base.perturb(model, x, y).detach()  # already in attack mode, gradients on
        self.forward_passes += self.base.forward_passes - passes[0]
        self.backward_passes += self.base.backward_passes - passes[1]
        with torch.no_grad():
            clean = phi(x)
            direction = phi(x_base) - clean  # dy' = F_l(x') - F_l(x)
        self.forward_passes += 2 * len(x)
        x_adv = x.clone()
        for _ in range(self.steps):
            x_adv.requires_grad_(True)
            projection = ((phi(x_adv) - clean) * direction).sum()
            (grad,) = torch.autograd.grad(projection, x_adv)
            self.forward_passes += len(x)
            self.backward_passes += len(x)
            x_adv = x_adv.detach() + self.step_size * grad.sign()
            delta = torch.clamp(x_adv - x, min=-self.eps, max=self.eps)
            x_adv = torch.clamp(x + delta, min=0, max=1)
        return x_adv
