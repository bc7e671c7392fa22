"""The results of a finished sweep as files and lookups: results.csv in and out (typed `Row`s), and one pair's rows.

Shared by the report (`benchmark.report`), the plots and W&B tracking, which read rows only.
"""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

from benchmark.records import COLUMNS, Row, budget_key, same_eps


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


class PairResults:
    """The rows of one dataset pair, with the lookups the leaderboard and the plots need."""

    def __init__(self, rows: list[Row]):
        self.sanity = [r for r in rows if r.threat_model == "sanity"]
        self.rows = [r for r in rows if r.threat_model != "sanity"]
        self.first = self.rows[0]
        self.defenses = list(dict.fromkeys(r.defense for r in self.rows))
        self.attacks = list(dict.fromkeys((r.attack, r.norm) for r in self.rows))

    def values(self, defense: str, attack: str, norm: str, eps: float, field: str = "robust_acc") -> list[float]:
        """One value per seed (absent and NaN values left out)."""
        vals = (
            number(getattr(r, field))
            for r in self.rows
            if r.defense == defense and r.attack == attack and r.norm == norm and same_eps(r.eps, eps)
        )
        return [v for v in vals if v is not None]

    def clean_by_seed(self, defense: str) -> dict[str, float]:
        """Clean accuracy per seed, from the row with the most examples (attacks may run on the first n only)."""
        best: dict[str, Row] = {}
        for r in self.rows:
            seed = str(r.seed)
            if r.defense == defense and (seed not in best or r.n_examples > best[seed].n_examples):
                best[seed] = r
        vals = {s: number(r.clean_acc) for s, r in best.items()}
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
