"""leaderboard.md: per dataset pair, the defenses ranked at the headline budget, then one section per kind of result
(detection, mimicry, rejecting models, sanity checks, randomized defenses, cost, budgets, transferability), the
findings and every warning. Each section is a function of one pair's rows (`PairResults`); `leaderboard` joins them.
"""

from __future__ import annotations

import math
import statistics

from benchmark.metrics import SANITY_TOL
from benchmark.numerics import machine_line
from benchmark.records import UNIONS, Row, eps_str, same_eps
from benchmark.results import verdicts
from benchmark.results.files import Estimate, PairResults, number
from benchmark.results.statistics import t_interval

ONE_SEED = (
    "One training seed: every number and verdict in this leaderboard is about one trained model per defense, not "
    "about the method (Bouthillier et al. 2021); run with `seeds=[0,1,2]` for verdicts about methods."
)
FORM_DOC = {
    "success_ratio": "ASR_B(x'_A) / ASR_B(x'_B), the transfer attack's success rate on the student over the "
    "white-box one's; 1 means transfer is as effective as white-box.",
    "accuracy_drop": "(acc_B(x) - acc_B(x'_A)) / (acc_B(x) - acc_B(x'_B)) with raw accuracies.",
}


# ---- cells ----------------------------------------------------------------------------------------------------
def _mean_ci(
    values: list[float], fmt: str, scale: float = 1.0, bounds: tuple[float, float] = (-math.inf, math.inf)
) -> str:
    """One value as is; several (one per seed): the mean and its 95 % t interval, "52.1 [48.0, 56.2]", cut to the
    values the quantity can take (`bounds`: an accuracy in [0, 100], seconds >= 0), which a t interval over three
    seeds can leave."""
    values = [scale * v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:{fmt}}"
    low, high = t_interval(values)
    low, high = max(low, bounds[0]), min(high, bounds[1])
    return f"{statistics.mean(values):{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def _pct(values: list[float]) -> str:
    return _mean_ci(values, ".1f", 100, (0.0, 100.0))


def _est(e: Estimate | None, fmt: str = ".1f", bounds: tuple[float, float] = (0.0, 100.0)) -> str:
    """An accuracy (`PairResults.estimate`) in percent: "52.1 [48.0, 56.2]", the interval cut to what the quantity
    can take; the value alone when it has no interval."""
    if e is None or math.isnan(e.mean):
        return "-"
    if math.isnan(e.low):
        return f"{100 * e.mean:{fmt}}"
    low, high = max(100 * e.low, bounds[0]), min(100 * e.high, bounds[1])
    return f"{100 * e.mean:{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def _mean_str(values: list[float], fmt: str = ".2f") -> str:
    """A non-negative quantity (seconds, passes, ratios of counts)."""
    return _mean_ci(values, fmt, bounds=(0.0, math.inf))


def _count(v) -> str:
    x = number(v)
    return "-" if x is None else f"{x:,.0f}"


def _column(attack: str, norm: str, eps: float) -> str:
    """A column header: the attack and its budget (the worst case, which spans attacks, with its norm)."""
    return f"{attack} {norm} {eps_str(norm, eps)}" if attack in UNIONS else f"{attack} {eps_str(norm, eps)}"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|", *("| " + " | ".join(r) + " |" for r in body)]


# ---- the page -------------------------------------------------------------------------------------------------
def _intro(rows: list[Row], headline: dict[str, float], warnings: list[str], machine: dict | None) -> list[str]:
    warned = [
        f"**{len(warnings)} warning(s)**: some numbers may overestimate robustness or a check did not run; "
        "see [Sanity checks](#sanity-checks) at the end.",
        "",
    ]
    return [
        f"# Leaderboard: {rows[0].experiment}" if rows else "# Leaderboard",
        "",
        *(warned if warnings else []),
        "Robust accuracy (%) counts an example as robust only if the model is right on it when clean and under "
        "the attack; for a randomized defense, the accuracy on the final adversarial examples averaged over fresh "
        "draws of its randomness. With several training seeds an accuracy is the mean over seeds [95 % "
        "random-effects interval over seeds and examples, the findings' model], and a model trained once (`ref.`: "
        "the teacher, the common encoder) is shown apart, unranked, with its 95 % t interval over the examples; "
        "intervals are cut to 0-100 %. "
        "`worst_case` is per example over every attack at that norm and epsilon; `worst_transfer` per example "
        "over the transfer attacks alone (every surrogate and family: the black-box number). Attacks may run on "
        "fewer examples (see results.csv "
        "`n_examples`). Ranking: worst case at the headline budget ("
        + ", ".join(f"{n} {eps_str(n, e)}" for n, e in headline.items())
        + "). A defense that may reject its input is ranked by the same rule: a rejected adversarial input counts as "
        "defended, a rejected clean input as an error; its numbers are withheld (-) at budgets where no attack aimed "
        "at its reject decision ran.",
        "",
        *([machine_line(machine), ""] if machine else []),
        *([ONE_SEED, ""] if rows and len({str(r.seed) for r in rows}) < 2 else []),
    ]


def leaderboard(
    rows: list[Row],
    headline: dict[str, float],
    transferability_form: str,
    warnings: list[str],
    found: list[dict] | None = None,
    machine: dict | None = None,
    per_example: dict | None = None,
) -> str:
    """Markdown: per dataset pair, defenses ranked by per-example worst-case robust accuracy at the headline budget,
    then its sections; then the findings (`benchmark.results.verdicts`, when given) and every warning of the run;
    `machine` (`benchmark.numerics.machine`) is named at the top; `per_example` (per_example.json) gives the accuracies
    their intervals (`benchmark.results.files`). `rows` as the report passes them: with the numbers of
    `no_adaptive_attack` rows withheld (`benchmark.results.report.withheld`); `headline`: the budget each norm is ranked
    at, resolved on the rows (`benchmark.records.headline_eps`, by the report)."""
    lines = _intro(rows, headline, warnings, machine)
    for pair in dict.fromkeys(r.pair for r in rows):
        res = PairResults([r for r in rows if r.pair == pair], per_example)
        # listed last, without a rank: a model trained once beside methods trained per seed, then a model whose
        # headline number is withheld
        unranked = {d for d in res.defenses if res.single_model(d)} | _unranked(res, headline)
        order = res.ranked(headline)
        ranked = [d for d in order if d not in unranked] + [d for d in order if d in unranked]
        lines += _ranking(pair, res, headline, ranked, unranked)
        lines += _detection_section(res, headline, ranked)
        lines += _mimicry_section(res) + _abstaining_section(res, headline)
        lines += _sanity_section(res) + _randomized_section(res)
        lines += _cost_section(res, ranked) + _budget_tables(res, ranked)
        lines += _transfer_section(res, ranked, transferability_form, headline)
    if found is not None:
        lines += verdicts.markdown(found)
    lines += ["## Sanity checks", ""]
    if warnings:
        lines += [f"- WARNING: {w}" for w in warnings]
    else:
        lines.append(
            "No check failed: iterative attacks are at least as strong as single-step ones, white-box at least as "
            f"strong as transfer, and robust accuracy falls with epsilon (tolerance {100 * SANITY_TOL:.0f} points)."
        )
    lines.append("")
    return "\n".join(lines)


def _unranked(res: PairResults, headline: dict[str, float]) -> set[str]:
    """Defenses whose worst case at a headline budget is withheld (`no_adaptive_attack`)."""
    return {
        r.defense
        for r in res.rows
        if r.attack == "worst_case"
        and "no_adaptive_attack" in r.flag_list
        and same_eps(r.eps, headline.get(r.norm, -1))
    }


def _ranking(pair: str, res: PairResults, headline: dict, ranked: list[str], unranked: set[str]) -> list[str]:
    """The pair's heading and its ranking: clean accuracy, its cost against plain fine-tuning, every attack at the
    headline budgets."""
    f = res.first
    cols = [(a, n, headline[n]) for a, n in res.attacks if any(res.values(d, a, n, headline[n]) for d in ranked)]
    base = res.clean("finetune")
    lines = [f"## {pair}: {f.source} -> {f.target} ({f.model}, {f.n_examples} target test examples)", ""]
    if base:
        lines += ["`clean cost`: clean accuracy minus plain fine-tuning's (points).", ""]
    header = ["rank", "defense", "clean", *(["clean cost"] if base else []), *(_column(a, n, e) for a, n, e in cols)]
    body = [
        [
            "ref." if res.single_model(d) else "-" if d in unranked else str(i),
            d,
            _est(res.clean_estimate(d)),
            *([_est(res.clean_cost_estimate(d), "+.1f", (-100.0, 100.0))] if base else []),
            *(_est(res.estimate(d, a, n, e)) for a, n, e in cols),
        ]
        for i, d in enumerate(ranked, 1)
    ]
    return lines + _table(header, body)


def _detection_section(res: PairResults, headline: dict, ranked: list[str]) -> list[str]:
    """AUROC of the representation detector under each white-box attack; nothing when detection was off."""
    if not any(number(r.detection_auroc) is not None for r in res.rows):
        return []
    whitebox = [
        (a, n) for a, n in res.attacks if any(r.attack == a and r.threat_model == "white-box" for r in res.rows)
    ]
    lines = [
        "",
        "### Detecting adversarial inputs from the representation (AUROC, %)",
        "",
        "Score: 1 - |cos| to the nearest clean target-training example of the predicted class, in the "
        "model's penultimate representation (our rule; see `benchmark/runner/detection.py`). Clean-correct test "
        "examples against the adversarial examples that fool the model; 50 is chance.",
        "",
    ]
    return lines + _table(
        ["defense", *(_column(a, n, headline[n]) for a, n in whitebox)],
        [[d, *(_pct(res.values(d, a, n, headline[n], "detection_auroc")) for a, n in whitebox)] for d in ranked],
    )


def _mimicry_section(res: PairResults) -> list[str]:
    """Mimicry rows: robust accuracy and, for targeted attacks, the targeted success rate, per budget."""
    mimicry = {r.attack for r in res.rows if r.threat_model == "mimicry"}
    keys = [(a, n, e) for a, n in res.attacks for e in res.epsilons(a, n) if a in mimicry]
    if not keys:
        return []
    lines = [
        "",
        "### Mimicry of the teacher's layer K (Wang et al. 2018)",
        "",
        "Crafted once on the teacher, scored on every student: robust accuracy % (in brackets, for a targeted attack, "
        "the targeted success rate %, the mean over seeds: the share of clean-correct examples the model assigns to "
        "the target class; the findings test the share of all examples so hit, per example). "
        "The untargeted success rate is results.csv `success_rate`.",
        "",
    ]

    def cell(d, a, n, e) -> str:
        robust, targeted = _est(res.estimate(d, a, n, e)), res.values(d, a, n, e, "targeted_success")
        return robust + (f" ({100 * statistics.mean(targeted):.1f})" if targeted else "")

    return lines + _table(
        ["defense", *(_column(a, n, e) for a, n, e in keys)],
        [[d, *(cell(d, a, n, e) for a, n, e in keys)] for d in res.defenses],
    )


def _abstaining_section(res: PairResults, headline: dict[str, float]) -> list[str]:
    """Defenses that may reject: clean accuracy on accepted inputs, false rejections, defense and rejection rates
    under every attack at the headline budgets."""
    rows = [
        r for r in res.rows if number(r.false_rejection_rate) is not None and same_eps(r.eps, headline.get(r.norm, -1))
    ]
    if not rows:
        return []
    lines = [
        "",
        "### Defenses that reject inputs",
        "",
        "`clean`: accuracy with a rejected clean input counted as an error; `accepted`: accuracy on the clean inputs "
        "accepted; `false rej.`: clean inputs rejected; `robust`: the headline rule (a rejected adversarial input "
        "is defended); `defense rate`: adversarial inputs (of the examples right clean) rejected or classified "
        "right; `adv rej.`: of those, rejected. At the headline budgets; every attack, including the adaptive one.",
        "",
    ]
    fields = ("clean_acc", "clean_acc_accepted", "false_rejection_rate", "robust_acc", "defense_rate")
    header = ["defense", "seed", "attack", "budget", "clean", "accepted", "false rej.", "robust", "defense rate"]
    return lines + _table(
        [*header, "adv rej."],
        [
            [r.defense, str(r.seed), r.attack, f"{r.norm} {eps_str(r.norm, r.eps)}"]
            + [_pct([v]) if (v := number(getattr(r, f))) is not None else "-" for f in (*fields, "adv_rejection_rate")]
            for r in rows
        ],
    )


def _sanity_section(res: PairResults) -> list[str]:
    if not res.sanity:
        return []
    lines = [
        "",
        "### Sanity checks of the randomized defenses",
        "",
        "Frozen randomness: the EOT attack without EOT on the model with its randomness fixed (it must "
        "succeed). Unbounded: eps = 1 (it must reach chance). The doubled attack (`_x2`: twice the "
        "steps and EOT samples) is with the attacks above and in the worst case; flags are listed "
        "below.",
        "",
    ]
    return lines + _table(
        ["defense", "seed", "check", "examples", "clean", "robust", "flags"],
        [
            [
                r.defense,
                str(r.seed),
                r.attack,
                str(r.n_examples),
                _pct([number(r.clean_acc)]),
                _pct([number(r.robust_acc)]),
                r.flags or "ok",
            ]
            for r in res.sanity
        ],
    )


def _randomized_section(res: PairResults) -> list[str]:
    randomized = [r for r in res.rows if r.draws > 1 and r.attack not in UNIONS]
    if not randomized:
        return []
    lines = [
        "",
        "### Randomized defenses: every attack, scored after optimizing",
        "",
        f"Each final adversarial example is scored over K = {randomized[0].draws} fresh draws "
        "of the randomness: `robust` is the accuracy averaged over the draws (every example attacked), "
        "`worst of K` counts an example only if all K draws are right. Cost: examples x passes through the "
        "deployed model, and wall seconds.",
        "",
    ]
    return lines + _table(
        ["defense", "seed", "attack", "eps", "examples", "clean", "robust", "worst of K", "fwd", "bwd", "sec"],
        [
            [
                r.defense,
                str(r.seed),
                r.attack,
                r.eps_label,
                str(r.n_examples),
                _pct([number(r.clean_acc)]),
                _pct([number(r.robust_acc)]),
                _pct([number(r.robust_acc_worst_of_k)]),
                _count(r.forward_passes),
                _count(r.backward_passes),
                _mean_str([v for v in [number(r.wall_seconds)] if v is not None], ".1f"),
            ]
            for r in randomized
        ],
    )


def _cost_section(res: PairResults, ranked: list[str]) -> list[str]:
    lines = ["", "### Training cost (seconds, this run's machine)", ""]
    return lines + _table(
        ["defense", "training", "preparation"],
        [
            [d, _mean_str(res.field(d, "train_seconds"), ".1f"), _mean_str(res.field(d, "prep_seconds"), ".1f")]
            for d in ranked
        ],
    )


def _budget_tables(res: PairResults, ranked: list[str]) -> list[str]:
    lines = ["", "### Robust accuracy (%) against epsilon", ""]
    for a, n in res.attacks:
        epss = res.epsilons(a, n)
        lines += [f"**{a}** ({n})", ""]
        lines += _table(
            ["defense", *(eps_str(n, e) for e in epss)],
            [[d, *(_est(res.estimate(d, a, n, e)) for e in epss)] for d in ranked],
        )
        lines.append("")
    return lines


def _transfer_section(res: PairResults, ranked: list[str], form: str, headline: dict[str, float]) -> list[str]:
    """Transferability of every transfer attack (its surrogate and white-box reference named) at the headline budget
    of its norm, or its swept budget nearest to it."""
    transfer = [(a, n) for a, n in res.attacks if any(r.threat_model == "transfer" and r.attack == a for r in res.rows)]
    if not transfer:
        return []
    keys = [(a, n, min(res.epsilons(a, n), key=lambda e: abs(e - headline.get(n, e)))) for a, n in transfer]

    def about(a: str) -> str:
        r = next(r for r in res.rows if r.attack == a and r.threat_model == "transfer")
        ref = next((r.transfer_reference for r in res.rows if r.attack == a and r.transfer_reference), None)
        return f"`{a}`: crafted on {r.surrogate or 'the teacher'}, relative to {ref or 'its own attack'} white-box"

    lines = [
        "### Transferability of each transfer attack",
        "",
        f"T = {form}: {FORM_DOC[form]} This is our reading of Zhang et al. "
        "2020 (arXiv 2008.11089): the paper's formula is unverified (see `benchmark/metrics.py`). Both "
        "readings are in results.csv. " + "; ".join(about(a) for a, _ in transfer) + ".",
        "",
    ]
    lines += _table(
        ["defense", *(_column(a, n, e) for a, n, e in keys)],
        [[d, *(_mean_ci(res.values(d, a, n, e, "transferability"), ".2f") for a, n, e in keys)] for d in ranked],
    )
    return [*lines, ""]
