"""Scoring: per-example outcomes of a cell, the row metrics they reduce to, transferability, the worst case.

One counting rule for every model (Zhang et al. 2020; RobustBench): in each draw d of the model's randomness
(one draw for a deterministic model), example i counts as robust when the model is right on it clean AND under
attack: robust_d(i) = clean_d(i) & adv_d(i). For a model that may reject, a rejected clean input is an error and a
rejected adversarial input is defended (`outcome`). Robust accuracy is the mean over examples and draws; the worst of
K counts an example only if it is robust in every draw. An outcome holds the (K, n) boolean matrices `clean`
and `adv` (the draws of clean and adversarial passes are paired by index).
"""

from __future__ import annotations

import torch

from benchmark.metrics import transferability_ratio, wilson_interval


def outcome(pred_clean: torch.Tensor, pred_adv: torch.Tensor, y: torch.Tensor, reject_label: int | None = None) -> dict:
    """Per-example, per-draw correctness from (K, n) clean and adversarial predictions, and the adversarial
    predictions themselves (`pred_adv`: a targeted attack's success is read from them).

    A model that may reject (abstain) answers `reject_label` for a rejection. The counting rule then becomes: a
    rejected clean input is an error (`clean` False), a rejected adversarial input is defended (`adv` True), so an
    example is robust when it is accepted and right clean and, under attack, rejected or right. The rejections are
    kept (`clean_rejected`, `adv_rejected`) for the abstention metrics.
    """
    out = {"clean": pred_clean == y, "adv": pred_adv == y, "pred_adv": pred_adv, "changed": pred_clean != pred_adv}
    if reject_label is not None:
        out["clean_rejected"] = pred_clean == reject_label
        out["adv_rejected"] = pred_adv == reject_label
        out["adv"] = out["adv"] | out["adv_rejected"]
    return out


def abstention(out: dict) -> dict:
    """The metrics of a model that may reject, over examples and draws (None for one that never rejects):

    - `clean_acc_accepted`: accuracy on the clean inputs it accepts;
    - `false_rejection_rate`: the fraction of clean inputs it rejects;
    - `defense_rate`: of the adversarial inputs (those of the examples it got right clean, the ones attacked), the
      fraction rejected or classified right;
    - `adv_rejection_rate`: of the same, the fraction rejected.
    """
    keys = ("clean_acc_accepted", "false_rejection_rate", "defense_rate", "adv_rejection_rate")
    if "clean_rejected" not in out:
        return dict.fromkeys(keys)
    accepted = ~out["clean_rejected"]
    attacked = out["clean"]
    n_acc, n_att = int(accepted.sum()), int(attacked.sum())
    nan = float("nan")
    return {
        "clean_acc_accepted": float((out["clean"] & accepted).sum()) / n_acc if n_acc else nan,
        "false_rejection_rate": float(out["clean_rejected"].float().mean()),
        "defense_rate": float((attacked & out["adv"]).sum()) / n_att if n_att else nan,
        "adv_rejection_rate": float((attacked & out["adv_rejected"]).sum()) / n_att if n_att else nan,
    }


def target_hits(out: dict, targets: torch.Tensor) -> torch.Tensor:
    """(K, n): right clean and assigned the target class under a targeted attack, in each draw."""
    n = out["pred_adv"].shape[-1]
    return out["clean"] & (out["pred_adv"] == targets[:n].to(out["pred_adv"].device))


def targeted_success(out: dict, targets: torch.Tensor) -> float:
    """A targeted attack's success rate: the fraction of the clean-correct examples (per draw) that the model
    assigns to their target class under attack (Wang et al.: "over clean-correct sources")."""
    correct = out["clean"]
    hit = target_hits(out, targets)
    return float(hit.sum()) / int(correct.sum()) if int(correct.sum()) else float("nan")


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
        **abstention(out),
        # the fooling rate (downstream-agnostic attacks' usual measure): the share of (example, draw) predictions the
        # perturbation changes, right or wrong when clean
        "fooling_rate": float(out["changed"].float().mean()) if "changed" in out and n else None,
    }


def transferability(transfer: dict, whitebox: dict, form: str) -> dict:
    """Transferability of the teacher's examples into a deterministic student, in both readings (see
    `benchmark.metrics.transferability_ratio`), on the examples both cells cover."""
    n = min(size(transfer), size(whitebox))
    t, w = head(transfer, n), head(whitebox, n)
    out = {"transfer_acc": metrics(t)["robust_acc"]}
    for f in ("success_ratio", "accuracy_drop"):
        out[f"transferability_{f}"] = transferability_ratio(t["clean"][0], w["adv"][0], t["adv"][0], f)
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
