"""The time estimate (`benchmark.runner.estimate`): what it counts (validation attacks, universal perturbations' epochs,
the workers' schedule, a range), and its check against a finished run's run_stats.json (`python -m
benchmark.runner.estimate RESULTS_DIR`)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from hand_cells import job as hand_job

from benchmark import run as runner
from benchmark.records import Job
from benchmark.runner import estimate
from benchmark.runner.config import compose
from benchmark.runner.plan import CraftStage, Stage

COSTS = estimate.PassCosts(train=1e-3, grad=1e-3, score=3e-4, ref=2e-4)
INFO = {"train_sizes": {"source": 800, "target": 100}, "val_sizes": {"source": 100, "target": 250}}


def job(module: dict, epochs: int = 10, **extra) -> Job:
    return hand_job(module=module, trainer={"max_epochs": epochs}, domain="target", **extra)


def test_an_adversarial_defense_is_priced_with_its_validation_attack():
    plain = estimate.train_seconds(job({"_target_": "lightning_modules.modules.StudentModule"}), INFO, COSTS)
    pgd_at = {"_target_": "defenses.pgd_at.PGDAT", "train_attack": {"steps": 5}}
    adversarial = estimate.train_seconds(job(pgd_at), INFO, COSTS)
    no_val = estimate.train_seconds(job(pgd_at), {**INFO, "val_sizes": {"target": 0}}, COSTS)
    step = COSTS.grad + estimate.OVERHEAD["step"] * COSTS.ref
    # 250 validation examples x 5 steps x 10 epochs: more than the 100 training examples' attack
    assert adversarial - no_val == pytest.approx(10 * 250 * (2 * COSTS.score + 5 * step))
    assert adversarial - no_val > 10 * 100 * 5 * step and adversarial > 3 * plain
    assert estimate.train_seconds(job({}, public=True), INFO, COSTS) == estimate.FIXED["train"] * COSTS.ref


def test_a_universal_perturbation_is_priced_by_its_epochs_over_the_attackers_data():
    stage = CraftStage(id="c", kind="craft", key="c", deps=[], pair="p", teacher="t", surrogates=["t"], attack={}, n=64)
    universal = SimpleNamespace(epochs=2, attacker_domain="source", max_examples=None)
    small, big = (estimate.craft_seconds(stage, universal, {"train_sizes": {"source": n}}, COSTS) for n in (800, 8000))
    step = COSTS.grad + estimate.OVERHEAD["step"] * COSTS.ref
    assert big - small == pytest.approx(2 * 7200 * step)
    capped = SimpleNamespace(epochs=2, attacker_domain="source", max_examples=800)
    assert estimate.craft_seconds(stage, capped, {"train_sizes": {"source": 8000}}, COSTS) == pytest.approx(small)


def test_the_schedule_follows_dependencies_and_workers():
    stages = [
        Stage(id=i, kind="cell", key=i, deps=deps) for i, deps in (("t", []), ("a", ["t"]), ("b", ["t"]), ("c", []))
    ]
    seconds = {"t": 10.0, "a": 5.0, "b": 5.0, "c": 1.0}
    assert estimate.schedule(stages, seconds, 1) == 21.0
    assert estimate.schedule(stages, seconds, 2) == 15.0  # a and b side by side after the teacher; c beside it
    assert estimate.schedule(stages, seconds, 8) == 15.0  # the chain t -> a is the floor
    assert estimate.schedule(stages[1:], seconds, 2) == 6.0  # a dependency outside the schedule is done


def test_the_range_holds_the_point_and_a_deterministic_attack_stops_early():
    from attacks.pgd import PGD

    pgd = PGD(8 / 255, steps=10)
    shares = {name: estimate.attack_steps(pgd, 100, False, name) for name in ("low", "point", "high")}
    assert shares["low"] < shares["point"] < shares["high"] == 100 * 10
    assert estimate.attack_steps(pgd, 100, True, "low") == 100 * 10, "a randomized model: every step"


@pytest.mark.slow
def test_the_estimate_is_checked_against_a_runs_stats(tmp_path, capsys):
    from sweeps import ONE_EPOCH

    cfg = compose([*ONE_EPOCH, f"cache_dir={tmp_path / 'cache'}", f"results_dir={tmp_path / 'r'}", "launcher=inline"])
    from benchmark.runner.planner import make_plan

    cold = estimate.summary(cfg, make_plan(cfg)[0])
    low, high = cold["range"]
    assert 0 < low <= cold["estimated_seconds"] <= high
    assert set(cold["seconds_by_kind"]) == {"train", "attack/fgsm", "attack/pgd_linf"}
    runner.run(cfg)
    stats = json.loads((tmp_path / "r" / "run_stats.json").read_text())
    assert set(stats["cpu_seconds_by_kind"]) == set(stats["stage_seconds_by_kind"]) == set(cold["seconds_by_kind"])
    result = estimate.check([tmp_path / "r"])
    assert result["measured_seconds"] == pytest.approx(stats["seconds"])
    work = sum(v["estimated"] for v in result["kinds"].values())
    cpu = sum(v.get("cpu", 0) for v in result["kinds"].values())
    assert 1 / 4 < work / cpu < 4, (work, cpu, result)  # a gross miscount (a kind of work left out) fails here
    capsys.readouterr()
    assert estimate.main([str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "attack/pgd_linf" in out and "wall time: estimated" in out and "measured" in out
