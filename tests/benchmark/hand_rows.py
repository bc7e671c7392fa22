"""Hand-made rows and per-example outcomes for the tests of the verdicts: the findings (test_verdicts.py), the claims
of other shapes (test_claims.py). The budget
`EPS` is also the one of the tests of the rows and the records (test_rows.py, test_records.py).
"""

from __future__ import annotations

from benchmark.records import Row
from benchmark.results.claims import Claim

EPS = 8 / 255  # its budget key (rounded to 1e-10) differs from the float itself
HL = {"linf": EPS}


def row(
    defense: str,
    attack: str = "pgd",
    seed: int = 0,
    eps: float = EPS,
    pair: str = "p",
    norm: str = "linf",
    threat: str = "white-box",
    **kw,
) -> Row:
    rid = f"{pair}/{defense}/seed{seed}/{attack}/{norm}/{eps:.6f}/{threat}"
    return Row(
        pair=pair, defense=defense, seed=seed, attack=attack, threat_model=threat, norm=norm, eps=eps, row_id=rid, **kw
    )


def ones(k: int, n: int) -> list[float]:
    return [1.0] * k + [0.0] * (n - k)


CLAIM = Claim("a beats b", "paper", higher="a", lower="b", attack="pgd")


def re_escape(text: str) -> str:
    import re

    return "^" + re.escape(text) + "$"
