"""The results of a finished sweep as files and lookups: results.csv in and out (typed `Row`s), and one pair's rows.

Shared by the report (`benchmark.results.report`), the plots and W&B tracking, which read rows (and, for the intervals
of accuracies, the per-example outcomes of per_example.json).

An accuracy's interval is one kind throughout the report (`PairResults.estimate`): with several training seeds, the
mean over seeds with the 95 % random-effects interval over seeds and examples (`benchmark.results.statistics`, the same
model the findings test with); a single model beside them (the teacher, the common encoder: trained once, not per seed),
its value with the 95 % t interval over its examples; a run of one seed, the values alone (each is one trained model).
Without per-example outcomes (a results.csv alone) the mean is shown without an interval.
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from benchmark.records import COLUMNS, Row, budget_key, same_eps
from benchmark.results.claims import stacked
from benchmark.results.statistics import random_effects_mean


def write_csv(rows: list[Row], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS if rows else [])
        w.writeheader()
        w.writerows(r.csv() for r in rows)
    tmp.replace(path)


def read_csv(path: Path) -> list[Row]:
    """results.csv back into the rows the run wrote."""
    with Path(path).open() as f:
        return [Row.from_csv(record) for record in csv.DictReader(f)]


def number(v) -> float | None:
    try:
        x = None if v in (None, "", "None") else float(v)
    except ValueError:
        return None
    return None if x is None or math.isnan(x) else x


@dataclass(frozen=True)
class Estimate:
    """An accuracy (or a difference of two) as the report shows it: its mean and 95 % interval (NaN: none)."""

    mean: float
    low: float = math.nan
    high: float = math.nan


class PairResults:
    """The rows of one dataset pair, with the lookups the leaderboard and the plots need; `per_example` (the run's
    per_example.json) gives the accuracies their intervals (see the module docstring)."""

    def __init__(self, rows: list[Row], per_example: dict | None = None):
        self.sanity = [r for r in rows if r.threat_model == "sanity"]
        self.rows = [r for r in rows if r.threat_model != "sanity"]
        self.first = self.rows[0]
        self.defenses = list(dict.fromkeys(r.defense for r in self.rows))
        self.attacks = list(dict.fromkeys((r.attack, r.norm) for r in self.rows))
        self.per_example = per_example or {}
        self.several_seeds = len({str(r.seed) for r in self.rows}) > 1

    def single_model(self, defense: str) -> bool:
        """A model trained once beside methods trained per seed (the teacher, the common encoder): shown apart."""
        return self.several_seeds and len({str(r.seed) for r in self.rows if r.defense == defense}) == 1

    def _estimate(self, by_seed: dict[str, Row], key: str, base: dict[str, Row] | None = None) -> Estimate | None:
        """The estimate of per-seed rows' outcomes (`key` of per_example.json), or of their paired difference
        with `base`'s rows of the same seeds."""
        seeds = [s for s in by_seed if base is None or s in base]
        vals = [number(getattr(by_seed[s], f"{key}_acc")) for s in seeds]
        if base is not None:
            vals = [v - b if v is not None and b is not None else None
                    for v, b in zip(vals, (number(getattr(base[s], f"{key}_acc")) for s in seeds))]  # fmt: skip
        vals = [v for v in vals if v is not None]
        if not vals:
            return None
        if not self.several_seeds:
            return Estimate(statistics.mean(vals))
        outcomes = [{s: self.per_example.get(rows[s].row_id, {}).get(key) for s in seeds}
                    for rows in ([by_seed] if base is None else [by_seed, base])]  # fmt: skip
        if any(not v for side in outcomes for v in side.values()):
            return Estimate(statistics.mean(vals))
        n = min(len(v) for side in outcomes for v in side.values())
        matrix = stacked(outcomes[0], n) - (stacked(outcomes[1], n) if base is not None else 0)
        t = random_effects_mean(matrix)
        return Estimate(t["mean"], t["ci_low"], t["ci_high"])

    def _by_seed(self, defense: str, attack: str, norm: str, eps: float) -> dict[str, Row]:
        return {str(r.seed): r for r in self.rows
                if r.defense == defense and r.attack == attack and r.norm == norm and same_eps(r.eps, eps)}  # fmt: skip

    def estimate(self, defense: str, attack: str, norm: str, eps: float) -> Estimate | None:
        """Robust accuracy under an attack at a budget (see the module docstring)."""
        return self._estimate(self._by_seed(defense, attack, norm, eps), "robust")

    def clean_estimate(self, defense: str) -> Estimate | None:
        """Clean accuracy, from each seed's row covering the most examples."""
        return self._estimate(self._clean_rows(defense), "clean")

    def clean_cost_estimate(self, defense: str, base: str = "finetune") -> Estimate | None:
        """Clean accuracy minus `base`'s, paired per seed and example."""
        return self._estimate(self._clean_rows(defense), "clean", self._clean_rows(base))

    def values(self, defense: str, attack: str, norm: str, eps: float, field: str = "robust_acc") -> list[float]:
        """One value per seed (absent and NaN values left out)."""
        vals = (
            number(getattr(r, field))
            for r in self.rows
            if r.defense == defense and r.attack == attack and r.norm == norm and same_eps(r.eps, eps)
        )
        return [v for v in vals if v is not None]

    def _clean_rows(self, defense: str) -> dict[str, Row]:
        """Per seed, the row with the most examples (attacks may run on the first n only)."""
        best: dict[str, Row] = {}
        for r in self.rows:
            seed = str(r.seed)
            if r.defense == defense and (seed not in best or r.n_examples > best[seed].n_examples):
                best[seed] = r
        return best

    def clean_by_seed(self, defense: str) -> dict[str, float]:
        """Clean accuracy per seed, from the row with the most examples (attacks may run on the first n only)."""
        vals = {s: number(r.clean_acc) for s, r in self._clean_rows(defense).items()}
        return {s: v for s, v in vals.items() if v is not None}

    def clean(self, defense: str) -> list[float]:
        return list(self.clean_by_seed(defense).values())

    def clean_cost(self, defense: str, base: str = "finetune") -> list[float]:
        """Clean accuracy minus `base`'s, per seed both have."""
        own, ref = self.clean_by_seed(defense), self.clean_by_seed(base)
        return [own[s] - ref[s] for s in own if s in ref]

    def field(self, defense: str, field: str) -> list[float]:
        """A per-model field (one value per seed)."""
        by_seed = {r.seed: number(getattr(r, field)) for r in self.rows if r.defense == defense}
        return [v for v in by_seed.values() if v is not None]

    def whitebox_at(self, defense: str, norm: str, eps: float) -> bool:
        """Whether a white-box attack ran on `defense` at this budget (else its worst case holds only attacks
        crafted without the model, and is no worst case to draw beside the others)."""
        return any(
            r.defense == defense and r.norm == norm and r.threat_model == "white-box" and same_eps(r.eps, eps)
            for r in self.rows
        )

    def epsilons(self, attack: str, norm: str) -> list[float]:
        return sorted({budget_key(norm, r.eps)[1] for r in self.rows if r.attack == attack and r.norm == norm})

    def ranked(self, headline: dict[str, float]) -> list[str]:
        """Defenses by per-example worst-case robust accuracy at the headline budgets (else the weakest attack)."""

        def score(defense: str) -> float:
            at = [(a, n, headline[n]) for a, n in self.attacks if n in headline]
            worst = [v for a, n, e in at if a == "worst_case" for v in self.values(defense, a, n, e)]
            vals = worst or [min((v for a, n, e in at for v in self.values(defense, a, n, e)), default=0.0)]
            return -statistics.mean(vals)

        return sorted(self.defenses, key=score)
