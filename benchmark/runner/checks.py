"""Every sanity rule of the suite, in one place: which flag a row gets, when, and what it means.

A flag marks a number that may overestimate robustness (Carlini et al. 2019, "On Evaluating Adversarial
Robustness"; `../shared/evaluation.md` section 2). Flags are raised once, by the runner, and stored in the row
(`flags` in results.csv); the report and W&B only read them, so a rebuilt report keeps every flag.

Noise: two attacks on the same n examples differ by chance (random starts, fresh draws). A difference counts only
beyond `tolerance(n)` = max(1 point, 2 examples out of n), with n the number of examples both sides cover.
"""

from __future__ import annotations

from collections import defaultdict

from benchmark.metrics import SANITY_TOL
from benchmark.records import UNIONS, Row
from benchmark.runner.stages.score import head, metrics, size

FLAG_DOC = {
    "iterative_weaker_than_single_step": "an iterative attack is weaker than a single-step one at the same budget: "
    "it may not converge, or the gradients are masked",
    "transfer_stronger_than_whitebox": "an attack crafted without the model (transfer, mimicry, agnostic) beats an "
    "iterative white-box attack on the examples "
    "both ran on: white-box gradients may be masked",
    "non_monotone_in_eps": "robust accuracy rises with epsilon",
    "frozen_randomness_attack_fails": "with the randomness frozen the attack does not break every example: the "
    "pipeline resists without its randomness, genuinely or by masked gradients (try BPDA and more steps)",
    "eot_attack_not_converged": "twice the steps and EOT samples lower robust accuracy: the EOT attack has not "
    "converged, its number overestimates robustness (the doubled attack is in the worst case)",
    "unbounded_attack_not_chance": "an unbounded attack (eps = 1) does not break every example: gradients may be "
    "masked",
    "autoattack_randomized": "AutoAttack: the model looks randomized (use version rand)",
    "autoattack_softmax_output": "AutoAttack: the outputs look like probabilities, not logits",
    "autoattack_zero_gradients": "AutoAttack: some points have zero gradients",
    "autoattack_square_helps": "AutoAttack: Square (gradient-free) lowered robust accuracy after the white-box "
    "attacks: the evaluation is likely to overestimate robustness",
    "autoattack_dynamic": "AutoAttack: the forward pass computes gradients (a dynamic defense)",
    "autoattack_n_classes": "AutoAttack: too few classes for its targeted or DLR attacks",
    "ignores_reject_option": "a white-box attack that ignores the model's reject option: its number is an upper "
    "bound, not the model's robustness (read the adaptive attack's row and the worst case; the figures leave it out)",
    "no_adaptive_attack": "the defense may reject its input, and no attack aimed at its reject decision (e.g. "
    "pgd_reject_aware) ran at this budget: attacks that ignore the reject option overestimate it, so the report "
    "withholds this number",
}


#: AutoAttack's own checks (`pyautoattack.checks`, run inside `attacks.autoattack.AutoAttack`): a phrase of the
#: authors' warning message -> our flag.
AUTOATTACK_MESSAGES = {
    "randomized defense": "autoattack_randomized",
    "probability distribution": "autoattack_softmax_output",
    "zero gradient": "autoattack_zero_gradients",
    "Square Attack has decreased": "autoattack_square_helps",
    "dynamic defense": "autoattack_dynamic",
    "classes": "autoattack_n_classes",
}


def autoattack_flags(messages: list[str]) -> list[str]:
    """The flags of AutoAttack's warning messages (an attack's `messages`), each once, in the order first raised."""
    found = (flag for message in messages for phrase, flag in AUTOATTACK_MESSAGES.items() if phrase in message)
    return list(dict.fromkeys(found))


def tolerance(n: int) -> float:
    """The smallest accuracy difference on n common examples that a check treats as real."""
    return max(SANITY_TOL, 2 / max(1, n))


def add_flag(row: Row, name: str) -> None:
    """Mark a row with a sanity flag (results.csv `flags`, the leaderboard's warnings, W&B), once."""
    if name not in FLAG_DOC:
        raise KeyError(f"undocumented flag '{name}'; documented: {', '.join(FLAG_DOC)}")
    if name in row.flag_list:
        return
    row.flags = ";".join([*row.flag_list, name])


def _on_common(a: dict, b: dict) -> tuple[float, float, int]:
    """Robust accuracy of two outcomes on the examples both cover (the first n of each)."""
    n = min(size(a), size(b))
    return metrics(head(a, n))["robust_acc"], metrics(head(b, n))["robust_acc"], n


# ---- per-example rules (outcomes of one model) -------------------------------------------------------
def transfer_vs_whitebox(transfer_row: Row, transfer: dict, whitebox: list[tuple[Row, dict]]) -> None:
    """Flag the transfer row if it beats any iterative white-box attack at its norm and epsilon, compared per
    example on the examples both ran on. (A single-step white-box attack may legitimately be weaker than an
    iterative transfer attack; single-step against iterative is its own check.)"""
    for row, out in whitebox:
        if row.steps <= 1 or row.budget_key != transfer_row.budget_key:
            continue
        tr, wb, n = _on_common(transfer, out)
        if tr < wb - tolerance(n):
            add_flag(transfer_row, "transfer_stronger_than_whitebox")


def frozen_randomness(row: Row, frozen: dict, randomized: dict) -> None:
    """Carlini et al. 2019 (evaluation.md section 2, item 9): with the randomness fixed the attack must succeed.
    The frozen attack is the EOT attack with one sample on the deterministic stand-in (`frozen(seed)`); an example
    it leaves robust means the deployed pipeline resists without its randomness: either genuinely (e.g. an
    adversarially trained purifier) or by masked gradients, which this check cannot tell apart, so it warns.
    The protocol's threshold, no looser: robust accuracy within the noise of zero (`tolerance(n)`). The randomized
    model's robust accuracy on the same examples is kept as the row's `sanity_reference`."""
    fr, rnd, n = _on_common(frozen, randomized)
    row.sanity_reference = rnd
    if fr > tolerance(n):
        add_flag(row, "frozen_randomness_attack_fails")


def converged(row: Row, doubled: dict, base: dict) -> None:
    """Twice the steps and EOT samples must not lower robust accuracy beyond noise (item 11)."""
    dbl, ref, n = _on_common(doubled, base)
    row.sanity_reference = ref
    if dbl < ref - tolerance(n):
        add_flag(row, "eot_attack_not_converged")


def unbounded(row: Row, out: dict) -> None:
    """An unbounded attack (eps = 1, the whole image box) must break every example (item 5: success 100 %)."""
    if metrics(out)["robust_acc"] > tolerance(size(out)):
        add_flag(row, "unbounded_attack_not_chance")


def abstaining_without_adaptive_attack(made: list[tuple[Row, dict]], worst_rows: list[Row]) -> None:
    """A defense that may reject (its outcomes record rejections) is only as good as its worst case over attacks
    that include one aimed at the accept/reject pipeline (an attack with `reject_aware`; Carlini & Wagner 2017).
    Without any, every row of the model is flagged; otherwise the worst-case rows at budgets none of them covered.
    Every white-box row of an attack that ignores the reject option is flagged `ignores_reject_option`.
    `made`: (row, outcome) of one model's attack rows (each row with its cell); `worst_rows`: its worst-case rows."""
    if not any("clean_rejected" in out for _, out in made):
        return
    covered = {r.budget_key for r, _ in made if r.cell is not None and r.cell.reject_aware}
    for row, _ in made:
        if row.threat_model == "white-box" and not (row.cell is not None and row.cell.reject_aware):
            add_flag(row, "ignores_reject_option")
    flagged = [r for r, _ in made] + worst_rows if not covered else worst_rows
    for row in flagged:
        if row.threat_model != "sanity" and row.budget_key not in covered:
            add_flag(row, "no_adaptive_attack")


def model_checks(made: list[tuple[Row, dict]], worst: list[tuple[Row, dict]], outcomes: dict[str, dict]) -> None:
    """Every per-example check of one model, each on the cells it is for: a crafted attack (transfer, mimicry,
    agnostic) against the iterative white-box attacks; a sanity cell of a randomized model against its base cell
    (`outcomes`: every cell's outcome by id); the reject option against the adaptive attacks."""
    whitebox = [(r, o) for r, o in made if r.threat_model == "white-box"]
    for row, out in made:
        cell = row.cell
        if cell.crafted:
            transfer_vs_whitebox(row, out, whitebox)
        base = outcomes.get(cell.base or "")
        if cell.role == "frozen":
            frozen_randomness(row, out, base)
        elif cell.role == "x2":
            converged(row, out, base)
        elif cell.role == "unbounded":
            unbounded(row, out)
    abstaining_without_adaptive_attack(made, [r for r, _ in worst])


# ---- rules across rows --------------------------------------------------------------------------------
def cross_row_flags(rows: list[Row]) -> None:
    """Between the attack rows of one model: an iterative white-box attack must not be weaker than a single-step
    one at the same norm and epsilon, and robust accuracy must not rise with epsilon along one attack. The
    tolerance is that of the smaller n of the two rows compared."""
    by_model = defaultdict(list)
    for r in rows:
        if r.threat_model != "sanity" and r.attack not in UNIONS:
            by_model[(r.pair, r.defense, r.seed)].append(r)
    for group in by_model.values():
        at = defaultdict(list)
        for r in group:
            if r.threat_model == "white-box":
                at[r.budget_key].append(r)
        for same in at.values():
            for it in (r for r in same if r.steps > 1):
                for s in (r for r in same if r.steps == 1):
                    n = min(it.n_examples, s.n_examples)
                    if it.robust_acc > s.robust_acc + tolerance(n):
                        add_flag(it, "iterative_weaker_than_single_step")
        series = defaultdict(list)
        for r in group:
            series[r.attack].append(r)
        for rs in series.values():
            rs = sorted(rs, key=lambda r: r.eps)
            for lo, hi in zip(rs, rs[1:]):
                n = min(lo.n_examples, hi.n_examples)
                if hi.robust_acc > lo.robust_acc + tolerance(n):
                    add_flag(hi, "non_monotone_in_eps")


def flag_warnings(rows: list[Row]) -> list[str]:
    """One warning line per flag raised on any row (in row order, without repeats)."""
    warnings = []
    for r in rows:
        for flag in r.flag_list:
            warnings.append(
                f"{r.pair}/{r.defense}/seed {r.seed}, {r.attack} {r.norm} eps {r.eps_label} "
                f"(robust {r.robust_acc:.3f}): {FLAG_DOC.get(flag, flag)}"
            )
    return list(dict.fromkeys(warnings))
