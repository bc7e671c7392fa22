"""Attack stages: predictions, crafting adversarial examples (every batch checked), white-box cells.

Deterministic models: white-box attacks run on the clean-correct examples only (the others keep x' = x),
with early stopping. Randomized models: every example is attacked without early stopping, and the final x'
is scored over K fresh draws afterwards (evaluate after optimizing; `benchmark.runner.stages.score`).

Precision (`eval.precision`): the attack's forward and backward passes may run under autocast (bf16, fp16); the
input, its gradient, the projection and the threat-model check stay in fp32, the model's logits are handed to the
attack's loss in fp32, and every scoring pass (clean and adversarial predictions) runs in fp32.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn

from attacks.base import Attack, AttackConstraintError, attack_mode, check_adversarial, readout
from attacks.errors import choose
from benchmark.runner.stages.score import outcome
from datamodules.base import ImageFile, LazyImages, chunks

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
def predict(model: nn.Module, x, batch_size: int, device: torch.device) -> torch.Tensor:
    """Predicted labels of `model` (eval mode, restored after) on x (a tensor, or images read on access), in batches."""
    with attack_mode(model):
        return torch.cat([model(xb.to(device)).argmax(1).cpu() for xb in chunks(x, batch_size)])


def predict_draws(model: nn.Module, x, draws: int, batch_size: int, device) -> torch.Tensor:
    """(K, n) predictions over K passes: fresh draws of a randomized model's randomness (K = 1: deterministic)."""
    return torch.stack([predict(model, x, batch_size, device) for _ in range(draws)])


class Attacked:
    """x' of x (a tensor, or images read on access), a window of `batch_size` examples at a time, in order: iterate it
    once. The attack runs, its passes in `precision_name` (`precision`), on the examples in `only` (all if None) in
    batches of `batch_size` of those examples, as when x' was made whole; the others keep x' = x. Every attacked
    batch is checked against the threat model, in fp32, before anything is scored. Nothing holds more than about
    two batches of images. After the iteration `cost` holds the attack's seconds, passes and examples attacked.
    """

    def __init__(self, attack: Attack, model: nn.Module, x, y: torch.Tensor, batch_size: int, device: torch.device,
                 only: torch.Tensor | None = None, on_batch: Callable[[int], None] | None = None,
                 precision_name: str = "fp32"):  # fmt: skip
        self.attack, self.model, self.x, self.y, self.batch_size, self.device = attack, model, x, y, batch_size, device
        self.idx = torch.arange(len(x)) if only is None else only.nonzero().flatten()
        self.on_batch, self.precision_name = on_batch, precision_name
        self.cost: dict = {}

    def _attack(self, b: torch.Tensor) -> torch.Tensor:
        xb, yb = self.x[b].to(self.device), self.y[b].to(self.device)
        with precision(self.model, self.device, self.precision_name):
            xb_adv = self.attack(self.model, xb, yb)
        xb_adv = xb_adv.float()
        check_adversarial(xb, xb_adv, self.attack.norm, self.attack.eps)
        if self.on_batch:
            self.on_batch(len(b))
        return xb_adv.cpu()

    def __iter__(self) -> Iterator[torch.Tensor]:
        attack, idx, n, size = self.attack, self.idx, len(self.x), self.batch_size
        attack.forward_passes = attack.backward_passes = 0
        seconds, made, k = 0.0, {}, 0  # made: attacked rows not handed out yet; k: where the next attack batch starts
        for start in range(0, n, size):
            rows = range(start, min(start + size, n))
            while k < len(idx) and int(idx[k]) < rows.stop:  # attack until the window's attacked rows are made
                b = idx[k : k + size]
                tick = time.perf_counter()
                made.update(zip(b.tolist(), self._attack(b)))
                seconds += time.perf_counter() - tick
                k += len(b)
            yield self._window(rows, made)  # no local of this loop holds it while the next batch is attacked
        self.cost = {"attack_seconds": seconds, "forward_passes": attack.forward_passes,
                     "backward_passes": attack.backward_passes, "n_attacked": len(idx)}  # fmt: skip

    def _window(self, rows: range, made: dict) -> torch.Tensor:
        """The window's x': its attacked rows taken out of `made`, the others read clean here (an attacked row's clean
        image is read by its attack batch only)."""
        clean = [i for i in rows if i not in made]
        read = iter(self.x[clean] if clean else ())
        return torch.stack([made.pop(i) if i in made else next(read) for i in rows])


def run_attack(
    attack: Attack,
    model: nn.Module,
    x,
    y: torch.Tensor,
    batch_size: int,
    device: torch.device,
    only: torch.Tensor | None = None,
    on_batch: Callable[[int], None] | None = None,
    precision_name: str = "fp32",
    path: str | Path | None = None,
) -> tuple[LazyImages, dict]:
    """Craft x_adv on `model` for the examples in `only` (all if None; the others keep x' = x), its passes in
    `precision_name`: `Attacked`, written a window at a time to an `ImageFile` (at `path`, else a temporary file)
    and returned as `LazyImages` over it, with the attack's cost."""
    adv = Attacked(attack, model, x, y, batch_size, device, only, on_batch, precision_name)
    out, start = None, 0
    for window in adv:
        if out is None:  # the shape of the first window: no image read for it
            out = ImageFile((len(x), *window.shape[1:]), path)
        out.write(start, window)
        start += len(window)
        del window  # not held while the next batch is attacked
    return LazyImages(ImageFile((0,), path) if out is None else out), adv.cost


def check_crafted(x, x_adv, attack: Attack, batch_size: int = 256) -> None:
    """`check_adversarial` of a crafted set against the threat model of `attack`, `batch_size` examples at a time (x,
    x_adv: tensors, or images read on access)."""
    if len(x_adv) != len(x):
        raise AttackConstraintError(f"x_adv has {len(x_adv)} examples, expected {len(x)}")
    for xb, ab in zip(chunks(x, batch_size), chunks(x_adv, batch_size)):
        check_adversarial(xb, ab, attack.norm, attack.eps)


def compute_cell(
    attack: Attack,
    model: nn.Module,
    x,
    y: torch.Tensor,
    pred_clean: torch.Tensor,
    *,
    randomized: bool,
    batch_size: int,
    device: torch.device,
    seed: int,
    x_adv=None,
    detector=None,
    score_clean: torch.Tensor | None = None,
    on_batch: Callable[[int], None] | None = None,
    precision_name: str = "fp32",
) -> tuple[dict, dict]:
    """One cell: attack `model` (every example of a randomized model, else the clean-correct ones: `pred_clean`, the
    model's (K, n) clean predictions) or take the crafted `x_adv` of a transfer attack, then score the final examples
    (in fp32, whatever `precision_name` the attack ran in) over as many fresh draws as `pred_clean` has rows. Returns
    the outcome (`score.outcome`, with the detection scores of draw 0 when a detector is given) and the attack's cost.

    x and x_adv may be images read on access (`LazyImages`): nothing here holds a float copy of either whole. A
    deterministic model's examples are scored window by window as they are made (it draws no random numbers, so the
    attack draws what it drew when x' was made whole first). A randomized model's are written to a temporary
    `ImageFile` first: each of its draws scores every final example after the attack, in that order of random draws.
    """
    if x_adv is None and not randomized:  # the clean-correct examples' x', scored window by window as it is made
        torch.manual_seed(seed)
        adv = Attacked(attack, model, x, y, batch_size, device, pred_clean[0] == y, on_batch, precision_name)
        pred_adv, embedded = _scored_as_made(adv, model, detector)
        cost = adv.cost
    else:
        if x_adv is None:  # every example's x', kept in a temporary file, then scored draw after draw
            torch.manual_seed(seed)
            x_adv, cost = run_attack(attack, model, x, y, batch_size, device, None, on_batch, precision_name)
        else:
            check_crafted(x, x_adv, attack, batch_size)  # crafted examples are re-checked, not trusted
            torch.manual_seed(seed)  # a randomized model's scoring draws: not what this process ran before
            cost = {}
        pred_adv = predict_draws(model, x_adv, len(pred_clean), batch_size, device)
        embedded = None if detector is None else detector.embed(x_adv)
    out = outcome(pred_clean, pred_adv, y, getattr(model, "reject_label", None))
    if detector is not None:
        out["score_clean"] = score_clean
        out["score_adv"] = detector.nearest(embedded, pred_adv[0])
    return out, cost


def _scored_as_made(adv: Attacked, model: nn.Module, detector) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A deterministic model's (1, n) predictions of x' and the detector's embeddings of it (None without one), each
    window predicted and embedded as it is made: the windows and arithmetic of `predict` and `detector.embed` on x'
    whole."""
    preds, embedded = [], []
    for window in adv:
        preds.append(predict(model, window, len(window), adv.device))
        if detector is not None:
            embedded.append(detector.embed(window))
        del window  # not held while the next batch is attacked
    return torch.cat(preds)[None], torch.cat(embedded) if detector is not None else None
