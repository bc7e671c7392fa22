"""Launchers on this CPU: local workers and submitit jobs give the inline run's rows; the SLURM submission is
checked without a cluster; a killed worker loses nothing and its stage is taken by the next run; two processes
reaching one stage compute it once; a failed stage is one line and the rest of the sweep goes on.

Rows are compared on every column but timing and `cached`. The inline reference runs in a process with two torch
threads, each worker here with one: CPU float reductions depend on the thread count, and a stage computed with 2
threads differed in the last bits (and then in borderline examples) from the same stage computed with 1, until every
stage ran with `numerics.threads` (benchmark/numerics.py).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from hand_cells import cell_stage, train_stage
from sweeps import SPENT, read_rows, spent, tiny

from benchmark import run as runner
from benchmark.runner.config import compose
from benchmark.runner.execute import stage_entry
from benchmark.runner.planner import make_plan

ROOT = Path(__file__).resolve().parents[2]
TIMING = {"attack_seconds", "wall_seconds", "train_seconds", "prep_seconds", "cached"}
WORKERS = ["launcher=workers", "launcher.workers=2", "launcher.threads=1", "launcher.poll_seconds=0.2"]


def assert_same_rows(expected: list[dict], got: list[dict]) -> None:
    assert [r["row_id"] for r in got] == [r["row_id"] for r in expected]
    for a, b in zip(expected, got):
        diff = {k: (a[k], b[k]) for k in a if k not in TIMING and a[k] != b[k]}
        assert not diff, f"{a['row_id']}: {diff}"


@pytest.fixture(scope="module")
def inline(tmp_path_factory) -> list[dict]:
    """The narrowed digits sweep run inline, in a process with two torch threads (see the module docstring)."""
    tmp = tmp_path_factory.mktemp("inline")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        runner.run(compose(tiny(tmp)))
    finally:
        torch.set_num_threads(threads)
    return read_rows(tmp)


def computed(out: dict) -> dict:
    return {k: out["stats"].get(k, 0) for k in ("teacher_trained", "student_trained", "crafted", "attacks_run")}


#: What the narrowed sweep computes: every stage once (a stage computed twice would count twice).
ONCE = {"teacher_trained": 1, "student_trained": 2, "crafted": 2, "attacks_run": 18}


@pytest.mark.e2e
def test_two_workers_give_the_inline_rows(tmp_path, inline):
    out = runner.run(compose(tiny(tmp_path, *WORKERS)))
    assert out["failed"] == []
    assert computed(out) == ONCE
    assert_same_rows(inline, read_rows(tmp_path))
    statuses = [json.loads(p.read_text()) for p in (tmp_path / "results" / "launch" / "workers").glob("*.json")]
    assert len(statuses) == 2 and all(s["state"] == "finished" for s in statuses)
    assert set(spent(tmp_path)) == SPENT, "the workers' seconds reach run_stats.json"


@pytest.mark.e2e
def test_submitit_local_jobs_give_the_inline_rows(tmp_path, monkeypatch, one_thread):
    """Narrower than the other tests (one student, two attacks: 5 jobs in 3 waves): every job is a new process
    that imports torch, and this machine's 2 cores are shared."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the jobs' torch threads, as the reference's
    narrow = ["defense=finetune", "attack=[fgsm,transfer_pgd_linf]"]
    reference = runner.run(compose(tiny(tmp_path / "inline", *narrow)))
    jobs = ["launcher=slurm", "launcher.cluster=local", "launcher.array_limit=4", "launcher.poll_seconds=0.2"]
    out = runner.run(compose(tiny(tmp_path, *narrow, *jobs, "launcher.gpus_per_job=0")))
    assert out["failed"] == []
    assert computed(out) == computed(reference) == {**ONCE, "student_trained": 1, "crafted": 2, "attacks_run": 12}
    assert_same_rows(read_rows(tmp_path / "inline"), read_rows(tmp_path))
    assert len(list((tmp_path / "results" / "launch" / "jobs").glob("*/*_result.pkl"))) == 5, "not run as jobs"


# ---- SLURM without a cluster: the sbatch scripts submitit writes ---------------------------------------------
FAKE_SBATCH = """#!/bin/sh
n=$(cat "$FAKE_SLURM/counter" 2>/dev/null || echo 1000); n=$((n+1)); echo $n > "$FAKE_SLURM/counter"
cp "$1" "$FAKE_SLURM/$n.sh"
echo "Submitted batch job $n"
"""


def test_the_slurm_submission(tmp_path, monkeypatch):
    from benchmark.runner.launchers.common import prepare
    from benchmark.runner.launchers.slurm import submit, units

    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", "#!/bin/sh\nexit 0\n")):
        (bin_ / name).write_text(text)
        (bin_ / name).chmod((bin_ / name).stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM", str(tmp_path))
    options = ["partition=gpu", "time_min=90", "account=proj", "qos=high", "constraint=a100", "array_limit=1"]
    cfg = compose(
        tiny(tmp_path, "launcher=slurm", *(f"launcher.{o}" for o in options), "launcher.cells_per_job=4")
        + ["trainer=ddp", "+teacher.trainer.devices=1"]  # the students train on 2 GPUs (DDP), the teacher on 1
    )
    plan = make_plan(cfg)[0]
    todo = units(plan, cfg["launcher"], set())
    jobs = submit(todo, cfg["launcher"], prepare(cfg, plan))
    scripts = {u: (tmp_path / f"{jobs[u].job_id.split('_')[0]}.sh").read_text() for u in jobs}
    by_name = {unit.name: u for u, unit in enumerate(todo)}
    teacher, student = by_name["digits/teacher"], by_name["digits/finetune/seed0"]
    for u, script in scripts.items():
        for line in ("--partition=gpu", "--time=90", "--account=proj", "--qos=high", "--constraint=a100"):
            assert f"#SBATCH {line}\n" in script, (todo[u].name, line)
        assert "#SBATCH --signal=USR2@" in script, "no preemption signal: the job would not be requeued"
    assert "--dependency" not in scripts[teacher] and "#SBATCH --gpus-per-node=1\n" in scripts[teacher]
    assert "#SBATCH --ntasks-per-node=1\n" in scripts[teacher]
    teacher_id = jobs[teacher].job_id
    assert f"#SBATCH --dependency=afterok:{teacher_id}\n" in scripts[student]
    assert "#SBATCH --kill-on-invalid-dep=yes\n" in scripts[student]
    assert "#SBATCH --ntasks-per-node=2\n" in scripts[student] and "#SBATCH --gpus-per-node=2\n" in scripts[student]
    assert "#SBATCH --array=0-1%1\n" in scripts[student], "the 2 students are one array, 1 task at a time"
    craft = next(jobs[u].job_id for u, unit in enumerate(todo) if "/craft/" in unit.name)
    whitebox, transfer = (by_name[f"digits/finetune/seed0/cells/{k}"] for k in (0, 1))
    assert len(todo[whitebox].stages) == 4 and len(todo[transfer].stages) == 2, "6 cells in jobs of at most 4"
    assert f"#SBATCH --dependency=afterok:{jobs[student].job_id}\n" in scripts[whitebox]
    assert f"#SBATCH --dependency=afterok:{jobs[student].job_id}:{craft}\n" in scripts[transfer]
    covered = sorted(i for unit in todo for i in unit.stages)
    assert covered == sorted(s.id for s in plan.stages), "every stage in exactly one job"


# ---- a killed worker, two processes on one stage, a failed stage ---------------------------------------------
def _wait_for(path: Path, predicate, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for f in path.glob("*.json"):
            try:
                s = json.loads(f.read_text())
            except (json.JSONDecodeError, FileNotFoundError):
                continue
            if predicate(s):
                return s
        time.sleep(0.02)
    raise TimeoutError(f"no worker status in {path} matched")


@pytest.mark.e2e
def test_a_worker_killed_mid_stage_loses_nothing_and_the_next_run_redoes_nothing_finished(tmp_path, inline, one_thread):
    args = [*tiny(tmp_path, *WORKERS), "launcher.workers=1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "benchmark.run", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    victim = "digits/pgd_at/seed0"
    status = _wait_for(tmp_path / "results" / "launch" / "workers", lambda s: s.get("stage") == victim)
    os.kill(status["pid"], signal.SIGKILL)
    cache = tmp_path / "cache"
    before = {p: p.stat().st_mtime_ns for p in cache.glob("*/*/meta.json")}
    output, _ = proc.communicate(timeout=300)
    plan = make_plan(compose(tiny(tmp_path)))[0]
    assert not cache.joinpath(*stage_entry(plan.stage(victim)), "meta.json").exists(), "killed too late"
    assert proc.returncode == 1 and "worker 0 exited with code -9" in output
    assert "did not finish" in output and "the same command runs them" in output
    # The rerun computes exactly what the kill left unfinished (which stages those are depends on the workers'
    # order: trainings and crafted sets first), and the teacher and the first student were finished before it.
    missing = Counter(s.kind for s in plan.stages if not cache.joinpath(*stage_entry(s), "meta.json").exists())
    assert missing["teacher"] == 0 and 0 < missing["student"] < 2
    again = runner.run(compose(tiny(tmp_path)))
    kinds = {"teacher": "teacher_trained", "student": "student_trained", "craft": "crafted", "cell": "attacks_run"}
    assert computed(again) == {stat: missing[kind] for kind, stat in kinds.items()}
    assert {p: p.stat().st_mtime_ns for p in before} == before, "a finished stage was computed again"
    assert_same_rows(inline, read_rows(tmp_path))


RUN_ONE = """
import json, sys, time
from pathlib import Path
from benchmark.runner.launchers.common import StageRunner
runner = StageRunner(sys.argv[1])
stage = runner.plan.stage(sys.argv[2])
Path(sys.argv[3]).touch()
while len(list(Path(sys.argv[3]).parent.glob("ready-*"))) < 2:  # both start together
    time.sleep(0.01)
print(runner.run(stage, wait=True), json.dumps(dict(runner.executor.done.stats)))
"""


@pytest.mark.e2e
def test_two_processes_reaching_the_same_stage_compute_it_once(tmp_path):
    from benchmark.runner.launchers.common import prepare

    cfg = compose(tiny(tmp_path, "launcher=workers"))
    root = prepare(cfg, make_plan(cfg)[0])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RUN_ONE, str(root), "digits/teacher", str(tmp_path / f"ready-{i}")],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    results = [p.communicate(timeout=300)[0].strip().splitlines()[-1].split(" ", 1) for p in procs]
    assert [r[0] for r in results] == ["ran", "ran"]
    stats = [json.loads(r[1]) for r in results]
    assert sorted(s.get("teacher_trained", 0) for s in stats) == [0, 1], "the teacher was trained twice"
    assert sorted(s.get("cache_hits", 0) for s in stats) == [0, 1]


@pytest.mark.e2e
def test_a_failed_stage_is_one_line_and_the_rest_of_the_sweep_goes_on(tmp_path, inline, capsys):
    cfg = compose(tiny(tmp_path, *WORKERS))
    plan = make_plan(cfg)[0]
    broken = plan.stage("digits/finetune/seed0")
    # A directory where the stage's claim file goes: claiming it raises, as a real I/O error would.
    (tmp_path / "cache" / "student" / f".{broken.key}.claim").mkdir(parents=True)
    assert runner.main(tiny(tmp_path, *WORKERS)) == 1
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if "digits/finetune/seed0 failed:" in x]
    assert "IsADirectoryError" in line and "worker-" in line and ".log" in line
    assert "skipped 6 stage(s)" in err, "the student's 6 cells need it"
    rows = read_rows(tmp_path)
    assert {r["defense"] for r in rows} == {"teacher", "pgd_at"}
    assert_same_rows([r for r in inline if r["defense"] != "finetune"], rows)


def test_the_stages_that_need_a_stage_through_deps_a_reference_or_a_base():
    """A failed stage takes with it the stages that need it: through `deps`, and a transfer cell its white-box
    reference, a sanity cell its base cell (their rows need those)."""
    from benchmark.runner.launchers.common import dependents, narrow
    from benchmark.runner.plan import Plan

    plan = Plan(
        "p",
        stages=[
            train_stage("m"),
            cell_stage("m/pgd", "m"),
            cell_stage("m/transfer", "m", reference="m/pgd"),
            cell_stage("m/x2", "m", base="m/pgd"),
            cell_stage("m/fgsm", "m"),
        ],
    )
    assert dependents(plan, {"m/pgd"}) == {"m/pgd", "m/transfer", "m/x2"}
    assert dependents(plan, {"m"}) == {s.id for s in plan.stages}
    assert [s.id for s in narrow(plan, {"m/pgd"}).stages] == ["m", "m/fgsm"]


def test_a_worker_takes_first_the_stages_that_others_wait_for(monkeypatch):
    """A training that other stages wait for goes before any cell, even a cell of a model the worker holds (at a
    run's end the other worker would otherwise sit idle behind it), the head of the longest chain first; among
    cells, a loaded model's come first."""
    from types import SimpleNamespace

    from benchmark.runner.launchers import workers
    from benchmark.runner.launchers.workers import _Worker, levels
    from benchmark.runner.plan import Plan

    def stage(i, *deps, model=None):
        return cell_stage(i, *deps, model=model) if model else train_stage(i, *deps)

    plan = Plan(
        "p",
        stages=[
            stage("teacher"),
            stage("finetune", "teacher"),
            stage("teacher/cell", "teacher", model="teacher"),
            stage("finetune/cell", "finetune", model="finetune"),
            stage("purifier", "finetune"),
            stage("atop", "purifier"),
            stage("atop/cell", "atop", model="atop"),
            stage("purifier/cell", "purifier", model="purifier"),
        ],
    )
    assert levels(plan) == {
        "teacher": 4,  # -> finetune -> purifier -> atop -> atop/cell
        "finetune": 3,
        "teacher/cell": 0,
        "finetune/cell": 0,
        "purifier": 2,
        "atop": 1,
        "atop/cell": 0,
        "purifier/cell": 0,
    }

    finished = {"teacher", "finetune"}
    worker = _Worker.__new__(_Worker)
    worker.levels = [levels(plan)]
    worker.runners = [
        SimpleNamespace(
            root=Path("."),
            plan=plan,
            done=lambda s: s.id in finished,
            executor=SimpleNamespace(_models={"finetune": 1}),
        )
    ]
    monkeypatch.setattr(workers, "failures", lambda root: {})  # nothing failed
    ready, left = worker.ready(0)
    assert left
    assert [s.id for s in ready] == ["purifier", "finetune/cell", "teacher/cell"]


def test_a_pooled_worker_takes_any_experiments_blocking_stage_before_cells_then_cells_in_experiment_order(
    monkeypatch,
):
    """`make bench`'s experiments share one pool: a training that others wait for starts before any cell, whichever
    experiment it is in (the second experiment's first training does not wait for the first's cells); while the
    other worker runs the first experiment's last chain, this one works on the second instead of waiting; cells go
    in experiment order."""
    from types import SimpleNamespace

    from benchmark.runner.launchers import workers
    from benchmark.runner.launchers.workers import _Worker, levels
    from benchmark.runner.plan import Plan

    def stage(i, *deps, model=None):
        return cell_stage(i, *deps, model=model) if model else train_stage(i, *deps)

    first = Plan("a", stages=[stage("a/teacher"), stage("a/atop", "a/teacher"), stage("a/cell", "a/atop", model="m"),
                              stage("a/teacher-cell", "a/teacher", model="t")])  # fmt: skip
    second = Plan("b", stages=[stage("b/teacher"), stage("b/cell", "b/teacher", model="t")])
    finished, busy, ran = {"a/teacher"}, set(), []

    def runner(plan):
        def run(stage, wait):
            if stage.id in busy:
                return "busy"
            ran.append(stage.id)
            finished.add(stage.id)
            return "ran"

        done = lambda s: s.id in finished  # noqa: E731
        return SimpleNamespace(
            root=Path(plan.name), plan=plan, done=done, run=run, executor=SimpleNamespace(_models={})
        )

    worker = _Worker.__new__(_Worker)
    worker.runners = [runner(first), runner(second)]
    worker.levels = [levels(first), levels(second)]
    worker.counts = [Counter(), Counter()]
    monkeypatch.setattr(workers, "failures", lambda root: {})
    monkeypatch.setattr(worker, "status", lambda *a: None, raising=False)
    busy.add("a/atop")  # the other worker holds the first experiment's only ready training
    assert worker.take() == (True, True) and ran == ["b/teacher"], "a training others wait for, before a's cell"
    busy.clear()
    assert worker.take() == (True, True) and ran[-1] == "a/atop", "the longer chain first"
    assert worker.take() == (True, True) and ran[-1] == "a/cell", "cells: the first experiment's, in plan order"
    assert worker.take() == (True, True) and ran[-1] == "a/teacher-cell"
    assert worker.take() == (True, True) and ran[-1] == "b/cell"
    assert worker.take() == (False, False), "nothing left: the worker ends"
    assert worker.counts == [Counter(ran=3), Counter(ran=2)]


@pytest.mark.e2e
def test_experiments_pooled_on_one_set_of_workers_give_each_experiments_inline_rows(tmp_path, inline):
    """Two experiments on one pool (as `make bench` runs digits and digits_ssl): each gets the rows of its own
    inline run, its own counts and run folder; the workers' logs are in the first one's."""
    narrow = ["defense=finetune", "attack=fgsm", "seeds=[1]", f"results_dir={tmp_path / 'b' / 'results'}"]
    reference = runner.run(compose(tiny(tmp_path / "b_inline", *narrow[:3])))
    first, second = runner.run_group([compose(tiny(tmp_path, *WORKERS)), compose(tiny(tmp_path, *WORKERS, *narrow))])
    assert first["failed"] == second["failed"] == []
    assert computed(first) == ONCE
    assert computed(reference) == {"teacher_trained": 1, "student_trained": 1, "crafted": 0, "attacks_run": 4}
    # the teacher and its two FGSM cells are the first experiment's stages too: computed once
    assert computed(second) == {"teacher_trained": 0, "student_trained": 1, "crafted": 0, "attacks_run": 2}
    assert_same_rows(inline, read_rows(tmp_path))
    assert_same_rows(read_rows(tmp_path / "b_inline"), read_rows(tmp_path / "b"))
    pool = json.loads((tmp_path / "b" / "results" / "run_stats.json").read_text())["pool"]
    assert pool["experiments"] == ["digits", "digits"] and pool["pool_seconds"] > 0
    assert len(list((tmp_path / "results" / "launch").glob("worker-*.log"))) == 2
    assert not list((tmp_path / "b" / "results" / "launch").glob("worker-*.log"))
