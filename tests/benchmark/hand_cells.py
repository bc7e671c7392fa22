"""Hand-made cells, jobs and stages for the tests of the runner's rules: each record with every field set to a plain
default."""

from __future__ import annotations

from benchmark.records import Budget, CellSpec, Job
from benchmark.runner.plan import CellStage, TrainStage


def cell(norm: str = "linf", eps: float = 0.1, label: str = "x", **changes) -> CellSpec:
    """A white-box PGD cell on model `p/d/seed0` at (norm, eps); `changes` replace any other field."""
    fields = {
        "id": f"p/d/seed0/pgd/{norm}/{label}",
        "pair": "p",
        "model": "p/d/seed0",
        "defense": "d",
        "seed": 0,
        "entry": "pgd",
        "role": "attack",
        "attack": {"cfg": {}, "eps": label, "changes": {}},
        "name": "pgd",
        "budget": Budget(norm, eps, label),
        "threat_model": "white-box",
        "surrogate": "",
        "steps": 20,
        "crafted": False,
        "transfer": False,
        "targeted": False,
        "reject_aware": False,
        "n": 8,
        "randomized": False,
        "draws": 1,
    }
    return CellSpec(**{**fields, **changes})


def job(**changes) -> Job:
    """A student's training job on pair `p` (defense `d`, seed 0, cache key `k`); `changes` replace any field."""
    fields = {
        "kind": "student",
        "name": "d",
        "data_name": "p",
        "data": {"_target_": "d"},
        "data_fingerprint": "fp",
        "domain": "target",
        "model": {"backbone": "small_cnn"},
        "module": {"_target_": "m"},
        "trainer": {},
        "seed": 0,
        "teacher_key": None,
        "init_key": None,
        "cache_dir": "cache",
        "numerics": {},
        "key": "k",
    }
    return Job(**{**fields, **changes})


def train_stage(sid: str, *deps: str, kind: str = "student", key: str | None = None, defense: str = "d", seed: int = 0,
                **changes) -> TrainStage:  # fmt: skip
    """A training stage `sid` of `defense` at `seed` (its key: `key`, else its id), needing `deps`; `changes` replace
    any other field of its job."""
    key = sid if key is None else key
    made = job(kind=kind, name=defense, seed=seed, key=key, **changes)
    return TrainStage(id=sid, kind=kind, key=key, deps=list(deps), job=made, defense=defense, seed=seed)


def cell_stage(sid: str, *deps: str, key: str | None = None, **changes) -> CellStage:
    """A cell stage `sid` (its key: `key`, else its id) needing `deps`; `changes` replace any field of its cell."""
    return CellStage(
        id=sid, kind="cell", key=sid if key is None else key, deps=list(deps), cell=cell(id=sid, **changes)
    )
