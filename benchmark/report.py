"""The sweep's outputs: results.csv (one row per cell), leaderboard.md, plots, and the sanity warnings.

`python -m benchmark.report results/<experiment>` rebuilds the leaderboard and plots from what the run wrote:
results.csv, per_example.json (the findings' paired tests), run_warnings.json and report_config.json. It only
reads: the flags in results.csv were raised once by the runner (`benchmark/checks.py`), so a rebuilt leaderboard
says exactly what the original said, and results.csv stays as it is.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from benchmark import findings as fnd
from benchmark import seeds
from benchmark.checks import flag_warnings
from benchmark.findings import eps_str, headline_eps
from benchmark.metrics import SANITY_TOL
from benchmark.results import PairResults, number, read_csv


# ---- results.csv --------------------------------------------------------------------------------------
def _mean_ci(values: list[float], fmt: str, scale: float = 1.0) -> str:
    """One value as is; several (one per seed): the mean and its 95 % t interval, "52.1 [48.0, 56.2]"."""
    values = [scale * v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:{fmt}}"
    low, high = fnd.t_interval(values)
    return f"{statistics.mean(values):{fmt}} [{low:{fmt}}, {high:{fmt}}]"


def _pct(values: list[float]) -> str:
    return _mean_ci(values, ".1f", 100)


def _column(attack: str, norm: str, eps: float) -> str:
    """A column header: the attack and its budget (the worst case, which spans attacks, with its norm)."""
    return f"{attack} {norm} {eps_str(norm, eps)}" if attack == "worst_case" else f"{attack} {eps_str(norm, eps)}"


def _table(header: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|---" * len(header) + "|", *("| " + " | ".join(r) + " |" for r in body)]


def leaderboard(
    rows: list[dict],
    headline: dict[str, float],
    transferability_form: str,
    warnings: list[str],
    found: list[dict] | None = None,
) -> str:
    """Markdown: per dataset pair, defenses ranked by per-example worst-case robust accuracy at the headline budget;
    then the findings (`benchmark.findings`, when given) and every warning of the run. `rows` as `rebuild` passes
    them: with the numbers of `no_adaptive_attack` rows withheld (`withheld`)."""
    hl = headline_eps(rows, headline)
    lines = [
        f"# Leaderboard: {rows[0]['experiment']}" if rows else "# Leaderboard",
        "",
        *(
            [
                f"**{len(warnings)} warning(s)**: some numbers may overestimate robustness or a check did not run; "
                "see [Sanity checks](#sanity-checks) at the end.",
                "",
            ]
            if warnings
            else []
        ),
        "Robust accuracy (%) counts an example as robust only if the model is right on it when clean and under "
        "the attack (with several seeds: the mean [95 % t interval] over seeds); for a randomized defense, the "
        "accuracy on the final adversarial examples averaged over fresh draws of its randomness. `worst_case` is per "
        "example "
        "over every attack at that norm and epsilon. Attacks may run on fewer examples (see results.csv "
        "`n_examples`). Ranking: worst case at the headline budget ("
        + ", ".join(f"{n} {eps_str(n, e)}" for n, e in hl.items())
        + "). A defense that may reject its input is ranked by the same rule: a rejected adversarial input counts as "
        "defended, a rejected clean input as an error; its numbers are withheld (-) at budgets where no attack aimed "
        "at its reject decision ran.",
        "",
    ]
    for pair in dict.fromkeys(r["pair"] for r in rows):
        res = PairResults([r for r in rows if r["pair"] == pair])
        f = res.first
        unranked = _unranked(res, hl)  # its headline number is withheld: listed last, without a rank
        ranked = [d for d in res.ranked(hl) if d not in unranked] + [d for d in res.ranked(hl) if d in unranked]
        cols = [(a, n, hl[n]) for a, n in res.attacks if any(res.values(d, a, n, hl[n]) for d in ranked)]
        base = res.clean("finetune")
        lines += [
            f"## {pair}: {f['source']} -> {f['target']} ({f['model']}, {f['n_examples']} target test examples)",
            "",
        ]
        if base:
            lines += ["`clean cost`: clean accuracy minus plain fine-tuning's (points).", ""]
        lines += _table(
            [
                "rank",
                "defense",
                "clean",
                *(["clean cost"] if base else []),
                *(_column(a, n, e) for a, n, e in cols),
            ],
            [
                [
                    "-" if d in unranked else str(i),
                    d,
                    _pct(res.clean(d)),
                    *([_signed(res.clean_cost(d))] if base else []),
                    *(_pct(res.values(d, a, n, e)) for a, n, e in cols),
                ]
                for i, d in enumerate(ranked, 1)
            ],
        )
        lines += _detection_section(res, hl, ranked)
        lines += _mimicry_section(res) + _abstaining_section(res, hl)
        if res.sanity:
            lines += [
                "",
                "### Sanity checks of the randomized defenses",
                "",
                "Frozen randomness: the EOT attack without EOT on the model with its randomness fixed (it must "
                "succeed). Unbounded: eps = 1 (it must reach chance). The doubled attack (`_x2`: twice the "
                "steps and EOT samples) is with the attacks above and in the worst case; flags are listed "
                "below.",
                "",
            ]
            lines += _table(
                ["defense", "seed", "check", "examples", "clean", "robust", "flags"],
                [
                    [
                        r["defense"],
                        str(r["seed"]),
                        r["attack"],
                        str(r["n_examples"]),
                        _pct([number(r["clean_acc"])]),
                        _pct([number(r["robust_acc"])]),
                        r.get("flags") or "ok",
                    ]
                    for r in res.sanity
                ],
            )
        randomized = [r for r in res.rows if (number(r.get("draws")) or 1) > 1 and r["attack"] != "worst_case"]
        if randomized:
            lines += [
                "",
                "### Randomized defenses: every attack, scored after optimizing",
                "",
                f"Each final adversarial example is scored over K = {int(number(randomized[0]['draws']))} fresh draws "
                "of the randomness: `robust` is the accuracy averaged over the draws (every example attacked), "
                "`worst of K` counts an example only if all K draws are right. Cost: examples x passes through the "
                "deployed model, and wall seconds.",
                "",
            ]
            lines += _table(
                ["defense", "seed", "attack", "eps", "examples", "clean", "robust", "worst of K", "fwd", "bwd", "sec"],
                [
                    [
                        r["defense"],
                        str(r["seed"]),
                        r["attack"],
                        str(r["eps_label"]),
                        str(r["n_examples"]),
                        _pct([number(r["clean_acc"])]),
                        _pct([number(r["robust_acc"])]),
                        _pct([number(r["robust_acc_worst_of_k"])]),
                        _count(r.get("forward_passes")),
                        _count(r.get("backward_passes")),
                        _mean_str([v for v in [number(r.get("wall_seconds"))] if v is not None], ".1f"),
                    ]
                    for r in randomized
                ],
            )
        lines += ["", "### Training cost (seconds, this run's machine)", ""]
        lines += _table(
            ["defense", "training", "preparation"],
            [
                [d, _mean_str(res.field(d, "train_seconds"), ".1f"), _mean_str(res.field(d, "prep_seconds"), ".1f")]
                for d in ranked
            ],
        )
        lines += ["", "### Robust accuracy (%) against epsilon", ""]
        for a, n in res.attacks:
            epss = res.epsilons(a, n)
            lines += [f"**{a}** ({n})", ""]
            lines += _table(
                ["defense", *(eps_str(n, e) for e in epss)],
                [[d, *(_pct(res.values(d, a, n, e)) for e in epss)] for d in ranked],
            )
            lines.append("")
        transfer = [
            (a, n)
            for a, n in res.attacks
            if any(r["threat_model"] == "transfer" and r["attack"] == a for r in res.rows)
        ]
        if transfer:
            lines += [
                "### Transferability from the teacher",
                "",
                f"T = {transferability_form}: {FORM_DOC[transferability_form]} This is our reading of Zhang et al. "
                "2020 (arXiv 2008.11089): the paper's formula is unverified (see `benchmark/metrics.py`). Both "
                "readings are in results.csv.",
                "",
            ]
            keys = [(a, n, e) for a, n in transfer for e in res.epsilons(a, n)]
            lines += _table(
                ["defense", *(_column(a, n, e) for a, n, e in keys)],
                [[d, *(_mean_str(res.values(d, a, n, e, "transferability")) for a, n, e in keys)] for d in ranked],
            )
            lines.append("")
    if found is not None:
        lines += fnd.markdown(found)
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


#: Row fields blanked when a defense that may reject lacks an attack on its reject decision (`no_adaptive_attack`).
WITHHELD_FIELDS = ("robust_acc", "robust_acc_worst_of_k", "success_rate", "robust_acc_ci_low", "robust_acc_ci_high")


def withheld(row: dict) -> dict:
    """The row as the leaderboard shows it: without robustness numbers when the runner flagged it
    `no_adaptive_attack` (results.csv keeps them, with the flag)."""
    if "no_adaptive_attack" not in str(row.get("flags") or "").split(";"):
        return row
    return {**row, **dict.fromkeys(WITHHELD_FIELDS, "")}


def _unranked(res: PairResults, hl: dict[str, float]) -> set[str]:
    """Defenses whose worst case at a headline budget is withheld (`no_adaptive_attack`)."""
    return {
        r["defense"]
        for r in res.rows
        if r["attack"] == "worst_case"
        and "no_adaptive_attack" in str(r.get("flags") or "")
        and abs(float(r["eps"]) - hl.get(r["norm"], -1)) < 1e-9
    }


def _detection_section(res: PairResults, hl: dict, ranked: list[str]) -> list[str]:
    """AUROC of the representation detector under each white-box attack; nothing when detection was off."""
    if not any(number(r.get("detection_auroc")) is not None for r in res.rows):
        return []
    whitebox = [
        (a, n) for a, n in res.attacks if any(r["attack"] == a and r["threat_model"] == "white-box" for r in res.rows)
    ]
    lines = [
        "",
        "### Detecting adversarial inputs from the representation (AUROC, %)",
        "",
        "Score: 1 - |cos| to the nearest clean target-training example of the predicted class, in the "
        "model's penultimate representation (our rule; see `benchmark/detection.py`). Clean-correct test "
        "examples against the adversarial examples that fool the model; 50 is chance.",
        "",
    ]
    return lines + _table(
        ["defense", *(_column(a, n, hl[n]) for a, n in whitebox)],
        [[d, *(_pct(res.values(d, a, n, hl[n], "detection_auroc")) for a, n in whitebox)] for d in ranked],
    )


def _mimicry_section(res: PairResults) -> list[str]:
    """Mimicry rows: robust accuracy and, for targeted attacks, the targeted success rate, per budget."""
    mimicry = {r["attack"] for r in res.rows if r["threat_model"] == "mimicry"}
    keys = [(a, n, e) for a, n in res.attacks for e in res.epsilons(a, n) if a in mimicry]
    if not keys:
        return []
    lines = [
        "",
        "### Mimicry of the teacher's layer K (Wang et al. 2018)",
        "",
        "Crafted once on the teacher, scored on every student: robust accuracy % (in brackets, for a targeted attack, "
        "the targeted success rate %: the share of clean-correct examples the model assigns to the target class). "
        "The untargeted success rate is results.csv `success_rate`.",
        "",
    ]

    def cell(d, a, n, e) -> str:
        robust, targeted = _pct(res.values(d, a, n, e)), res.values(d, a, n, e, "targeted_success")
        return robust + (f" ({_pct(targeted)})" if targeted else "")

    return lines + _table(
        ["defense", *(_column(a, n, e) for a, n, e in keys)],
        [[d, *(cell(d, a, n, e) for a, n, e in keys)] for d in res.defenses],
    )


def _abstaining_section(res: PairResults, hl: dict[str, float]) -> list[str]:
    """Defenses that may reject: clean accuracy on accepted inputs, false rejections, defense and rejection rates
    under every attack at the headline budgets."""
    rows = [
        r
        for r in res.rows
        if number(r.get("false_rejection_rate")) is not None and abs(float(r["eps"]) - hl.get(r["norm"], -1)) < 1e-9
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
            [r["defense"], str(r["seed"]), r["attack"], f"{r['norm']} {eps_str(r['norm'], float(r['eps']))}"]
            + [_pct([v]) if (v := number(r.get(f))) is not None else "-" for f in (*fields, "adv_rejection_rate")]
            for r in rows
        ],
    )


FORM_DOC = {
    "success_ratio": "ASR_B(x'_A) / ASR_B(x'_B), the transfer attack's success rate on the student over the "
    "white-box one's; 1 means transfer is as effective as white-box.",
    "accuracy_drop": "(acc_B(x) - acc_B(x'_A)) / (acc_B(x) - acc_B(x'_B)) with raw accuracies.",
}


def _count(v) -> str:
    x = number(v)
    return "-" if x is None else f"{x:,.0f}"


def _mean_str(values: list[float], fmt: str = ".2f") -> str:
    return _mean_ci(values, fmt)


def _signed(values: list[float]) -> str:
    return _mean_ci(values, "+.1f", 100)


def read_outputs(out_dir: Path) -> dict:
    """What a run left in `out_dir` besides results.csv: per_example.json, run_warnings.json, report_config.json
    (each optional; an older run has none of the first two)."""
    out_dir = Path(out_dir)

    def load(name: str, default):
        path = out_dir / name
        return json.loads(path.read_text()) if path.exists() else default

    return {
        "per_example": load("per_example.json", None),
        "run_warnings": load("run_warnings.json", []),
        "report_config": load("report_config.json", {}),
    }


def rebuild(out_dir: Path) -> dict[str, Path]:
    """Write leaderboard.md and the plots of a run from what it wrote in `out_dir` (results.csv is only read);
    returns the plot paths.

    The warnings shown are the run's own (run_warnings.json) followed by one per flag the runner raised; none is
    recomputed. The claims are `benchmark.findings.CLAIMS` unless report_config.json has `claims`.
    """
    out_dir = Path(out_dir)
    rows = read_csv(out_dir / "results.csv")
    saved = read_outputs(out_dir)
    config = saved["report_config"]
    headline = config.get("headline") or {"linf": 16 / 255, "l2": 1.0}  # config.yaml's default
    form = config.get("transferability", "success_ratio")
    warnings = list(dict.fromkeys([*saved["run_warnings"], *flag_warnings(rows)]))
    rows = [withheld(r) for r in rows]  # the flags stay, the numbers they withhold go (figures included)
    claims = fnd.claims_from_config(config["claims"]) if config.get("claims") else None
    found = fnd.findings(rows, saved["per_example"], headline, claims)
    methods = seeds.markdown(rows, saved["per_example"], headline, claims)  # several seeds: claims about methods
    (out_dir / "leaderboard.md").write_text(leaderboard(rows, headline, form, warnings, found) + methods)
    from benchmark.plots import plots  # matplotlib: only when the figures are drawn

    return plots(rows, out_dir, headline)


def main(argv: list[str] | None = None) -> int:
    """Rebuild leaderboard.md and the plots of a finished sweep (`make report`)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m benchmark.report results/<experiment>", file=sys.stderr)
        return 2
    out = Path(argv[0])
    if not (out / "results.csv").exists():
        print(f"error: no results.csv in {out}; run `make bench` first", file=sys.stderr)
        return 2
    paths = rebuild(out)
    print(f"wrote {out / 'leaderboard.md'} and {', '.join(p.name for p in paths.values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
