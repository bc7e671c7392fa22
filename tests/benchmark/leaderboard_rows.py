"""Hand-made rows of a finished sweep as the leaderboard reads them: the helpers the tests of the leaderboard
(test_leaderboard.py) and of the lookups it ranks with (test_results_files.py) share.
"""

from __future__ import annotations

from benchmark.records import Row

EPS = 16 / 255
HL = {"linf": EPS}


def row(
    defense: str,
    attack: str = "worst_case",
    robust: float | None = 0.5,
    seed: int = 0,
    eps: float = EPS,
    norm: str = "linf",
    threat: str = "white-box",
    clean: float | None = 0.9,
    n: int = 10,
    **kw,
) -> Row:
    return Row(
        experiment="exp",
        pair="p",
        source="S",
        target="T",
        model="cnn",
        defense=defense,
        attack=attack,
        robust_acc=robust,
        seed=seed,
        eps=eps,
        norm=norm,
        threat_model=threat,
        clean_acc=clean,
        n_examples=n,
        **kw,
    )
