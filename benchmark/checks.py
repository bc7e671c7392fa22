"""Every sanity rule of the suite, in one place: which flag a row gets, when, and what it means.

A flag marks a number that may overestimate robustness (Carlini et al. 2019, "On Evaluating Adversarial
Robustness"; `../shared/evaluation.md` section 2). Flags are raised once, by the runner, and stored in the
row (`flags` in results.csv); the report and W&B only read them, so a rebuilt report keeps every flag.
"""

from __future__ import annotations

from collections import defaultdict

from benchmark.metrics import SANITY_TOL

#: What each flag means; every flagged row gets a warning line in the log and the leaderboard.
FLAG_DOC = {
    "iterative_weaker_than_single_step": "an iterative attack is weaker than a single-step one: it may not "
    "converge, or the gradients are masked",
    "transfer_stronger_than_whitebox": "the transfer attack beats every white-box attack: white-box gradients "
    "may be masked",
    "non_monotone_in_eps": "robust accuracy rises with epsilon",
    "frozen_randomness_attack_fails": "with the randomness frozen, more than half of the clean-correct accuracy "
    "survives the attack: gradients may be masked beyond randomness",
    "eot_attack_not_converged": "twice the steps and EOT samples lower robust accuracy: the EOT attack has not "
    "converged, its number overestimates robustness (the doubled attack is in the worst case)",
    "unbounded_attack_not_chance": "an unbounded attack (eps = 1) does not reach chance: gradients may be masked",
    "autoattack_randomized": "AutoAttack: the model looks randomized (use version rand)",
    "autoattack_softmax_output": "AutoAttack: the outputs look like probabilities, not logits",
    "autoattack_zero_gradients": "AutoAttack: some points have zero gradients",
    "autoattack_square_helps": "AutoAttack: Square (gradient-free) lowered robust accuracy after the white-box "
    "attacks: the evaluation is likely to overestimate robustness",
    "autoattack_dynamic": "AutoAttack: the forward pass computes gradients (a dynamic defense)",
    "autoattack_n_classes": "AutoAttack: too few classes for its targeted or DLR attacks",
}


def add_flag(row: dict, name: str) -> None:
    """Mark a row with a sanity flag (results.csv `flags`, the leaderboard's warnings, W&B), once."""
    if name in str(row.get("flags") or "").split(";"):
        return
    row["flags"] = ";".join(filter(None, [row.get("flags", ""), name]))


def sanity_flags(rows: list[dict], tol: float = SANITY_TOL) -> list[str]:
    """Mark rows whose numbers suggest an overestimated robustness; return one warning per flag.

    Checks across rows (Carlini et al. 2019, "On Evaluating Adversarial Robustness"), each between attacks on
    the same model, examples, norm and epsilon: an iterative attack must not be weaker than a single-step
    one, a transfer attack not stronger than the white-box ones, and robust accuracy must not grow with
    epsilon. A difference counts only beyond `tol` and beyond two examples (random starts differ between
    attacks). Flags set earlier (the randomized-defense checks, AutoAttack's own checks) are reported too.
    """
    by_model = defaultdict(list)
    for r in rows:
        if r["threat_model"] != "sanity" and r["attack"] != "worst_case":
            by_model[(r["pair"], r["defense"], int(r["seed"]))].append(r)
    for group in by_model.values():
        limit = max(tol, 2 / max(1, int(group[0]["n_examples"])))
        at = defaultdict(list)  # (norm, eps, n) -> rows
        for r in group:
            at[(r["norm"], round(float(r["eps"]), 10), r["n_examples"])].append(r)
        for same in at.values():
            whitebox = [r for r in same if r["threat_model"] == "white-box"]
            single = [r for r in whitebox if int(r["steps"]) == 1]
            for it in (r for r in whitebox if int(r["steps"]) > 1):
                if any(float(it["robust_acc"]) > float(s["robust_acc"]) + limit for s in single):
                    add_flag(it, "iterative_weaker_than_single_step")
            strongest = min((float(r["robust_acc"]) for r in whitebox), default=None)
            for r in same:
                weaker = strongest is not None and float(r["robust_acc"]) < strongest - limit
                if r["threat_model"] == "transfer" and weaker:
                    add_flag(r, "transfer_stronger_than_whitebox")
        series = defaultdict(list)
        for r in group:
            series[(r["attack"], r["n_examples"])].append(r)
        for rs in series.values():
            rs = sorted(rs, key=lambda r: float(r["eps"]))
            for lo, hi in zip(rs, rs[1:]):
                if float(hi["robust_acc"]) > float(lo["robust_acc"]) + limit:
                    add_flag(hi, "non_monotone_in_eps")
    return flag_warnings(rows)


def flag_warnings(rows: list[dict]) -> list[str]:
    """One warning line per flag raised on any row (in row order, without repeats)."""
    warnings = []
    for r in rows:
        for flag in filter(None, str(r.get("flags") or "").split(";")):
            warnings.append(
                f"{r['pair']}/{r['defense']}/seed {r['seed']}, {r['attack']} {r['norm']} eps {r['eps_label']} "
                f"(robust {float(r['robust_acc']):.3f}): {FLAG_DOC.get(flag, flag)}"
            )
    return list(dict.fromkeys(warnings))
