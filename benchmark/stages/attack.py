"""Attack stages: predictions, crafting adversarial examples (every batch checked), white-box cells.

Deterministic models: white-box attacks run on the clean-correct examples only (the others keep x' = x),
with early stopping. Randomized models: every example is attacked without early stopping, and the final x'
is scored over K fresh draws afterwards (evaluate after optimizing; `benchmark.stages.score`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn as nn

from attacks.base import Attack, attack_mode, check_adversarial


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
) -> tuple[torch.Tensor, dict]:
    """Craft x_adv on `model` for the examples in `only` (all if None; the others keep x' = x).

    Every batch is checked against the threat model before anything is scored.
    """
    x_adv = x.clone()
    idx = torch.arange(len(x)) if only is None else only.nonzero().flatten()
    attack.forward_passes = attack.backward_passes = 0
    start = time.perf_counter()
    for i in range(0, len(idx), batch_size):
        b = idx[i : i + batch_size]
        xb, yb = x[b].to(device), y[b].to(device)
        xb_adv = attack(model, xb, yb)
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
) -> tuple[torch.Tensor, dict]:
    """A white-box cell's adversarial examples: every example of a randomized model, else the clean-correct ones
    (`clean_pred`: the model's (K, n) clean predictions)."""
    only = None if randomized else clean_pred[0] == y
    return run_attack(attack, model, x, y, batch_size, device, only=only, on_batch=on_batch)


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
) -> tuple[dict, dict]:
    """One cell: attack `model` (or take the crafted `x_adv` of a transfer attack), then score the final
    examples over as many fresh draws as `pred_clean` has rows. Returns the outcome (`score.outcome`, with the
    detection scores of draw 0 when a detector is given) and the attack's cost."""
    from benchmark.stages.score import outcome

    draws = len(pred_clean)
    if x_adv is None:
        torch.manual_seed(seed)
        x_adv, cost = attack_model(attack, model, x, y, pred_clean, randomized, batch_size, device, on_batch)
    else:
        check_adversarial(x, x_adv, attack.norm, attack.eps)  # crafted examples are re-checked, not trusted
        cost = {}
    pred_adv = predict_draws(model, x_adv, draws, batch_size, device)
    out = outcome(pred_clean, pred_adv, y)
    if detector is not None:
        out["score_clean"] = score_clean
        out["score_adv"] = detector.scores(x_adv, pred_adv[0])
    return out, cost
