"""Fixtures of the runner's tests."""

from __future__ import annotations

import gc

import pytest


@pytest.fixture(autouse=True)
def _no_collect_in_holm(monkeypatch):
    """statsmodels' Holm correction (`multipletests(method="holm")`, every findings and verdict call) runs
    `gc.collect()` each time: about a second in a process that holds torch and the session's models, seconds per
    test. A no-op in these tests: collecting garbage changes no number (Python's automatic collection still runs)."""
    monkeypatch.setattr(gc, "collect", lambda generation=2: 0)
