"""`make perf-memory`'s steps run at toy sizes (its figures come from the full sizes, in fresh processes)."""

from __future__ import annotations

import pytest

from benchmark.devtools.memory import run_step


@pytest.mark.parametrize("step", ["cell", "cell_randomized", "craft", "tune"])
def test_the_evaluation_steps_run_on_the_fake_224_px_pair(step):
    row = run_step(step, n_source=20, n_target=30, n_test=12)
    assert row["step"] == step and row["n_test"] == 12
    assert row["peak_mb"] >= row["rss_before_mb"] > 0
