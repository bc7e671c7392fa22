"""The runner end to end on tiny sweeps: outputs, caching, resuming, W&B offline, bad input, every config."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fake_data import skip_md5, write_all, write_fashion
from sweeps import SPENT, expected_models, fast_experiment, read_rows, run, spent, tiny
from wandb_reader import read_run

from benchmark import run as runner
from benchmark.results.files import read_csv
from benchmark.runner import config
from benchmark.runner.config import compose
from benchmark.runner.execute import Executor
from benchmark.runner.planner import make_plan
from lightning_modules.loggers import run_id

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def first(tmp_path_factory, warm_run):
    """The session's warm run (TINY from an empty cache) copied into a folder of this module, whose tests rerun it
    against the same cache; (folder, {"stats": what the cold run computed, "rows": its rows})."""
    tmp = tmp_path_factory.mktemp("sweep")
    shutil.copytree(warm_run / "cache", tmp / "cache")
    shutil.copytree(warm_run / "results", tmp / "results")
    stats = json.loads((warm_run / "stats.json").read_text())
    return tmp, {"stats": stats, "rows": read_csv(tmp / "results" / "results.csv")}


def test_outputs(warm_run):
    """The warm run is TINY from an empty cache: what it computed, wrote and spent."""
    tmp, out = warm_run, {"stats": json.loads((warm_run / "stats.json").read_text())}
    rows = read_rows(tmp)
    models = {r["defense"] for r in rows}
    assert models == {"teacher", "finetune", "pgd_at"}
    per_model = [r for r in rows if r["defense"] == "finetune"]
    assert len(per_model) == 3 * 2 + 2, "3 attacks x 2 eps + a worst-case row per eps"
    for column in (
        "source",
        "target",
        "defense",
        "seed",
        "attack",
        "norm",
        "eps",
        "clean_acc",
        "robust_acc",
        "success_rate",
        "transfer_acc",
        "transferability",
        "n_examples",
        "wall_seconds",
    ):
        assert column in rows[0], column
    assert all(r["n_examples"] == "64" for r in rows)
    transfer = [r for r in rows if r["threat_model"] == "transfer"]
    assert transfer and all(r["transferability"] not in ("", "None") for r in transfer)
    for r in rows:
        assert float(r["robust_acc"]) <= float(r["clean_acc"]) + 1e-9
    for name in ("leaderboard.md", "robust_vs_eps.png", "heatmap.png", "run_stats.json", "config.yaml"):
        assert (tmp / "results" / name).stat().st_size > 0, name
    board = (tmp / "results" / "leaderboard.md").read_text()
    assert "| rank | defense | clean |" in board and "formula is unverified" in board
    assert out["stats"]["teacher_trained"] == 1 and out["stats"]["student_trained"] == 2
    assert out["stats"]["crafted"] == 2, "transfer examples are crafted once per epsilon, for all students"
    assert set(spent(tmp)) == SPENT


def test_worst_case_row_is_the_per_example_union(first):
    tmp, _ = first
    rows = read_rows(tmp)
    for defense in ("teacher", "finetune", "pgd_at"):
        for eps in ("8/255", "16/255"):
            group = {
                r["attack"]: float(r["robust_acc"]) for r in rows if r["defense"] == defense and r["eps_label"] == eps
            }
            assert group["worst_case"] <= min(v for k, v in group.items() if k != "worst_case") + 1e-9


def test_rerun_trains_nothing_and_attacks_nothing(first):
    tmp, out = first
    again = run(tiny(tmp))
    assert {k: v for k, v in again["stats"].items() if k != "cache_hits"} == dict.fromkeys(
        ("teacher_trained", "student_trained", "crafted", "attacks_run"), 0
    )
    assert spent(tmp) == {}, "a cache hit costs nothing"
    key = lambda r: (r.defense, r.attack, r.eps)  # noqa: E731
    before = {key(r): r.robust_acc for r in out["rows"]}
    assert {key(r): r.robust_acc for r in again["rows"]} == before


def test_adding_an_attack_runs_only_that_attack(first):
    tmp, _ = first
    more = run(
        tiny(
            tmp,
            "attack=[fgsm,pgd_linf,transfer_pgd_linf,pgd_l2]",
            "attack.pgd_l2.epsilons=[0.5]",
            "attack.pgd_l2.attack.steps=3",
        )
    )
    assert more["stats"]["teacher_trained"] == more["stats"]["student_trained"] == more["stats"]["crafted"] == 0
    assert more["stats"]["attacks_run"] == 3, "one new cell for each of the 3 models"


def test_narrowing_the_sweep_reuses_the_cache(first):
    tmp, _ = first
    one = run(tiny(tmp, "defense=pgd_at", "attack=pgd_linf"))
    assert {r.defense for r in one["rows"]} == {"teacher", "pgd_at"}
    assert {r.attack for r in one["rows"]} == {"pgd_linf"}
    assert one["stats"]["attacks_run"] == 0 and one["stats"]["student_trained"] == 0


def test_an_interrupted_sweep_continues_where_it_stopped(tmp_path, monkeypatch, capsys):
    real = Executor._cell
    calls = {"n": 0}

    # The teacher's evaluation is 6 cells (the transfer attack's white-box reference is the pgd_linf cell);
    # then the student is trained; stop in the middle of the student's evaluation, after 4 of its 6 cells.
    def interrupt_after_ten(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 10:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Executor, "_cell", interrupt_after_ten)
    assert runner.main(tiny(tmp_path, "defense=finetune")) == 130
    assert "run the same command again to continue" in capsys.readouterr().err
    monkeypatch.setattr(Executor, "_cell", real)
    resumed = run(tiny(tmp_path, "defense=finetune"))
    assert resumed["stats"]["teacher_trained"] == 0, "the finished teacher was lost"
    assert resumed["stats"]["student_trained"] == 0, "the finished student was lost"
    assert resumed["stats"]["attacks_run"] == 2, "only the student's 2 unfinished cells run again"


def test_wandb_offline_runs_are_written_and_read_back(tmp_path, monkeypatch):
    from benchmark.results import verdicts

    monkeypatch.delenv("WANDB_MODE", raising=False)
    found, real = [], verdicts.findings
    monkeypatch.setattr(verdicts, "findings", lambda *a, **k: found.append(real(*a, **k)) or found[-1])
    overrides = [
        o for o in tiny(tmp_path, "defense=finetune", "attack=[pgd_linf,transfer_pgd_linf]") if o != "logger=none"
    ]
    out = run([*overrides, "logger=wandb"])
    assert out["wandb_failures"] == []
    runs = [read_run(p) for p in sorted((tmp_path / "results" / "wandb").glob("offline-run-*/run-*.wandb"))]
    by_type = {}
    for r in runs:
        by_type.setdefault(r["job_type"], []).append(r)
    assert len(by_type["train"]) == 2, "a run for the teacher and one for the student"
    stages = json.loads((tmp_path / "results" / "plan.json").read_text())["stages"]
    trained = {run_id(s["kind"], s["key"]) for s in stages if s["kind"] in ("teacher", "student")}
    assert {r["id"] for r in by_type["train"]} == trained, "a training run's W&B id comes from its stage's key"
    assert {r["group"] for r in runs} == {"digits"}
    evals = {r["name"]: r for r in by_type["evaluate"]}
    finetune = evals["eval-digits-finetune-seed0"]
    assert finetune["config"]["defense"] == "finetune" and finetune["config"]["pair"] == "digits"
    rows = {(r.defense, r.attack, r.eps_label): r for r in out["rows"]}
    assert finetune["summary"]["test/robust_acc/pgd_linf_8"] == pytest.approx(
        rows[("finetune", "pgd_linf", "8/255")].robust_acc
    )
    assert "test/transfer/transfer_pgd_linf_16/transferability" in finetune["summary"]
    assert any("val/acc" in h for r in by_type["train"] for h in r["history_keys"])
    (sweep,) = by_type["sweep"]
    assert sweep["tables"]["results"]["nrows"] == len(out["rows"])
    assert len(found) == 1, "the findings are computed once, for the leaderboard and W&B"
    assert sweep["tables"]["findings"]["nrows"] == len(found[0]) > 0


def test_a_wandb_failure_loses_no_result(tmp_path, monkeypatch):
    import wandb

    def broken(*a, **k):
        raise RuntimeError("W&B is down")

    monkeypatch.setattr(wandb, "init", broken)
    overrides = [o for o in tiny(tmp_path, "defense=finetune", "attack=fgsm") if o != "logger=none"]
    with pytest.warns(UserWarning, match="W&B"):
        out = run([*overrides, "logger=wandb"])
    assert out["wandb_failures"] and (tmp_path / "results" / "results.csv").exists()
    assert len(read_rows(tmp_path)) == len(out["rows"]) > 0


# ---- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, expected",
    [
        ("data=imagenet", "unknown data 'imagenet'; valid: cifar10_stl10, digits"),
        ("defense=[finetune,magic]", "unknown defense 'magic'; valid:"),
        ("attack=cw", "unknown attack 'cw'; valid: advencoder_pat, advencoder_per, autoattack"),
        ("model=vit_huge", "unknown model 'vit_huge'; valid:"),
        ("model.backbone=nonet", "unknown model 'nonet'; valid: small_cnn, dtn, resnet18_cifar, wrn_28_10"),
        ("attack.fgsm.epsilons=[-0.1]", "epsilon must be a finite number >= 0"),
        ("attack.pgd_linf.epsilons=[eight]", "epsilon 'eight' is not a number"),
        ("attack.pgd_linf.attack.steps=0", "steps must be an integer >= 1"),
        ("attack.pgd_linf.attack.norm=l3", "unknown norm 'l3'; valid: l2, linf"),
        ("defense.pgd_at.module.mode=half", "unknown mode 'half'; valid:"),
        ("defense.freeze.module.frozen_layers=[nope]", "frozen layer 'nope' matches no parameter; valid:"),
        ("eval.n_examples=0", "eval.n_examples must be an integer >= 1 or null, got 0"),
        ("eval.n_exampels=5", "unknown key 'eval.n_exampels' (did you mean eval.n_examples"),
        ("report.transferability=ratio", "valid: accuracy_drop, success_ratio"),
        ("defense.finetune.family=blue", "unknown defense.finetune.family 'blue'; valid: adversarial, modes, other"),
        (
            "defense.finetune.claims=[{text: t, source: s, higher: finetune, lower: scratch, attack: fgsm, norm: l1}]",
            "defense.finetune.claims[0].norm 'l1'; valid: l2, linf",
        ),
    ],
)
def test_bad_input_is_one_line_before_any_work(tmp_path, capsys, override, expected):
    code = runner.main([f"cache_dir={tmp_path / 'cache'}", f"results_dir={tmp_path / 'r'}", "logger=none", override])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: ") and expected in err, err
    assert "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "cache").exists(), "something was computed before the config was rejected"


def test_bad_input_from_the_command_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "benchmark.run", "defense=nope", f"cache_dir={tmp_path}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: unknown defense 'nope'; valid: atop, commoninit, differentiator")
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


# ---- every shipped experiment config ----------------------------------------------------------------
EXPERIMENTS = config.options("experiment")
#: The experiments `make test` runs end to end on tiny fake data: what a plan cannot show (training steps, attacks,
#: scoring and the report on real tensors) for the default pair, the SSL encoder's chain and one torchvision pair (a
#: Fashion-MNIST pair runs on a few hundred real images: test_fashion_real_images.py). `make test-e2e` runs every
#: other one (the Fashion-MNIST experiments on fake files, ResNet-18 and WRN on 32 px images).
RUN_IN_MAKE_TEST = ("digits", "digits_ssl", "mnist_usps")


@pytest.fixture
def fake_data(tmp_path, monkeypatch) -> Path:
    """Every pair's tiny fake files under tmp_path / "data" (tests/fake_data.py)."""
    skip_md5(monkeypatch)
    write_all(str(tmp_path / "data"))
    write_fashion(str(tmp_path / "data"), per_class_train=300, per_class_test=10)  # 100 per class held out for val
    return tmp_path


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_config_plans(fake_data, experiment):
    """Every shipped experiment is validated and planned (its models' and training modules' constructors run on
    the meta device; its data pairs set up on fake files): every model it evaluates has its training stage and
    cells for attacks, each crafted attack its crafted set."""
    plan = make_plan(compose(fast_experiment(experiment, fake_data)))[0]
    cells = plan.cells()
    assert {c.defense for c in cells} == expected_models(experiment)
    for c in cells:
        assert c.model in {s.id for s in plan.stages}, c.id
        assert not c.crafted or c.craft, f"{c.id}: a crafted attack without its crafted set"


def _run_experiment(tmp: Path, experiment: str) -> None:
    out = run(fast_experiment(experiment, tmp))
    assert {r.defense for r in out["rows"]} == expected_models(experiment)
    assert (tmp / "r" / "leaderboard.md").exists()


@pytest.mark.slow
@pytest.mark.parametrize("experiment", RUN_IN_MAKE_TEST)
def test_experiment_configs_run_end_to_end(fake_data, experiment):
    _run_experiment(fake_data, experiment)


@pytest.mark.e2e
@pytest.mark.parametrize("experiment", sorted(set(EXPERIMENTS) - set(RUN_IN_MAKE_TEST)))
def test_every_other_experiment_config_runs_end_to_end(fake_data, experiment):
    _run_experiment(fake_data, experiment)


@pytest.mark.parametrize(("group", "name"), [(g, n) for g in config.GROUPS for n in config.options(g)])
def test_every_config_group_option_composes(group, name):
    if group in ("data", "defense", "attack"):
        cfg = compose([f"{group}=[{name}]"])
        assert list(cfg[group]) == [name], f"{group}/{name}.yaml must hold one top-level key '{name}'"
    else:
        compose([f"{group}={name}"])


# ---- DDP -------------------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_student_training_under_ddp_on_the_cpu(tmp_path):
    """Two gloo processes train the student; both end with the same weights; the sweep goes on as usual."""
    args = [
        sys.executable,
        "-m",
        "benchmark.run",
        *tiny(tmp_path, "defense=finetune", "attack=fgsm"),
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "+teacher.trainer.devices=1",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metas = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "student").glob("*/meta.json")]
    assert len(metas) == 1
    (meta,) = metas
    assert meta["world_size"] == 2
    a, b = meta["rank_param_checksums"]
    assert a == b, "the two ranks ended with different weights"
    teacher = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "teacher").glob("*/meta.json")]
    assert teacher[0]["world_size"] == 1
    assert len(read_rows(tmp_path)) > 0


# ---- the default benchmark's numbers --------------------------------------------------------------------
@pytest.mark.e2e
def test_default_benchmark_numbers_are_sensible(tmp_path):
    """The default experiment's training (not shortened), on 300 test examples at the headline epsilon."""
    out = run(
        [
            "logger=none",
            "progress=false",
            f"cache_dir={tmp_path / 'cache'}",
            f"results_dir={tmp_path / 'r'}",
            "eval.n_examples=300",
            "defense=[finetune,pgd_at]",
            "attack=[fgsm,pgd_linf]",
            "attack.fgsm.epsilons=[16/255]",
            "attack.pgd_linf.epsilons=[16/255]",
        ]
    )
    acc = {(r.defense, r.attack): r for r in out["rows"]}
    teacher_clean = acc[("teacher", "fgsm")].clean_acc
    finetune_clean = acc[("finetune", "fgsm")].clean_acc
    assert teacher_clean > 0.3, "the teacher is not clearly better than chance (10 %) on the target"
    assert finetune_clean > teacher_clean + 0.15, "fine-tuning on the target does not clearly beat the teacher"
    for defense in ("teacher", "finetune", "pgd_at"):
        assert acc[(defense, "pgd_linf")].robust_acc <= acc[(defense, "fgsm")].robust_acc + 1e-9
    assert acc[("pgd_at", "pgd_linf")].robust_acc > acc[("finetune", "pgd_linf")].robust_acc + 0.1
    assert out["warnings"] == []


# ---- multi-stage defenses -------------------------------------------------------------------------------
def test_a_defense_that_starts_from_an_earlier_stage(tmp_path):
    """genaf starts from genaf_stage1 (trained, cached, not evaluated) and runs its probe as a cached step."""
    extra = [
        "defense=genaf",
        "attack=pgd_linf",
        "++defense.genaf_stage1.trainer.max_epochs=2",
        "defense.genaf.trainer.max_epochs=2",
        "defense.genaf.module.probe_epochs=1",
    ]
    first = run(tiny(tmp_path, *extra))
    assert first["stats"]["student_trained"] == 2, "stage 1 and stage 2"
    assert {r.defense for r in first["rows"]} == {"teacher", "genaf"}, "stage 1 alone is not evaluated"
    prep = list((tmp_path / "cache" / "prep").glob("*/meta.json"))
    assert len(prep) == 1 and json.loads(prep[0].read_text())["chosen_layers"]
    genaf = [r for r in first["rows"] if r.defense == "genaf"]
    assert all(r.prep_seconds and r.prep_seconds > 0 for r in genaf), "the probe's cost is reported"
    again = run(tiny(tmp_path, *extra))
    assert again["stats"]["student_trained"] == 0 and again["stats"]["attacks_run"] == 0
    with_stage1 = run(
        tiny(tmp_path, *extra[1:], "defense=[genaf_stage1,genaf]", "defense.genaf_stage1.trainer.max_epochs=2")
    )
    assert with_stage1["stats"]["student_trained"] == 0, "selecting stage 1 reuses the stage trained for genaf"
    assert {r.defense for r in with_stage1["rows"]} == {"teacher", "genaf_stage1", "genaf"}


def test_detection_auroc_is_reported_for_every_model(first):
    _, out = first
    whitebox = [r for r in out["rows"] if r.threat_model == "white-box"]
    assert all(0.0 <= r.detection_auroc <= 1.0 for r in whitebox if r.success_rate > 0)
