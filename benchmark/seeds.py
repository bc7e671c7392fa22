"""Verdicts about methods, not single trained models: the training seeds and the test examples as two sources of noise.

A claim such as "TRADES is more robust than fine-tuning" is about two *methods*. One run of each is one draw of
everything random in training (initialization, batch order, attack starts during adversarial training); the
per-seed paired tests of `benchmark.findings` say whether *these two trained models* differ on *these test
examples*, and a difference they find significant may not survive another seed. Bouthillier et al. (2021,
"Accounting for variance in machine learning benchmarks", MLSys) measure that the variance from such training
sources is of the same order as the variance from the choice of test examples, and recommend randomizing the
training sources over several runs and testing with both in the analysis. We do so here:

- **Crossed bootstrap over seeds and examples.** For a claim "A > B" with S seeds, D[s, i] is the paired difference
  of the per-example outcomes of A and B of seed s on test example i (0/1, or a fraction of draws for randomized
  models; every seed is scored on the same test examples). One bootstrap replicate draws S seeds with replacement
  AND n examples with replacement, independently (seeds and examples are crossed random factors: every seed sees
  every example), and takes the mean of D over the drawn seeds and examples. The spread of the replicates holds
  both the seed-to-seed variance of the methods' difference and the example-sampling variance (Owen 2007, "The
  pigeonhole bootstrap"; a hierarchical bootstrap that resampled examples independently within each seed would
  treat a shared test set as S independent ones).
- The one-sided p is the share of replicates at or below 0 (the inversion of the one-sided percentile interval,
  one added to both counts); Holm's correction runs over every method claim of the run. "supported": Holm p <
  0.05; "contradicted": the reverse test's Holm p < 0.05; else "not supported".
- Limits: with S = 3 the seed resampling has only 10 distinct multisets and, like any bootstrap, shrinks the
  between-seed variance by (S - 1) / S; the table also shows in how many seeds the difference had the claimed
  sign, so a verdict carried by one seed is visible. More seeds (`seeds=[0,1,2,3,4]`) tighten both.
- The ranking: defenses by the mean over seeds of the worst-case robust accuracy at the headline budget, with the
  crossed-bootstrap 95 % interval of that mean.

With one seed nothing here can be about a method: the section says so, and names the command for three seeds.
"""

from __future__ import annotations

import math

import numpy as np

from benchmark import findings as fnd
from benchmark.records import Row, eps_str, headline_eps, same_eps

RESAMPLES = 4999
BOOTSTRAP_SEED = 0
ONE_SEED = (
    "One training seed: every number and verdict in this leaderboard is about one trained model per defense, not "
    "about the method (Bouthillier et al. 2021); run with `seeds=[0,1,2]` for verdicts about methods."
)


def crossed_bootstrap(values: np.ndarray, resamples: int = RESAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """Bootstrap means of a (seeds, examples) matrix, seeds and examples resampled independently (crossed)."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or 0 in values.shape:
        raise ValueError(f"crossed_bootstrap needs a non-empty (seeds, examples) matrix, got shape {values.shape}")
    s, n = values.shape
    rng = np.random.default_rng(seed)
    out = np.empty(resamples)
    step = max(1, 2_000_000 // n)  # memory: one block holds step x n example weights
    for start in range(0, resamples, step):
        b = min(step, resamples - start)
        seed_w = rng.multinomial(s, np.full(s, 1.0 / s), size=b)  # (b, S): how often each seed was drawn
        example_w = rng.multinomial(n, np.full(n, 1.0 / n), size=b)  # (b, n)
        out[start : start + b] = np.einsum("bs,sn,bn->b", seed_w, values, example_w) / (s * n)
    return out


def _matrix(rows: list[Row], per_example: dict, pair: str, defense: str, attack: str, norm: str, eps: float):
    """(seeds, per-example robust outcomes) of one defense's rows of an attack at a budget, by seed."""
    found = {
        str(r.seed): per_example.get(r.row_id, {}).get("robust")
        for r in rows
        if r.pair == pair
        and r.defense == defense
        and r.threat_model != "sanity"
        and r.attack == attack
        and r.norm == norm
        and same_eps(r.eps, eps)
    }
    return {s: v for s, v in found.items() if v}


def claim_test(higher: dict[str, list], lower: dict[str, list]) -> dict:
    """The crossed-bootstrap test of "higher > lower" over the seeds both have (at least two)."""
    seeds = sorted(set(higher) & set(lower), key=lambda s: int(s) if s.lstrip("-").isdigit() else s)
    n = min(min(len(higher[s]), len(lower[s])) for s in seeds)
    diff = np.array([np.asarray(higher[s][:n], float) - np.asarray(lower[s][:n], float) for s in seeds])
    dist = crossed_bootstrap(diff)
    per_seed = diff.mean(axis=1)
    return {
        "seeds": len(seeds),
        "n": n,
        "difference": float(diff.mean()),
        "ci_low": float(np.quantile(dist, 0.025)),
        "ci_high": float(np.quantile(dist, 0.975)),
        "seeds_with_sign": int((per_seed > 0).sum()),
        "p": float((1 + (dist <= 0).sum()) / (dist.size + 1)),
        "p_reverse": float((1 + (dist >= 0).sum()) / (dist.size + 1)),
    }


def method_claims(rows: list[Row], per_example: dict | None, headline: dict, claims=None) -> list[dict]:
    """Each claim per pair, tested over seeds and examples; Holm over the run's method tests."""
    from statsmodels.stats.multitest import multipletests

    from attacks.base import parse_eps

    per_example = per_example or {}
    claims = fnd.CLAIMS if claims is None else claims
    claims = [c for c in claims if not hasattr(c, "evaluate")]  # the other shapes test models, not methods
    hl = headline_eps(rows, headline) if rows else {}
    out = []
    for pair in dict.fromkeys(r.pair for r in rows):
        for claim in claims:
            eps = hl.get(claim.norm, math.nan) if claim.eps == fnd.HEADLINE else parse_eps(claim.eps)
            sides = [
                _matrix(rows, per_example, pair, d, claim.attack, claim.norm, eps) for d in (claim.higher, claim.lower)
            ]
            common = set(sides[0]) & set(sides[1])
            item = {"claim": claim, "pair": pair, "eps": eps, "seeds": len(common)}
            if len(common) >= 2:
                item.update(claim_test(*sides))
            out.append(item)
    tested = [t for t in out if "p" in t]
    if tested:
        for key in ("p", "p_reverse"):
            for t, q in zip(tested, multipletests([t[key] for t in tested], method="holm")[1]):
                t[f"{key}_holm"] = float(q)
    for t in tested:
        supported, contradicted = t["p_holm"] < fnd.ALPHA, t["p_reverse_holm"] < fnd.ALPHA
        t["verdict"] = "supported" if supported else "contradicted" if contradicted else "not supported"
    return out


def ranking(rows: list[Row], per_example: dict | None, headline: dict) -> dict[str, list[dict]]:
    """Per pair: defenses by the mean over seeds of the worst-case robust accuracy at the headline L-inf budget."""
    per_example = per_example or {}
    hl = headline_eps(rows, headline) if rows else {}
    out: dict[str, list[dict]] = {}
    if "linf" not in hl:
        return out
    for pair in dict.fromkeys(r.pair for r in rows):
        entries = []
        for defense in dict.fromkeys(r.defense for r in rows if r.pair == pair):
            by_seed = _matrix(rows, per_example, pair, defense, "worst_case", "linf", hl["linf"])
            if not by_seed:
                continue
            n = min(len(v) for v in by_seed.values())
            matrix = np.array([np.asarray(v[:n], float) for v in by_seed.values()])
            dist = crossed_bootstrap(matrix)
            entries.append(
                {
                    "defense": defense,
                    "seeds": len(by_seed),
                    "n": n,
                    "mean": float(matrix.mean()),
                    "ci_low": float(np.quantile(dist, 0.025)),
                    "ci_high": float(np.quantile(dist, 0.975)),
                    "per_seed": [float(m) for m in matrix.mean(axis=1)],
                }
            )
        out[pair] = sorted(entries, key=lambda e: -e["mean"])
    return out


def _pct(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def markdown(rows: list[Row], per_example: dict | None, headline: dict, claims=None) -> str:
    """The leaderboard's "Verdicts about methods" section (see the module docstring)."""
    seeds = {str(r.seed) for r in rows if r.defense != "teacher"}
    lines = ["", "## Verdicts about methods (seeds and examples)", ""]
    if len(seeds) < 2:
        return "\n".join([*lines, ONE_SEED, ""])
    lines += [
        f"{len(seeds)} training seeds per defense. Intervals and tests resample the seeds and the test examples "
        "together (a crossed bootstrap, benchmark/seeds.py; Bouthillier et al. 2021), so they hold the seed-to-seed "
        "variance of the methods as well as the choice of test examples. One-sided p, Holm-corrected over the "
        "claims below; alpha = 0.05. `sign`: seeds in which the difference had the claimed sign.",
        "",
    ]
    for pair, entries in ranking(rows, per_example, headline).items():
        lines += [f"### {pair}: defenses by the mean over seeds (worst case, L-inf headline)", ""]
        lines += ["| rank | defense | seeds | robust % [95 % interval] | per seed |", "|---|---|---|---|---|"]
        for i, e in enumerate(entries, 1):
            per = " / ".join(_pct(v) for v in e["per_seed"])
            lines.append(
                f"| {i} | {e['defense']} | {e['seeds']} | {_pct(e['mean'])} [{_pct(e['ci_low'])}, "
                f"{_pct(e['ci_high'])}] | {per} |"
            )
        lines.append("")
    lines += ["### Claims about methods", ""]
    lines += ["| claim | pair | attack | difference (points) [95 %] | sign | n | p | Holm p | verdict |"]
    lines.append("|---" * 9 + "|")
    for t in method_claims(rows, per_example, headline, claims):
        c = t["claim"]
        attack = f"{c.attack} {c.norm} {eps_str(c.norm, t['eps'])}"
        if "p" not in t:
            why = "not in this run" if t["seeds"] == 0 else f"one seed: about one trained model ({t['seeds']})"
            cells = [c.text, t["pair"], attack, "-", "-", "-", "-", "-", why]
        else:
            diff = f"{100 * t['difference']:+.1f} [{100 * t['ci_low']:+.1f}, {100 * t['ci_high']:+.1f}]"
            sign = f"{t['seeds_with_sign']}/{t['seeds']}"
            cells = [c.text, t["pair"], attack, diff, sign, str(t["n"]), fnd._p(t["p"]), fnd._p(t["p_holm"])]
            cells.append(f"**{t['verdict']}**")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join([*lines, ""])
