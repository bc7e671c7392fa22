"""A training stage's identity (benchmark/runner/stages/train.py) on fake modules, fake data and a cache in a temporary
folder, the training itself replaced by recorders: the preparation's key, seed and cache entry, the parameter
checksum, the accuracy over a split, the cache lookup before training and the process a stage trains in. Some tests
pin exact values found by mutation testing (`make mutate`, tests/mutation/mutate.py).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from hand_cells import job as hand_job

from benchmark.records import Job
from benchmark.runner.cache import Cache, stage_key


# ---- a training stage's identity -----------------------------------------------------------------------------
class Prepared(nn.Module):
    """A module with a preparation step (`prepare_spec` / `prepare` / `apply_preparation`), recording its calls."""

    def __init__(self, spec):
        super().__init__()
        self.spec, self.prepared, self.applied = spec, 0, []
        self.w = nn.Parameter(torch.tensor([1.0, 2.5]))
        self.v = nn.Parameter(torch.tensor([[-0.5]]))

    def prepare_spec(self):
        return self.spec

    def prepare(self, dm):
        self.prepared += 1
        return {"dm": dm}, torch.rand(3)

    def apply_preparation(self, meta, tensors):
        self.applied.append((meta, tensors))


def test_the_preparation_is_keyed_on_its_stage_and_spec_seeded_and_cached(tmp_path, monkeypatch, caplog):
    from benchmark.runner.stages.train import ensure_prepared

    monkeypatch.setenv("PL_SEED_WORKERS", "0")
    monkeypatch.setenv("PL_GLOBAL_SEED", "11")  # what `seed_everything(None)` would take
    cache = Cache(tmp_path)
    job = hand_job(key="k1", seed=3)
    assert ensure_prepared(job, Prepared(None), "dm", cache) is None
    module = Prepared({"a": 1})
    with caplog.at_level("INFO"):
        meta = ensure_prepared(job, module, "dm", cache)
    assert not [r for r in caplog.records if "Seed set" in r.getMessage()], "quietly"
    key = stage_key("prep", {"stage": "k1", "spec": {"a": 1}})
    torch.manual_seed(3)
    want = torch.rand(3)
    assert meta["key"] == key and meta["cached"] is False and meta["dm"] == "dm" and 0 <= meta["seconds"] < 60
    assert os.environ["PL_SEED_WORKERS"] == "1", "data-loader workers seeded too"
    assert torch.equal(module.applied[0][1], want) and module.applied[0][0] is meta
    stored = cache.meta("prep", key)
    assert stored["key"] == key and "cached" not in stored and torch.equal(cache.tensors("prep", key, "result"), want)
    again = Prepared({"a": 1})
    meta2 = ensure_prepared(job, again, "dm", cache)
    assert again.prepared == 0 and meta2["cached"] is True and meta2["key"] == key
    assert torch.equal(again.applied[0][1], want) and again.applied[0][0] is meta2
    for other_job, spec in ((replace(job, key="k2"), {"a": 1}), (job, {"a": 2})):
        fresh = Prepared(spec)
        assert ensure_prepared(other_job, fresh, "dm", cache)["cached"] is False and fresh.prepared == 1


def test_param_checksum_sums_every_parameter_in_double():
    from benchmark.runner.stages.train import _param_checksum

    assert _param_checksum(Prepared(None)) == 3.0
    m = nn.Linear(1, 1)
    with torch.no_grad():
        m.weight.fill_(1e8)
        m.bias.fill_(1.0)
    assert _param_checksum(m) == 1e8 + 1.0, "float32 would round the sum"


class FakeData:
    def __init__(self, n: int):
        torch.manual_seed(0)
        self.x, self.y = torch.rand(n, 4), torch.randint(0, 3, (n,))
        self.asked = []

    def lazy_tensors(self, domain, split):
        self.asked.append((domain, split))
        return self.x, self.y


def test_accuracy_over_every_batch_of_the_split_in_eval_mode():
    from benchmark.runner.stages.train import _accuracy

    m = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.9))
    dm = FakeData(600)
    with torch.no_grad():
        want = float((m[0](dm.x).argmax(1) == dm.y).float().mean())
    m.train()
    assert _accuracy(m, dm, "source", "val") == pytest.approx(want, abs=1e-9) and dm.asked == [("source", "val")]
    assert not m.training


def job(tmp_path, **trainer) -> Job:
    return hand_job(kind="student", key="abc", cache_dir=str(tmp_path), data={"name": "d"}, trainer=trainer, seed=0)


@pytest.fixture
def fakes(monkeypatch):
    """The training functions of benchmark.runner.stages.train replaced by recorders."""
    import benchmark.runner.stages.train as train

    calls = []
    train_job = lambda j, progress=True: calls.append(("train", j.key, progress)) or {"m": 1}  # noqa: E731
    monkeypatch.setattr(train, "run_train_job", train_job)
    monkeypatch.setattr(train, "run_public_job", lambda j: calls.append(("public", j.key)) or {"m": 2})
    monkeypatch.setattr(train, "build_datamodule", lambda cfg: f"dm of {cfg['name']}")
    monkeypatch.setattr(train, "build_module", lambda j, cache, dm: f"module of {j.key} in {cache.root.name}, {dm}")
    prep = lambda j, module, dm, cache: calls.append(("prep", j.key, module, dm, cache.root.name))  # noqa: E731
    monkeypatch.setattr(train, "ensure_prepared", prep)
    return calls


def test_a_cached_stage_is_not_run_again(tmp_path, fakes):
    from benchmark.runner.stages.train import train_stage

    Cache(tmp_path).put("student", "abc", {"m": 0})
    assert train_stage(job(tmp_path, devices=4)) == {"m": 0, "cached": True} and fakes == []


@pytest.mark.parametrize(
    "trainer, public, want",
    [({}, False, ("train", "abc", False)), ({"devices": 1, "num_nodes": 1}, False, ("train", "abc", False)),
     ({"devices": "auto"}, False, ("train", "abc", False)), ({"devices": 2}, True, ("public", "abc"))],
)  # fmt: skip
def test_a_single_process_stage_runs_in_process(tmp_path, fakes, trainer, public, want):
    from benchmark.runner.stages.train import train_stage

    j = replace(job(tmp_path, **trainer), public=public)
    assert train_stage(j, progress=False) == {"m": 2 if public else 1, "cached": False} and fakes == [want]
    if not public:
        train_stage(replace(j, key="k2"))
        assert fakes[-1] == ("train", "k2", True), "with a progress bar by default"


@pytest.mark.parametrize("trainer", [{"devices": 2}, {"devices": 1, "num_nodes": 2}])
def test_a_ddp_stage_runs_in_a_fresh_process_after_the_preparation(tmp_path, fakes, monkeypatch, trainer):
    import subprocess

    from benchmark.runner.stages.train import train_stage

    seen = {}
    root = tmp_path / "fresh" / "cache"  # not there yet: the job file's folder is made with its parents

    def run(cmd, check, env):
        seen.update(cmd=cmd, check=check, env=env)
        Cache(root).put("student", json.loads(Path(cmd[-1]).read_text())["key"], {"m": 3})

    monkeypatch.setattr(subprocess, "run", run)
    for var, value in (("MASTER_PORT", "1"), ("WORLD_SIZE", "2"), ("PL_GLOBAL_SEED", "0"), ("KEEP_ME", "yes")):
        monkeypatch.setenv(var, value)
    j = job(root, **trainer)
    assert train_stage(j) == {"m": 3, "cached": False}
    path = root / "jobs" / "student-abc.json"
    assert seen["cmd"] == [sys.executable, "-m", "benchmark.runner.stages.train", str(path)] and seen["check"] is True
    assert Job.from_json(json.loads(path.read_text())) == j, "the job, through its JSON"
    assert seen["env"]["KEEP_ME"] == "yes" and not {"MASTER_PORT", "WORLD_SIZE", "PL_GLOBAL_SEED"} & set(seen["env"])
    assert fakes == [("prep", "abc", "module of abc in cache, dm of d", "dm of d", "cache")], "once, before the ranks"
    assert train_stage(replace(j, key="def"))["m"] == 3, "a second job in the same folder"
    assert (root / "jobs" / "student-def.json").exists()


def test_a_ddp_stage_that_writes_nothing_is_an_error(tmp_path, fakes, monkeypatch):
    import subprocess

    from benchmark.runner.stages.train import train_stage

    monkeypatch.setattr(subprocess, "run", lambda *a, **k: None)
    with pytest.raises(RuntimeError, match=r"the DDP training job .*student-abc\.json finished without writing"):
        train_stage(job(tmp_path, devices=2))
