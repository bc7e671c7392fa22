"""Refactors of the runner keep its outputs: a small sweep's results.csv, leaderboard.md and plots are pinned.

The golden results.csv and leaderboard.md were written by the runner before the typed-record refactor (issue 17), on
this project's CI machine kind, with one torch thread; the PNGs were redrawn once after it, on purpose, for issue 21
(a hue per family of methods, reference models labelled, the experiment in the titles, marks only when used), and
the leaderboard once for issues 18 and 20, which only added lines (six claim rows, the one-seed caveat).
Everything that measures time (seconds columns and table cells) and the cache keys (they fingerprint the suite's own
code, so any edit changes them) is left out of the comparison; every other column, every leaderboard line and every
plot's pixels must be identical.

A deliberate change of the numbers regenerates them: `BENCH_REGEN_GOLDEN=1 pytest tests/benchmark/test_golden.py`
(say why in the commit).
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

GOLDEN = Path(__file__).resolve().parent / "golden"
REGEN = os.environ.get("BENCH_REGEN_GOLDEN") == "1"

#: A digits sweep with one deterministic defense, one adversarially trained, one randomized (test-time dropout, with
#: the sanity checks), white-box, transfer and mimicry attacks at two budgets, on 48 test examples.
SWEEP = [
    "logger=none",
    "progress=false",
    "launcher=inline",
    "teacher.trainer.max_epochs=3",
    "defense=[finetune,pgd_at,dropout]",
    "defense.finetune.trainer.max_epochs=2",
    "defense.pgd_at.trainer.max_epochs=2",
    "defense.dropout.trainer.max_epochs=1",
    "++defense.freeze.trainer.max_epochs=1",
    "attack=[fgsm,pgd_linf,pgd_l2,transfer_pgd_linf,eot_pgd_linf,mimicry_linf]",
    "attack.fgsm.epsilons=[8/255,16/255]",
    "attack.pgd_linf.epsilons=[8/255,16/255]",
    "attack.pgd_linf.attack.steps=5",
    "attack.pgd_l2.epsilons=[1.0]",
    "attack.pgd_l2.attack.steps=5",
    "attack.transfer_pgd_linf.epsilons=[8/255,16/255]",
    "attack.transfer_pgd_linf.attack.attack.steps=5",
    "attack.eot_pgd_linf.attack.steps=4",
    "attack.eot_pgd_linf.attack.eot=2",
    "attack.eot_pgd_linf.n_examples=16",
    "attack.mimicry_linf.epsilons=[8/255,16/255]",
    "attack.mimicry_linf.attack.steps=5",
    "attack.mimicry_linf.n_examples=32",
    "eval.n_examples=48",
    "eval.draws=2",
    "eval.sanity_examples=8",
    "eval.detection_reference=200",
]

#: Columns that measure time or fingerprint the code: not pinned.
UNPINNED = {"model_key", "attack_seconds", "wall_seconds", "train_seconds", "prep_seconds", "cached"}
#: Leaderboard tables whose cells are seconds: the rows are pinned, the numbers are not.
SECONDS = re.compile(r"\d+(\.\d+)?")


def _csv(path: Path) -> list[dict]:
    with path.open() as f:
        return [{k: v for k, v in r.items() if k not in UNPINNED} for r in csv.DictReader(f)]


def _leaderboard(path: Path) -> list[str]:
    """The leaderboard's lines, with the seconds of the training-cost table and of the randomized table blanked."""
    lines, section = [], ""
    for line in path.read_text().splitlines():
        if line.startswith("### "):
            section = line
        body = line.startswith("| ") and not line.startswith("| defense")
        if body and section.startswith("### Training cost"):
            cells = line.split(" | ")
            line = " | ".join([cells[0], *(SECONDS.sub("#", c) for c in cells[1:])])
        elif body and section.startswith("### Randomized"):
            cells = line.split(" | ")  # the last cell is wall seconds
            line = " | ".join([*cells[:-1], "# |"])
        lines.append(line)
    return lines


def _pixels(path: Path) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(str(path))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    from benchmark.config import compose
    from benchmark.run import run

    tmp = tmp_path_factory.mktemp("golden")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the numbers depend on the thread count (float summation order)
    try:
        run(compose([*SWEEP, f"cache_dir={tmp / 'cache'}", f"results_dir={tmp / 'results'}"]))
    finally:
        torch.set_num_threads(threads)
    out = tmp / "results"
    if REGEN:
        GOLDEN.mkdir(exist_ok=True)
        for name in ("results.csv", "leaderboard.md", *PLOTS):
            (GOLDEN / name).write_bytes((out / name).read_bytes())
    return out


PLOTS = ("robust_vs_eps.png", "heatmap.png", "tradeoff.png")


@pytest.mark.slow
def test_results_csv_is_unchanged(sweep):
    got, want = _csv(sweep / "results.csv"), _csv(GOLDEN / "results.csv")
    assert [r["row_id"] for r in got] == [r["row_id"] for r in want]
    for g, w in zip(got, want):
        assert g == w, f"row {w['row_id']} changed: " + ", ".join(
            f"{k}: {w.get(k)!r} -> {g.get(k)!r}" for k in sorted(set(g) | set(w)) if g.get(k) != w.get(k)
        )


@pytest.mark.slow
def test_leaderboard_is_unchanged(sweep):
    got, want = _leaderboard(sweep / "leaderboard.md"), _leaderboard(GOLDEN / "leaderboard.md")
    diff = [(i, w, g) for i, (w, g) in enumerate(zip(want, got)) if w != g]
    assert not diff, f"first changed line {diff[0][0]}:\n- {diff[0][1]}\n+ {diff[0][2]}"
    assert len(got) == len(want)


@pytest.mark.slow
@pytest.mark.parametrize("name", PLOTS)
def test_plots_are_unchanged(sweep, name):
    got, want = _pixels(sweep / name), _pixels(GOLDEN / name)
    assert got.shape == want.shape
    assert np.array_equal(got, want), f"{name}: {int((got != want).any(-1).sum())} pixels differ"
