"""The W&B logger of a training stage (`lightning_modules.loggers`): a stable run id, read back from disk."""

from __future__ import annotations

import pytest
from wandb_reader import read_run

from lightning_modules.loggers import finish_logger, lightning_logger, run_id


def test_run_ids_are_stable_and_distinct():
    assert run_id("teacher", "abc") == run_id("teacher", "abc")
    assert run_id("teacher", "abc") != run_id("student", "abc") != run_id("student", "abd")
    assert run_id("student", "abc").startswith("student-") and len(run_id("student", "abc")) == len("student-") + 20


def test_no_logger_when_tracking_is_off():
    assert lightning_logger(None, "x", {}) is None
    assert lightning_logger({"mode": "disabled"}, "x", {}) is None
    finish_logger(None)  # nothing to finish


def test_a_training_run_is_logged_under_the_id_it_is_given(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = {"project": "test", "mode": "offline", "dir": str(tmp_path), "group": "sweep", "tags": ["t"]}
    rid = run_id("student", "0123456789abcdef0123")
    logger = lightning_logger(cfg, "student-finetune-seed0", {"kind": "student", "seed": 0}, run_id=rid)
    assert logger is not None
    logger.log_metrics({"val/acc": 0.5}, step=0)
    finish_logger(logger)
    (path,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    assert path.parent.name.endswith(f"-{rid}"), "the offline folder is named for the run's id"
    run = read_run(path)
    assert (run["id"], run["name"], run["group"], run["job_type"]) == (rid, "student-finetune-seed0", "sweep", "train")
    assert run["config"]["kind"] == "student" and run["summary"]["val/acc"] == 0.5


def test_a_wandb_failure_leaves_training_untracked(tmp_path, monkeypatch):
    import wandb

    def broken(*a, **k):
        raise RuntimeError("W&B is down")

    monkeypatch.setattr(wandb, "init", broken)
    cfg = {"project": "test", "mode": "offline", "dir": str(tmp_path), "group": "sweep"}
    with pytest.warns(UserWarning, match="W&B logger unavailable.*W&B is down"):
        assert lightning_logger(cfg, "teacher", {}, run_id=run_id("teacher", "k")) is None
