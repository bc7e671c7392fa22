"""Scoring: per-example outcomes of a cell, the row metrics they reduce to, transferability, the worst case.

One counting rule for every model (Zhang et al. 2020; RobustBench): in each draw d of the model's randomness
(one draw for a deterministic model), example i counts as robust when the model is right on it clean AND under
attack: robust_d(i) = clean_d(i) & adv_d(i). Robust accuracy is the mean over examples and draws; the worst of
K counts an example only if it is robust in every draw. An outcome holds the (K, n) boolean matrices `clean`
and `adv` (the draws of clean and adversarial passes are paired by index).
"""

from __future__ import annotations

import torch

from benchmark.metrics import Transferability, wilson_interval


def outcome(pred_clean: torch.Tensor, pred_adv: torch.Tensor, y: torch.Tensor) -> dict:
    """Per-example, per-draw correctness from (K, n) clean and adversarial predictions."""
    return {"clean": pred_clean == y, "adv": pred_adv == y}


def robust_draws(out: dict) -> torch.Tensor:
    """(K, n): right clean and under attack, in each draw."""
    return out["clean"] & out["adv"]


def per_example(out: dict) -> dict[str, torch.Tensor]:
    """Per example: the fraction of draws right clean, robust, and whether it is robust in every draw."""
    if "robust" in out:  # already reduced (a worst-case union)
        return out
    r = robust_draws(out)
    return {"clean": out["clean"].float().mean(0), "robust": r.float().mean(0), "worst_of_k": r.all(0)}


def head(out: dict, n: int) -> dict:
    """The outcome on the first n examples."""
    return {k: v[..., :n] if torch.is_tensor(v) and v.ndim else v for k, v in out.items()}


def size(out: dict) -> int:
    return int(per_example(out)["robust"].shape[-1])


def metrics(out: dict) -> dict:
    """The row metrics of an outcome: clean and robust accuracy (95 % Wilson interval), the worst of K draws,
    success rate (the fraction of clean-correct draws the attack breaks; never negative) and n."""
    p = per_example(out)
    n = len(p["robust"])
    clean, robust = float(p["clean"].sum()), float(p["robust"].sum())
    lo, hi = wilson_interval(round(robust), n)
    return {
        "clean_acc": clean / n if n else float("nan"),
        "robust_acc": robust / n if n else float("nan"),
        "robust_acc_worst_of_k": float(p["worst_of_k"].float().mean()) if n else float("nan"),
        "success_rate": 1 - robust / clean if clean > 0 else float("nan"),
        "n_examples": n,
        "draws": int(out["clean"].shape[0]) if "adv" in out else int(out.get("draws", 1)),
        "robust_acc_ci_low": lo,
        "robust_acc_ci_high": hi,
    }


def transferability(transfer: dict, whitebox: dict, form: str) -> dict:
    """Transferability of the teacher's examples into a deterministic student, in both readings (see
    `benchmark.metrics.Transferability`), on the examples both cells cover."""
    n = min(size(transfer), size(whitebox))
    t, w = head(transfer, n), head(whitebox, n)
    out = {"transfer_acc": metrics(t)["robust_acc"]}
    for f in ("success_ratio", "accuracy_drop"):
        m = Transferability(f)
        m.update(t["clean"][0], w["adv"][0], t["adv"][0])
        out[f"transferability_{f}"] = float(m.compute())
    out["transferability"] = out[f"transferability_{form}"]
    out["transferability_form"] = f"{form} (our reading of Zhang et al. 2020; formula unverified)"
    return out


def _padded(v: torch.Tensor, n: int, fill) -> torch.Tensor:
    """v extended to length n with `fill` (an attack that did not run on an example cannot have broken it)."""
    return torch.cat([v, torch.full((n - len(v),), fill, dtype=v.dtype)])


def worst_case(outcomes: list[dict], n: int) -> dict:
    """Per example, the worst case over attacks on the first n examples: the lowest robust fraction over the
    attacks that ran on it, robust in every draw of every attack for the worst of K, clean from the longest."""
    ps = [per_example(head(o, n)) for o in outcomes]
    longest = max(ps, key=lambda p: len(p["robust"]))
    return {
        "clean": longest["clean"],
        "robust": torch.stack([_padded(p["robust"], n, 1.0) for p in ps]).amin(0),
        "worst_of_k": torch.stack([_padded(p["worst_of_k"], n, True) for p in ps]).all(0),
        "draws": max(int(o["clean"].shape[0]) if "adv" in o else int(o.get("draws", 1)) for o in outcomes),
    }
