"""Claims of other shapes than "defense A keeps more examples than defense B" (`benchmark.findings.Claim`), tested
on the same per-example outcomes and entered into the same Holm family and table:

- `RateClaim`: a defense that may reject stops at least `rate` of the adversarial inputs at a clean-accuracy loss
  below `max_loss` against the model it guards (paper 2: "over 90 % ... with an accuracy loss of less than 10 %").
  The defense rate is the share of the clean-correct examples whose adversarial input is rejected or answered
  right (the suite's `defense_rate`), tested against `rate` with an exact binomial test; the loss is the paired
  per-example difference of clean accuracy (rejections are errors), tested against `max_loss` with a one-sample
  t-test. The claim is supported when both parts are (intersection-union: p = the larger p), contradicted when
  either part is reversed (p = twice the smaller reverse p, Bonferroni).
- `StrongestAttackClaim`: attack X leaves the lowest robust accuracy of `attacks` on every model of the pair
  (paper 3's "the strongest DAE"). Per model, X against the strongest *other* attack on that model (exact
  McNemar, one-sided); one test per model, so the verdict needs every model. The per-model table names the
  strongest other attack: which attack is strongest is computed, not asserted.

Each `evaluate` returns an item shaped like a finding of `benchmark.findings.findings` (its `per_seed` entries carry
the tests), so the findings' Holm correction, summary and markdown apply unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from benchmark.records import Row, eps_str, same_eps
from benchmark.stats import paired_test

HEADLINE = "headline"


def _eps(claim, hl: dict) -> float:
    from attacks.base import parse_eps

    return hl.get(claim.norm, math.nan) if claim.eps == HEADLINE else parse_eps(claim.eps)


def _matching(rows: list[Row], pair: str, attack: str, norm: str, eps: float | None = None) -> list[Row]:
    return [
        r
        for r in rows
        if r.pair == pair
        and r.threat_model != "sanity"
        and r.attack == attack
        and r.norm == norm
        and (eps is None or same_eps(r.eps, eps))
    ]


def _item(claim, pair: str, eps: float, higher: str, lower: str, attack: str) -> dict:
    return {"claim": claim.text, "source": claim.source, "pair": pair, "higher": higher, "lower": lower,
            "attack": attack, "norm": claim.norm, "eps": eps, "eps_label": eps_str(claim.norm, eps), "seeds": 0,
            "per_seed": []}  # fmt: skip


@dataclass(frozen=True)
class RateClaim:
    """`defense` stops at least `rate` of the adversarial inputs of `attack` and loses less than `max_loss` clean
    accuracy against `base`; see the module docstring."""

    text: str
    source: str
    defense: str
    base: str
    attack: str
    rate: float = 0.9
    max_loss: float = 0.1
    norm: str = "linf"
    eps: str = HEADLINE

    def evaluate(self, rows: list[Row], per_example: dict, pair: str, hl: dict) -> dict:
        """The finding of this claim on `pair`."""
        from scipy import stats

        eps = _eps(self, hl)
        item = _item(self, pair, eps, f"{self.defense} defense rate", f"threshold {100 * self.rate:g} %", self.attack)
        attacked = {str(r.seed): r for r in _matching(rows, pair, self.attack, self.norm, eps)
                    if r.defense == self.defense}  # fmt: skip
        base_clean = {}
        for r in rows:  # the guarded model's clean outcomes: its row covering the most examples
            ex = per_example.get(r.row_id, {}).get("clean")
            if r.pair == pair and r.defense == self.base and ex and len(ex) > len(base_clean.get(str(r.seed), [])):
                base_clean[str(r.seed)] = ex
        seeds, losses = sorted(s for s in attacked if s in base_clean), []
        if not seeds:
            item["verdict"] = "not in this run"
            return item
        for s in seeds:
            ex = per_example.get(attacked[s].row_id, {})
            if not ex.get("robust"):
                item["verdict"] = "not tested (no per-example outcomes for its rows)"
                return item
            clean, robust = np.asarray(ex["clean"], float), np.asarray(ex["robust"], float)
            k, n = int(round(robust.sum())), int(round(clean.sum()))
            m = min(len(clean), len(base_clean[s]))
            loss = np.asarray(base_clean[s][:m], float) - clean[:m]
            p_rate = stats.binomtest(k, n, self.rate, alternative="greater").pvalue if n else 1.0
            p_rate_rev = stats.binomtest(k, n, self.rate, alternative="less").pvalue if n else 1.0
            if loss.std() == 0:  # every example loses the same: the loss part holds, or fails, outright
                p_loss, p_loss_rev = float(loss.mean() >= self.max_loss), float(loss.mean() <= self.max_loss)
            else:
                p_loss = stats.ttest_1samp(loss, self.max_loss, alternative="less").pvalue
                p_loss_rev = stats.ttest_1samp(loss, self.max_loss, alternative="greater").pvalue
            rate = k / n if n else math.nan
            losses.append(loss.mean())
            item["per_seed"].append(
                {
                    "seed": s,
                    "n": n,
                    "higher_acc": rate,
                    "lower_acc": self.rate,
                    "difference": rate - self.rate,
                    "test": f"exact binomial vs {100 * self.rate:g} % and t-test of the clean loss vs "
                    f"{100 * self.max_loss:g} points",
                    "discordant": f"clean loss {100 * loss.mean():.1f} points vs {self.base} on {m}",
                    "p": float(max(p_rate, p_loss)),
                    "p_reverse": float(min(1.0, 2 * min(p_rate_rev, p_loss_rev))),
                    "p_two_sided": math.nan,
                }  # fmt: skip
            )
        item["seeds"] = len(seeds)
        item["higher"] += f" (clean loss {100 * float(np.mean(losses)):.1f} points)"
        return item


@dataclass(frozen=True)
class StrongestAttackClaim:
    """`attack` leaves the lowest robust accuracy among `attacks` on every model of the pair but `exclude` (seed
    `seed`); see the module docstring."""

    text: str
    source: str
    attack: str
    attacks: tuple[str, ...]
    exclude: tuple[str, ...] = field(default=())
    seed: str = "0"
    norm: str = "linf"
    eps: str = HEADLINE

    def evaluate(self, rows: list[Row], per_example: dict, pair: str, hl: dict) -> dict:
        """The finding of this claim on `pair`; see `RateClaim.evaluate`."""
        eps = _eps(self, hl)
        item = _item(self, pair, eps, "the strongest other attack", self.attack, self.attack)
        robust: dict[str, dict[str, list]] = {}
        for a in self.attacks:
            for r in _matching(rows, pair, a, self.norm, eps):
                ex = per_example.get(r.row_id, {}).get("robust")
                if str(r.seed) == self.seed and r.defense not in self.exclude and ex:
                    robust.setdefault(r.defense, {})[a] = ex
        models = [d for d, by in robust.items() if self.attack in by and len(by) > 1]
        if not models:
            item["verdict"] = "not in this run"
            return item
        for d in models:
            mine = robust[d][self.attack]
            n = min(len(v) for v in robust[d].values())
            others = {a: float(np.mean(v[:n])) for a, v in robust[d].items() if a != self.attack}
            strongest = min(others, key=others.get)
            test = paired_test(robust[d][strongest], mine)  # the claim: the other one keeps more examples
            item["per_seed"].append({**test, "seed": f"{d}: {strongest}"})
        item["seeds"] = len(models)
        return item


def extra_claims(claim: type) -> list:
    """The README's claims beyond `benchmark.findings`' seed list: paper 2 (mimicry, the rejecting differentiators)
    and papers 3 and 1 on the SSL encoder (digits_ssl); `claim` is `benchmark.findings.Claim`."""
    Claim = claim  # noqa: N806
    return [
        Claim(
            "Targeted mimicry of the teacher's layer K hurts the student that keeps those layers (freeze) more than an "
            "independently trained one",
            "Wang et al. 2018",
            higher="scratch",
            lower="freeze",
            attack="mimicry_linf",
        ),
        Claim(
            "The differentiators' accept/reject pipeline keeps more examples than the student it guards, in the "
            "worst case (adaptive attack included)",
            "Wu et al. (arXiv 1908.11230)",
            higher="differentiator",
            lower="freeze",
            attack="worst_case",
        ),
        RateClaim(
            "Over 90 % of adversarial inputs stopped (rejected or classified right) at under 10 points of clean "
            "accuracy loss, against the adaptive attack",
            "Wu et al. (arXiv 1908.11230)",
            defense="differentiator",
            base="freeze",
            attack="pgd_reject_aware",
        ),
        Claim(
            "Gen-AF is more robust than plain fine-tuning of the encoder under the feature-space UAP",
            "Zhou et al. 2024",
            higher="genaf",
            lower="commoninit",
            attack="uap_feature",
        ),
        Claim(
            "Transfer from the teacher is stronger into CommonInit (fine-tuned from the common model) than into "
            "Scratch",
            "Zhang et al. 2020",
            higher="scratch",
            lower="commoninit",
            attack="transfer_pgd_linf",
        ),
        StrongestAttackClaim(
            "The feature-space UAP is the strongest downstream-agnostic attack on every student (per student: "
            "against the strongest other DAE)",
            "this suite's README",
            attack="uap_feature",
            attacks=("uap_feature", "ssp_universal", "ssp", "l4a", "advencoder_per"),
            exclude=("teacher", "common"),
        ),
    ]
