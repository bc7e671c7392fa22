"""Findings: does this run support the claims of the papers behind the suite?

Each claim says that one defense keeps a higher robust accuracy than another under one attack at one budget.
It is tested per seed on the examples both rows cover (`per_example.json`: entry i is target test example i), so
the test is paired:

- 0/1 outcomes (deterministic models): exact McNemar. Only the discordant examples carry information; under the
  null each is equally likely to favour either model, so the one-sided p is the exact binomial tail of b (the
  examples only the claimed-better model gets right) among b + c discordant examples
  (`scipy.stats.binomtest(b, b + c, 0.5, alternative="greater")`); the two-sided p of
  `statsmodels...mcnemar(exact=True)` is kept beside it.
- fractions (randomized models, the share of K draws that are right): a paired percentile bootstrap of the mean
  difference (`scipy.stats.bootstrap(paired=True)`, fixed seed); the one-sided p is the share of bootstrap means
  at or below 0 (the inversion of the one-sided percentile interval), with one added to both counts.

Holm's correction runs over every test of the run (claims x pairs x seeds). Verdict rule: "supported" when the
Holm-adjusted one-sided p is below 0.05 in every seed; "contradicted" when the one-sided test in the other
direction is, Holm-adjusted over the same family, in every seed; otherwise "not supported". With several
seeds the effect is given as the mean difference over seeds with a 95 % t interval.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, fields

import numpy as np

from benchmark.claims import extra_claims

ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 9999
BOOTSTRAP_SEED = 0
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


def headline_eps(rows: list[dict], headline: dict) -> dict[str, float]:
    """The budget each norm is ranked at: the configured one if swept, else the median swept value."""
    out = {}
    for norm in sorted({r["norm"] for r in rows}, key=lambda n: n != "linf"):
        swept = sorted({round(float(r["eps"]), 10) for r in rows if r["norm"] == norm})
        want = headline.get(norm)
        out[norm] = want if want is not None and any(abs(e - want) < 1e-9 for e in swept) else swept[len(swept) // 2]
    return out


def eps_str(norm: str, eps: float) -> str:
    """A budget as the leaderboard writes it: L-inf in 1/255 units ("16/255"), L2 as is."""
    if math.isnan(eps):
        return "-"
    return f"{round(eps * 255, 3):g}/255" if norm == "linf" else f"{eps:g}"


#: The axis of a budget sweep, per budget type (`attacks.base.BUDGETS`).
AXES = {"linf": "epsilon (x/255)", "l2": "epsilon (L2)", "dssim": "DSSIM threshold P", "patch": "patch area (fraction)"}


def eps_axis(norm: str) -> str:
    return AXES.get(norm, f"budget ({norm})")


def t_interval(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """The t interval of the mean of `values` (NaN without two values)."""
    from scipy import stats

    if len(values) < 2:
        return math.nan, math.nan
    mean, sem = statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))
    if sem == 0:
        return mean, mean
    low, high = stats.t.interval(level, len(values) - 1, loc=mean, scale=sem)
    return float(low), float(high)


def paired_test(higher: list[float], lower: list[float]) -> dict:
    """One-sided paired test that `higher` beats `lower` (and the reverse), on the examples both cover."""
    from scipy import stats

    n = min(len(higher), len(lower))
    if n == 0:
        raise ValueError("a paired test needs examples that both rows cover; one row has no per-example outcomes")
    h, lo = np.asarray(higher[:n], float), np.asarray(lower[:n], float)
    out = {
        "n": n,
        "higher_acc": float(h.mean()),
        "lower_acc": float(lo.mean()),
        "difference": float(h.mean() - lo.mean()),
    }
    if np.isin(h, (0.0, 1.0)).all() and np.isin(lo, (0.0, 1.0)).all():
        from statsmodels.stats.contingency_tables import mcnemar

        b, c = int(((h == 1) & (lo == 0)).sum()), int(((h == 0) & (lo == 1)).sum())
        table = [[int(((h == 1) & (lo == 1)).sum()), b], [c, int(((h == 0) & (lo == 0)).sum())]]
        if b + c == 0:  # no discordant example: no evidence either way (binomtest needs at least one trial)
            p = p_rev = two_sided = 1.0
        else:
            p = stats.binomtest(b, b + c, 0.5, alternative="greater").pvalue
            p_rev = stats.binomtest(b, b + c, 0.5, alternative="less").pvalue
            two_sided = mcnemar(table, exact=True).pvalue
        return {
            **out,
            "test": "exact McNemar",
            "discordant": f"{b} vs {c}",
            "p": float(p),
            "p_reverse": float(p_rev),
            "p_two_sided": float(two_sided),
        }
    if n < 2:  # nothing to resample: no evidence either way
        return {
            **out,
            "test": "paired bootstrap",
            "discordant": "",
            "p": 1.0,
            "p_reverse": 1.0,
            "p_two_sided": math.nan,
        }
    res = stats.bootstrap(
        (h, lo),
        lambda a, b, axis=-1: a.mean(axis=axis) - b.mean(axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        batch=max(1, 2_000_000 // max(n, 1)),  # memory: one batch holds batch x n resampled indices
        rng=np.random.default_rng(BOOTSTRAP_SEED),
    )
    dist = res.bootstrap_distribution
    tail = dist.size + 1
    return {
        **out,
        "test": "paired bootstrap",
        "discordant": "",
        "p": float((1 + (dist <= 0).sum()) / tail),
        "p_reverse": float((1 + (dist >= 0).sum()) / tail),
        "p_two_sided": math.nan,
    }


def _rows_for(rows: list[dict], claim: Claim, pair: str, eps: float) -> dict[tuple[str, str], dict]:
    """(defense, seed) -> the claim's row for that model."""
    return {
        (r["defense"], str(r["seed"])): r
        for r in rows
        if r["pair"] == pair
        and r["threat_model"] != "sanity"
        and r["attack"] == claim.attack
        and r["norm"] == claim.norm
        and abs(float(r["eps"]) - eps) < 1e-9
        and r["defense"] in (claim.higher, claim.lower)
    }


def findings(
    rows: list[dict], per_example: dict | None, headline: dict[str, float], claims: list[Claim] | None = None
) -> list[dict]:
    """One finding per claim and dataset pair: the two robust accuracies, their difference, the paired test per
    seed, the Holm-adjusted p and the verdict (see the module docstring for the rule)."""
    from statsmodels.stats.multitest import multipletests

    from attacks.base import parse_eps

    claims = CLAIMS if claims is None else claims
    per_example = per_example or {}
    hl = headline_eps(rows, headline) if rows else {}
    out, tests = [], []
    for pair in dict.fromkeys(r["pair"] for r in rows):
        for claim in claims:
            if hasattr(claim, "evaluate"):  # a claim of another shape (benchmark.claims): same tests, same table
                out.append(claim.evaluate(rows, per_example, pair, hl, paired_test, eps_str))
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
            ids = [(found[(claim.higher, s)].get("row_id"), found[(claim.lower, s)].get("row_id")) for s in seeds]
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
