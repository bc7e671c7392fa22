"""The claims of the papers behind the suite, each as the matrices of per-example values its test reads
(`benchmark.results.verdicts` tests them and writes the verdicts).

A claim is made of one or more **parts** (`Part`): a (seeds, examples) matrix whose mean the claim puts on one side of
a null value. Three shapes:

- `Claim`: defense A keeps more examples than defense B under an attack at a budget. One part, the paired per-example
  difference of A's and B's outcomes (`robust`: right when clean and under the attack, a fraction of draws for a
  randomized model; `target_hit`: right when clean and assigned the attacker's target class under a targeted attack),
  claimed above 0.
- `RateClaim`: a defense that may reject stops at least `rate` of the adversarial inputs at a clean-accuracy loss below
  `max_loss` against the model it guards (paper 2: "over 90 % ... with an accuracy loss of less than 10 %"). Two parts:
  the rate, as the per-example value robust - rate * clean (its mean is above 0 exactly when the share of the
  clean-correct examples whose adversarial input is rejected or answered right, the suite's `defense_rate`, is above
  `rate`; shown divided by the clean share, as the rate's distance to the threshold), and the paired per-example
  loss of clean accuracy against the guarded model, claimed below `max_loss`.
- `StrongestAttackClaim`: attack X leaves the lowest robust accuracy of `attacks` on every model of the pair (paper
  3's "the strongest DAE"). One part per model, over its seeds: the per-example difference between the strongest *other*
  attack on that model (the lowest mean over its seeds and examples: computed, not asserted) and X, claimed above 0;
  every model must show it.

Every example of a part is one that every row of the claim covers (entry i of per_example.json is target test
example i), in every seed.

A claim about a defense lives in that defense's config (`claims:`, a list of `Claim` or `RateClaim` fields:
`claims_from_config`); the run writes the claims of its defenses to report_config.json, and the report tests those and
the claims about attacks (`ATTACK_CLAIMS`), in their `order` (`run_claims`). `report.claims` in the config replaces
them all.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields

import numpy as np

from attacks.errors import ConfigError
from benchmark.records import Row, same_eps

HEADLINE = "headline"
#: A claim tested at every budget of its attack that the run has (one finding per budget).
EACH = "each"
#: The per-example outcomes a claim can compare (keys of per_example.json).
METRICS = {"robust": "robust accuracy", "target_hit": "targeted hits"}
NOT_IN_RUN = "not in this run"
NO_OUTCOMES = "not tested (no per-example outcomes for its rows)"


@dataclass(frozen=True)
class Part:
    """One matrix of a claim: the claim is that its mean is above (`sign` +1) or below (-1) `null`. `scale` turns
    the mean's distance to the null into the shown difference (a rate part divides by the clean share)."""

    label: str
    values: np.ndarray  # (seeds, examples)
    seeds: tuple[str, ...]
    null: float = 0.0
    sign: int = 1
    scale: float = 1.0


def seed_order(seed: str):
    return (0, int(seed)) if seed.lstrip("-").isdigit() else (1, seed)


def stacked(by_seed: dict[str, list], n: int | None = None) -> np.ndarray:
    """The outcomes of each seed in seed order, cut to the first `n` examples (default: what every seed covers)."""
    seeds = sorted(by_seed, key=seed_order)
    n = min(len(by_seed[s]) for s in seeds) if n is None else n
    return np.array([np.asarray(by_seed[s][:n], float) for s in seeds])


def matching(rows: list[Row], pair: str, attack: str, norm: str, eps: float | None = None) -> list[Row]:
    """The rows of an attack at a budget (every budget of its norm when `eps` is None), sanity rows left out."""
    return [r for r in rows if r.pair == pair and r.threat_model != "sanity" and r.attack == attack
            and r.norm == norm and (eps is None or same_eps(r.eps, eps))]  # fmt: skip


def outcomes(rows: list[Row], per_example: dict, pair: str, defense: str, attack: str, norm: str, eps: float,
             key: str = "robust") -> dict[str, list] | None:  # fmt: skip
    """seed -> the per-example outcomes (`key` of per_example.json) of one defense's row; None if a row lacks them."""
    found = {}
    for r in matching(rows, pair, attack, norm, eps):
        if r.defense == defense:
            values = per_example.get(r.row_id, {}).get(key)
            if not values:
                return None
            found[str(r.seed)] = values
    return found


def clean_outcomes(rows: list[Row], per_example: dict, pair: str, defense: str) -> dict[str, list]:
    """seed -> a defense's clean per-example outcomes, from its row covering the most examples (the first such row)."""
    out: dict[str, list] = {}
    for r in rows:
        ex = per_example.get(r.row_id, {}).get("clean")
        if r.pair == pair and r.defense == defense and ex and len(ex) > len(out.get(str(r.seed), [])):
            out[str(r.seed)] = ex
    return out


@dataclass(frozen=True)
class Claim:
    """`higher` keeps more examples than `lower` under `attack` at (`norm`, `eps`), by `metric` (`METRICS`).

    `eps` is "headline" (the budget the leaderboard ranks at), "each" (every budget of the attack in the run) or a
    number / fraction string such as "8/255". `order` (every claim shape has it): the claim's place among the run's
    claims (`run_claims`), lowest first; a claim without one comes after those that have one.
    """

    text: str
    source: str
    higher: str
    lower: str
    attack: str
    norm: str = "linf"
    eps: str = HEADLINE
    metric: str = "robust"
    order: float | None = None

    def parts(self, rows: list[Row], per_example: dict, pair: str, eps: float) -> list[Part] | str:
        high, low = (outcomes(rows, per_example, pair, d, self.attack, self.norm, eps, self.metric)
                     for d in (self.higher, self.lower))  # fmt: skip
        if high is None or low is None:
            return NO_OUTCOMES
        seeds = sorted(set(high) & set(low), key=seed_order)
        if not seeds:
            return NOT_IN_RUN
        n = min(len(side[s]) for side in (high, low) for s in seeds)
        a, b = (stacked({s: side[s] for s in seeds}, n) for side in (high, low))
        return [Part(f"{self.higher} - {self.lower}", a - b, tuple(seeds))]


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
    order: float | None = None

    def parts(self, rows: list[Row], per_example: dict, pair: str, eps: float) -> list[Part] | str:
        attacked = outcomes(rows, per_example, pair, self.defense, self.attack, self.norm, eps)
        if attacked is None:
            return NO_OUTCOMES
        mine = clean_outcomes(rows, per_example, pair, self.defense)
        base = clean_outcomes(rows, per_example, pair, self.base)
        seeds = sorted(set(attacked) & set(mine) & set(base), key=seed_order)
        if not seeds:
            return NOT_IN_RUN
        n = min(len(side[s]) for side in (attacked, mine, base) for s in seeds)
        robust, clean, guarded = (stacked({s: side[s] for s in seeds}, n) for side in (attacked, mine, base))
        share = float(clean.mean())
        rate = Part(f"defense rate - {100 * self.rate:g} %", robust - self.rate * clean, tuple(seeds),
                    scale=1 / share if share else math.nan)  # fmt: skip
        loss = Part(f"clean loss vs {self.base} - {100 * self.max_loss:g} points", guarded - clean, tuple(seeds),
                    null=self.max_loss, sign=-1)  # fmt: skip
        return [rate, loss]


@dataclass(frozen=True)
class StrongestAttackClaim:
    """`attack` leaves the lowest robust accuracy among `attacks` on every model of the pair but `exclude`, over the
    seeds; see the module docstring."""

    text: str
    source: str
    attack: str
    attacks: tuple[str, ...]
    exclude: tuple[str, ...] = field(default=())
    norm: str = "linf"
    eps: str = HEADLINE
    order: float | None = None

    def parts(self, rows: list[Row], per_example: dict, pair: str, eps: float) -> list[Part] | str:
        robust: dict[str, dict[str, dict[str, list]]] = {}  # defense -> attack -> seed -> outcomes
        for a in self.attacks:
            for r in matching(rows, pair, a, self.norm, eps):
                ex = per_example.get(r.row_id, {}).get("robust")
                if r.defense not in self.exclude and ex:
                    robust.setdefault(r.defense, {}).setdefault(a, {})[str(r.seed)] = ex
        parts = []
        for d, by in robust.items():
            seeds = sorted(by.get(self.attack, {}), key=seed_order)
            others = [a for a in by if a != self.attack and all(s in by[a] for s in seeds)]
            if not seeds or not others:
                continue
            n = min(len(by[a][s]) for a in (self.attack, *others) for s in seeds)
            x = stacked({s: by[self.attack][s] for s in seeds}, n)
            means = {a: float(stacked({s: by[a][s] for s in seeds}, n).mean()) for a in others}
            strongest = min(means, key=means.get)
            diff = stacked({s: by[strongest][s] for s in seeds}, n) - x
            parts.append(Part(f"{d}: {strongest} - {self.attack}", diff, tuple(seeds)))
        return parts or NOT_IN_RUN


#: The claims about an attack rather than one defense, in every run (a defense's own claims are in its config): paper
#: 2's mimicry (the student that keeps the teacher's layers, freeze, against one trained apart, under each mimicry
#: attack) and this suite's strongest downstream-agnostic attack (papers 3 and 1 on the SSL encoder, digits_ssl).
ATTACK_CLAIMS = [
    *(
        Claim(
            "Targeted mimicry of the teacher's layer K hits the student that keeps those layers (freeze) more often "
            "than an independently trained one (targeted hits, at each budget)",
            "Wang et al. 2018",
            higher="freeze",
            lower="scratch",
            attack=attack,
            norm=norm,
            eps=EACH,
            metric="target_hit",
            order=order,
        )
        for attack, norm, order in (("mimicry_linf", "linf", 80), ("mimicry_dssim", "dssim", 90))
    ),
    StrongestAttackClaim(
        "The feature-space UAP is the strongest downstream-agnostic attack on every student (per student: against "
        "the strongest other DAE)",
        "this suite's README",
        attack="uap_feature",
        attacks=("uap_feature", "ssp_universal", "ssp", "l4a", "advencoder_per"),
        exclude=("teacher", "common"),
        order=150,
    ),
]
#: The values of a config's claim that are numbers (the others are strings).
NUMBERS = ("rate", "max_loss", "order")


def claims_from_config(entries: list[dict], where: str = "report.claims") -> list[Claim | RateClaim]:
    """Claims from a config (a defense config's `claims:`, or `report.claims`, which replaces the run's): each entry
    has the fields of `Claim` (norm, eps, metric, order optional), or of `RateClaim` (an entry with `defense`: its
    `base`, `rate`, `max_loss`; rate, max_loss, norm, eps, order optional)."""
    out = []
    for i, entry in enumerate(entries):
        kind = RateClaim if isinstance(entry, dict) and "defense" in entry else Claim
        names = [f.name for f in fields(kind)]
        optional = [f.name for f in fields(kind) if f.default is not MISSING]
        required = [n for n in names if n not in optional]
        if not isinstance(entry, dict) or set(entry) - set(names) or set(required) - set(entry):
            raise ConfigError(f"{where}[{i}] must be a mapping with keys {', '.join(names)} "
                              f"({', '.join(optional)} optional)")  # fmt: skip
        if entry.get("norm", "linf") not in ("linf", "l2"):
            raise ConfigError(f"{where}[{i}].norm '{entry['norm']}'; valid: l2, linf")
        if entry.get("metric", "robust") not in METRICS:
            raise ConfigError(f"{where}[{i}].metric '{entry['metric']}'; valid: {', '.join(METRICS)}")
        if bad := [k for k in NUMBERS if k in entry and not isinstance(entry[k], (int, float))]:
            raise ConfigError(f"{where}[{i}].{bad[0]} must be a number, got {entry[bad[0]]!r}")
        out.append(kind(**{k: v if k in NUMBERS else str(v) for k, v in entry.items()}))
    return out


def run_claims(defenses: dict[str, dict]) -> list:
    """The claims a run tests: those of each of its defenses (`claims:` in the defense's config, as the run wrote
    them: `benchmark.runner.config.report_entries`) and `ATTACK_CLAIMS`, in their `order` (stable: claims without
    one last, in the order of the defenses)."""
    own = [c for name, d in defenses.items() for c in claims_from_config(d["claims"], f"defense.{name}.claims")]
    return sorted([*own, *ATTACK_CLAIMS], key=lambda c: (c.order is None, c.order or 0))
