"""Findings: does this run support the claims of the papers behind the suite?

Each claim says that one defense keeps a higher robust accuracy than another under one attack at one budget.
It is tested per seed on the examples both rows cover (`per_example.json`: entry i is target test example i), so
the test is paired (exact McNemar on 0/1 outcomes, a paired bootstrap on the draw fractions of randomized models;
`benchmark.stats`).

Holm's correction runs over every test of the run (claims x pairs x seeds). Verdict rule: "supported" when the
Holm-adjusted one-sided p is below 0.05 in every seed; "contradicted" when the one-sided test in the other
direction is, Holm-adjusted over the same family, in every seed; otherwise "not supported". With several
seeds the effect is given as the mean difference over seeds with a 95 % t interval.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, fields

from benchmark.claims import extra_claims
from benchmark.records import Row, eps_str, headline_eps, same_eps
from benchmark.stats import paired_test, t_interval

ALPHA = 0.05
HEADLINE = "headline"


@dataclass(frozen=True)
class Claim:
    """`higher` keeps a higher robust accuracy than `lower` under `attack` at (`norm`, `eps`).

    `eps` is "headline" (the budget the leaderboard ranks at) or a number / fraction string such as "8/255".
    """

    text: str
    source: str
    higher: str
    lower: str
    attack: str
    norm: str = "linf"
    eps: str = HEADLINE


#: The seed claims; `report.claims` in the config may replace them (a list of dicts with these keys).
CLAIMS = [
    Claim(
        "Fine-tuning is more robust than training from scratch under white-box FGSM",
        "Zhang et al. 2020",
        higher="finetune",
        lower="scratch",
        attack="fgsm",
    ),
    Claim(
        "Transfer from the teacher is stronger into a fine-tuned student than into an independently trained one "
        "(lower robust accuracy under the teacher's PGD)",
        "Zhang et al. 2020",
        higher="scratch",
        lower="finetune",
        attack="transfer_pgd_linf",
    ),
    *(
        Claim(
            f"{name} is more robust than plain fine-tuning in the per-example worst case",
            paper,
            higher=defense,
            lower="finetune",
            attack="worst_case",
        )
        for name, defense, paper in (
            ("TLA", "tla", "Mao et al. 2019"),
            ("TRADES", "trades", "Zhang et al. 2019 (TRADES)"),
            ("Gen-AF", "genaf", "Zhou et al. 2024"),
        )
    ),
    Claim(
        "AToP (adversarially fine-tuned purifier) is more robust than its purifier alone in the worst case",
        "Lin et al. 2024",
        higher="atop",
        lower="purifier",
        attack="worst_case",
    ),
    *extra_claims(Claim),  # the README's claims of papers 1-3 beyond these (benchmark.claims)
]


def claims_from_config(entries: list[dict]) -> list[Claim]:
    """Claims from the config (`report.claims`): each entry has the fields of `Claim` (norm, eps optional)."""
    from attacks.errors import ConfigError

    names = [f.name for f in fields(Claim)]
    required = [n for n in names if n not in ("norm", "eps")]
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) - set(names) or set(required) - set(entry):
            raise ConfigError(f"report.claims[{i}] must be a mapping with keys {', '.join(names)} (norm, eps optional)")
        if entry.get("norm", "linf") not in ("linf", "l2"):
            raise ConfigError(f"report.claims[{i}].norm '{entry['norm']}'; valid: l2, linf")
        out.append(Claim(**{k: str(v) for k, v in entry.items()}))
    return out


def _rows_for(rows: list[Row], claim: Claim, pair: str, eps: float) -> dict[tuple[str, str], Row]:
    """(defense, seed) -> the claim's row for that model."""
    return {
        (r.defense, str(r.seed)): r
        for r in rows
        if r.pair == pair
        and r.threat_model != "sanity"
        and r.attack == claim.attack
        and r.norm == claim.norm
        and same_eps(r.eps, eps)
        and r.defense in (claim.higher, claim.lower)
    }


def findings(
    rows: list[Row], per_example: dict | None, headline: dict[str, float], claims: list[Claim] | None = None
) -> list[dict]:
    """One finding per claim and dataset pair: the two robust accuracies, their difference, the paired test per
    seed, the Holm-adjusted p and the verdict (see the module docstring for the rule)."""
    from statsmodels.stats.multitest import multipletests

    from attacks.base import parse_eps

    claims = CLAIMS if claims is None else claims
    per_example = per_example or {}
    hl = headline_eps(rows, headline) if rows else {}
    out, tests = [], []
    for pair in dict.fromkeys(r.pair for r in rows):
        for claim in claims:
            if hasattr(claim, "evaluate"):  # a claim of another shape (benchmark.claims): same tests, same table
                out.append(claim.evaluate(rows, per_example, pair, hl))
                tests += out[-1]["per_seed"]
                continue
            eps = hl.get(claim.norm, math.nan) if claim.eps == HEADLINE else parse_eps(claim.eps)
            found = _rows_for(rows, claim, pair, eps)
            seeds = sorted({s for d, s in found if d == claim.higher} & {s for d, s in found if d == claim.lower})
            item = {
                "claim": claim.text,
                "source": claim.source,
                "pair": pair,
                "higher": claim.higher,
                "lower": claim.lower,
                "attack": claim.attack,
                "norm": claim.norm,
                "eps": eps,
                "eps_label": eps_str(claim.norm, eps),
                "seeds": len(seeds),
                "per_seed": [],
            }
            ids = [(found[(claim.higher, s)].row_id, found[(claim.lower, s)].row_id) for s in seeds]
            if not seeds:
                item["verdict"] = "not in this run"
            elif not all(per_example.get(a, {}).get("robust") and per_example.get(b, {}).get("robust") for a, b in ids):
                item["verdict"] = "not tested (no per-example outcomes for its rows)"
            else:
                for s, (a, b) in zip(seeds, ids):
                    item["per_seed"].append(
                        {"seed": s, **paired_test(per_example[a]["robust"], per_example[b]["robust"])}
                    )
                tests += item["per_seed"]
            out.append(item)
    if tests:
        for key in ("p", "p_reverse"):
            adjusted = multipletests([t[key] for t in tests], alpha=ALPHA, method="holm")[1]
            for t, q in zip(tests, adjusted):
                t[f"{key}_holm"] = float(q)
    for item in out:
        _summarize(item)
    return out


def _summarize(item: dict) -> None:
    seeds = item["per_seed"]
    for t in seeds:
        t["verdict"] = (
            "supported" if t["p_holm"] < ALPHA else "contradicted" if t["p_reverse_holm"] < ALPHA else "not supported"
        )
    diffs = [t["difference"] for t in seeds]
    low, high = t_interval(diffs)
    item.update(
        higher_acc=statistics.mean(t["higher_acc"] for t in seeds) if seeds else math.nan,
        lower_acc=statistics.mean(t["lower_acc"] for t in seeds) if seeds else math.nan,
        difference=statistics.mean(diffs) if seeds else math.nan,
        difference_ci_low=low,
        difference_ci_high=high,
        n=min((t["n"] for t in seeds), default=0),
        test=" / ".join(dict.fromkeys(t["test"] for t in seeds)),
        # The verdict needs every seed: the seed with the largest p decides.
        p=max((t["p"] for t in seeds), default=math.nan),
        p_holm=max((t["p_holm"] for t in seeds), default=math.nan),
    )
    if seeds:
        verdicts = {t["verdict"] for t in seeds}
        item["verdict"] = verdicts.pop() if len(verdicts) == 1 else "not supported"


#: The flat columns of a finding (the W&B table; `per_seed` is in the markdown).
COLUMNS = (
    "claim", "source", "pair", "higher", "lower", "attack", "norm", "eps_label", "seeds", "higher_acc", "lower_acc",
    "difference", "difference_ci_low", "difference_ci_high", "n", "test", "p", "p_holm", "verdict",
)  # fmt: skip


def _pct(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def _p(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.2g}" if x >= 1e-4 else "<0.0001"


def markdown(items: list[dict]) -> list[str]:
    """The leaderboard's "Findings" section (lines of markdown)."""
    lines = [
        "## Findings",
        "",
        "Each claim of the papers, tested on this run: robust accuracy (%) of the claimed-higher and -lower "
        "model on the examples both rows cover, and a one-sided paired test per seed (exact McNemar on 0/1 "
        "outcomes: binomial tail of the discordant examples; a paired percentile bootstrap on the draw fractions "
        f"of randomized models). Holm's correction over every test of the run; alpha = {ALPHA}. `supported`: "
        "significant in every seed; `contradicted`: significant in the other direction in every seed; with several "
        "seeds the difference is the mean over seeds [95 % t interval] and p is the largest over seeds.",
        "",
    ]
    if not items:
        return [*lines, "No rows to test.", ""]
    header = ["claim", "pair", "claimed higher", "claimed lower", "attack", "difference (points)", "n", "test", "p",
              "Holm p", "verdict"]  # fmt: skip
    lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for f in items:
        if not f["per_seed"]:
            cells = [f["claim"], f["pair"], f["higher"], f["lower"], _attack(f), "-", "-", "-", "-", "-", f["verdict"]]
        else:
            diff = f"{100 * f['difference']:+.1f}"
            if f["seeds"] > 1:
                diff += f" [{100 * f['difference_ci_low']:+.1f}, {100 * f['difference_ci_high']:+.1f}]"
            cells = [
                f"{f['claim']} ({f['source']})",
                f["pair"],
                f"{f['higher']} {_pct(f['higher_acc'])}",
                f"{f['lower']} {_pct(f['lower_acc'])}",
                _attack(f),
                diff,
                str(f["n"]),
                f["test"],
                _p(f["p"]),
                _p(f["p_holm"]),
                f"**{f['verdict']}**",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    multi = [f for f in items if len(f["per_seed"]) > 1]
    if multi:
        lines += ["", "Per seed:", "", "| claim | pair | seed | higher | lower | n | test | p | Holm p | verdict |"]
        lines.append("|---" * 10 + "|")
        for f in multi:
            for t in f["per_seed"]:
                lines.append(
                    f"| {f['higher']} > {f['lower']}, {_attack(f)} | {f['pair']} | {t['seed']} "
                    f"| {_pct(t['higher_acc'])} | {_pct(t['lower_acc'])} | {t['n']} | {t['test']} | {_p(t['p'])} "
                    f"| {_p(t['p_holm'])} | {t['verdict']} |"
                )
    return [*lines, ""]


def _attack(f: dict) -> str:
    return f"{f['attack']} {f['norm']} {f['eps_label']}".strip()
