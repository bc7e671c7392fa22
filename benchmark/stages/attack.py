"""Attack stages: predictions, crafting adversarial examples (every batch checked), white-box cells.

Deterministic models: white-box attacks run on the clean-correct examples only (the others keep x' = x),
with early stopping. Randomized models: every example is attacked without early stopping, and the final x'
is scored over K fresh draws afterwards (evaluate after optimizing; `benchmark.stages.score`).

Precision (`eval.precision`): the attack's forward and backward passes may run under autocast (bf16, fp16); the
input, its gradient, the projection and the threat-model check stay in fp32, the model's logits are handed to the
attack's loss in fp32, and every scoring pass (clean and adversarial predictions) runs in fp32.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn

from attacks.base import Attack, attack_mode, check_adversarial, readout
from attacks.errors import choose

#: eval.precision -> the autocast dtype of the attack's passes (None: no autocast).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: fp16's static gradient scale: fp16 underflows below 6e-8, and the gradient of a confidently classified
#: example's loss is that small, so an unscaled backward pass would give it a zero gradient (sign 0: no step).
#: The scale is applied at the logits and removed, in fp32, at the input. bf16 has fp32's range: no scale.
FP16_GRAD_SCALE = 2.0**10


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; the backward pass multiplies the gradient by `scale`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


#: The methods besides `forward` through which an attack reads a model: the encoder (`features`: the
#: downstream-agnostic and mimicry attacks), an abstaining model's acceptance margins (`pgd_reject_aware`).
ENTRY_POINTS = ("features", "acceptance_margins")


def _outputs(out, fn):
    """`fn` applied to every floating-point tensor of an entry point's output (a tensor or a tuple of them)."""
    if isinstance(out, tuple):
        return tuple(_outputs(o, fn) for o in out)
    return fn(out) if isinstance(out, torch.Tensor) and out.is_floating_point() else out


def _method(model: nn.Module, name: str) -> bool:
    """`model.name` is a method of its class (not a submodule, not already an instance attribute)."""
    value = getattr(model, name, None)
    return callable(value) and not isinstance(value, nn.Module) and name not in vars(model)


@contextmanager
def precision(model: nn.Module, device: torch.device, name: str = "fp32") -> Iterator[None]:
    """Run the attack passes of `model` under autocast in `name` (fp32: unchanged).

    Every entry point an attack reads the model through (`forward`, and `ENTRY_POINTS` where the model has them)
    hands its outputs back in fp32 (so the attack's loss, margins and early-stop checks are fp32) and, for fp16,
    scales the gradient on its way into the network and back out at the input (`FP16_GRAD_SCALE`); activations that
    an attack captures inside the model with a hook are read the same way (`attacks.base.readout`). Only the
    outermost entry point of a call scales (a `forward` that calls `features` is scaled once).
    """
    choose("eval.precision", name, PRECISIONS)
    dtype = PRECISIONS[name]
    if dtype is None:
        yield
        return
    scale = FP16_GRAD_SCALE if dtype == torch.float16 else 1.0
    depth = [0]

    def read(t: torch.Tensor) -> torch.Tensor:
        t = t.float()
        return _ScaleGrad.apply(t, scale) if scale != 1.0 and t.requires_grad else t

    def entry(fn):
        def wrapped(x, *args, **kwargs):
            if depth[0]:
                return fn(x, *args, **kwargs)
            if scale != 1.0 and isinstance(x, torch.Tensor) and x.requires_grad:
                x = _ScaleGrad.apply(x, 1.0 / scale)
            depth[0] += 1
            try:
                out = fn(x, *args, **kwargs)
            finally:
                depth[0] -= 1
            return _outputs(out, read)

        return wrapped

    wrapped = [n for n in ("forward", *ENTRY_POINTS) if _method(model, n)]
    for n in wrapped:
        setattr(model, n, entry(getattr(model, n)))  # an instance attribute over the class's method
    try:
        with torch.autocast(device.type, dtype=dtype), readout(read):
            yield
    finally:
        for n in wrapped:
            delattr(model, n)


def fast_layout(model: nn.Module, device: torch.device, name: str) -> nn.Module:
    """channels_last weights for a convolutional model attacked in bf16/fp16 on CUDA, where tensor cores want
    that layout; unchanged elsewhere (on the CPU, and in fp32, it does not help)."""
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    if device.type == "cuda" and PRECISIONS.get(name) is not None and has_conv:
        return model.to(memory_format=torch.channels_last)
    return model


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Predicted labels of `model` (eval mode, restored after) on x, in batches."""
    with attack_mode(model):
        return torch.cat(
            [model(x[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
        )


def predict_draws(model: nn.Module, x: torch.Tensor, draws: int, batch_size: int, device) -> torch.Tensor:
    """(K, n) predictions over K passes: fresh draws of a randomized model's randomness (K = 1: deterministic)."""
    return torch.stack([predict(model, x, batch_size, device) for _ in range(draws)])


def run_attack(
    attack: Attack,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    device: torch.device,
    only: torch.Tensor | None = None,
    on_batch: Callable[[int], None] | None = None,
    precision_name: str = "fp32",
) -> tuple[torch.Tensor, dict]:
    """Craft x_adv on `model` for the examples in `only` (all if None; the others keep x' = x), its passes in
    `precision_name` (`precision`).

    Every batch is checked against the threat model, in fp32, before anything is scored.
    """
    x_adv = x.clone()
    idx = torch.arange(len(x)) if only is None else only.nonzero().flatten()
    attack.forward_passes = attack.backward_passes = 0
    start = time.perf_counter()
    for i in range(0, len(idx), batch_size):
        b = idx[i : i + batch_size]
        xb, yb = x[b].to(device), y[b].to(device)
        with precision(model, device, precision_name):
            xb_adv = attack(model, xb, yb)
        xb_adv = xb_adv.float()
        check_adversarial(xb, xb_adv, attack.norm, attack.eps)
        x_adv[b] = xb_adv.cpu()
        if on_batch:
            on_batch(len(b))
    cost = {
        "attack_seconds": time.perf_counter() - start,
        "forward_passes": attack.forward_passes,
        "backward_passes": attack.backward_passes,
        "n_attacked": len(idx),
    }
    return x_adv, cost


def attack_model(
    attack: Attack,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    clean_pred: torch.Tensor,
    randomized: bool,
    batch_size: int,
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
    precision_name: str = "fp32",
) -> tuple[torch.Tensor, dict]:
    """A white-box cell's adversarial examples: every example of a randomized model, else the clean-correct ones
    (`clean_pred`: the model's (K, n) clean predictions)."""
    only = None if randomized else clean_pred[0] == y
    return run_attack(attack, model, x, y, batch_size, device, only, on_batch, precision_name)


def compute_cell(
    attack: Attack,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    pred_clean: torch.Tensor,
    *,
    randomized: bool,
    batch_size: int,
    device: torch.device,
    seed: int,
    x_adv: torch.Tensor | None = None,
    detector=None,
    score_clean: torch.Tensor | None = None,
    on_batch: Callable[[int], None] | None = None,
    precision_name: str = "fp32",
) -> tuple[dict, dict]:
    """One cell: attack `model` (or take the crafted `x_adv` of a transfer attack), then score the final
    examples (in fp32, whatever `precision_name` the attack ran in) over as many fresh draws as `pred_clean` has
    rows. Returns the outcome (`score.outcome`, with the detection scores of draw 0 when a detector is given) and
    the attack's cost."""
    from benchmark.stages.score import outcome

    draws = len(pred_clean)
    if x_adv is None:
        torch.manual_seed(seed)
        x_adv, cost = attack_model(
            attack, model, x, y, pred_clean, randomized, batch_size, device, on_batch, precision_name
        )
    else:
        check_adversarial(x, x_adv, attack.norm, attack.eps)  # crafted examples are re-checked, not trusted
        cost = {}
        torch.manual_seed(seed)  # a randomized model's scoring draws: not what this process ran before
    pred_adv = predict_draws(model, x_adv, draws, batch_size, device)
    out = outcome(pred_clean, pred_adv, y, getattr(model, "reject_label", None))
    if detector is not None:
        out["score_clean"] = score_clean
        out["score_adv"] = detector.scores(x_adv, pred_adv[0])
    return out, cost
