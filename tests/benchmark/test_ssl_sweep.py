"""SSL teachers, CommonInit, public checkpoints and downstream-agnostic attacks through the runner: the plan's
wiring, what each stage starts from, one-line errors, and a tiny sweep end to end."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from attacks.errors import ConfigError
from benchmark import run as runner
from benchmark.components import build_datamodule, build_model, build_module
from benchmark.runner.cache import Cache
from benchmark.runner.config import compose
from benchmark.runner.planner import make_plan
from benchmark.runner.stages.train import run_train_job

SSL = ["experiment=digits_ssl", "logger=none", "progress=false"]


def plan_of(tmp: Path, *overrides: str):
    cfg = compose([*overrides, f"cache_dir={tmp / 'cache'}", f"results_dir={tmp / 'results'}"])
    return cfg, make_plan(cfg)[0]


def model_state(module) -> dict:
    return {k: v for k, v in module.state_dict().items() if k.startswith("model.")}


def test_commoninit_teacher_and_student_both_start_from_the_common_weights(tmp_path):
    _, plan = plan_of(tmp_path, *SSL)
    common, teacher = plan.stage("digits/common"), plan.stage("digits/teacher")
    ci, ft = plan.stage("digits/commoninit/seed0"), plan.stage("digits/finetune/seed0")
    assert teacher.deps == ["digits/common"] and teacher.job.init_key == common.key
    assert ci.job.teacher_key == common.key and ci.deps == ["digits/common"]
    assert ft.job.teacher_key == teacher.key
    assert common.job.module["_target_"] == "lightning_modules.ssl.SimCLR"
    # the common model's weights in the cache: both the teacher and the CommonInit student start from them
    cache = Cache(tmp_path / "cache")
    dm = build_datamodule(common.job.data)
    torch.manual_seed(7)
    ssl = build_module(common.job, cache, dm)
    cache.put("teacher", common.key, {"kind": "teacher"}, {"state": ssl.state_dict()})
    for stage in (teacher, ci):
        module = build_module(stage.job, cache, dm)
        for k, v in model_state(ssl).items():
            assert torch.equal(module.state_dict()[k], v), f"{stage.id}: {k} is not the common weight"


def test_students_of_the_ssl_encoder_and_daes_are_wired_to_the_common_model(tmp_path):
    _, plan = plan_of(tmp_path, *SSL)
    for name in ("linear_probe", "pgd_at", "trades", "tla", "genaf", "genaf_stage1"):
        assert plan.stage(f"digits/{name}/seed0").job.teacher_key == plan.stage("digits/common").key, name
    crafts = {s.id: s for s in plan.stages if s.kind == "craft"}
    dae = [s for s in crafts.values() if "transfer" not in s.id]
    assert {s.attack["cfg"]["_target_"].rsplit(".", 1)[1] for s in dae} == {
        "FeatureUAP",
        "SSPUniversal",
        "SSP",
        "L4A",
        "AdvEncoderPER",
        "AdvEncoderPAT",
    }
    assert all(s.teacher == "digits/common" for s in dae)
    on = {"transfer_pgd_linf": ["digits/teacher"], "transfer_ti_fgsm_probe": ["digits/linear_probe/seed1000"],
          "transfer_ti_fgsm_substitute": ["digits/scratch/seed1000"]}  # fmt: skip
    transfer = [s for s in crafts.values() if "transfer" in s.id]
    assert transfer and all(s.surrogates == on[s.id.split("/craft/")[1].split("/")[0]] for s in transfer)
    cells = [c for c in plan.cells() if c.entry == "uap_feature"]
    assert cells and all(c.craft in crafts for c in cells)
    models = {c.model for c in cells}
    assert {"digits/common", "digits/teacher", "digits/genaf/seed0", "digits/scratch/seed0"} <= models


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["attack=[uap_feature]", "attack.uap_feature.attack.surrogate=common"], "teacher.common is not set"),
        (["defense=[commoninit]", "attack=[pgd_linf]"], "starts from the common model, but teacher.common"),
        (["attack=[uap_feature]", "attack.uap_feature.attack.surrogate=student"], "valid: common, teacher"),
    ],
)
def test_a_common_model_that_is_not_there_is_one_line(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message) as e:
        plan_of(tmp_path, "logger=none", "defense=[finetune]", *overrides)
    assert "\n" not in str(e.value)


@pytest.fixture()
def checkpoint(tmp_path):
    """A small_cnn classifier's state dict written to a file, as a user's public checkpoint."""
    cfg = compose(["logger=none"])
    dm = build_datamodule(cfg["data"]["digits"])
    torch.manual_seed(3)
    model = build_model(cfg["model"], dm)
    path = tmp_path / "public.pt"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def test_a_checkpoint_file_loads_as_the_teacher_without_training(tmp_path, checkpoint):
    path, state = checkpoint
    _, plan = plan_of(tmp_path, "logger=none", f"++teacher.checkpoint={path}", "defense=[finetune]", "attack=[fgsm]")
    teacher = plan.stage("digits/teacher")
    assert teacher.job.public and teacher.job.checkpoint["path"] == str(path.resolve())
    meta = run_train_job(teacher.job)
    assert meta["epochs"] == 0 and meta["public"] == str(path.resolve()) and 0 <= meta["best_value"] <= 1
    stored = Cache(tmp_path / "cache").tensors("teacher", teacher.key, "state")
    for k, v in state.items():
        assert torch.equal(stored[f"model.{k}"], v), k
    # the student fine-tunes from the file's weights
    student = plan.stage("digits/finetune/seed0")
    dm = build_datamodule(student.job.data)
    module = build_module(student.job, Cache(tmp_path / "cache"), dm)
    assert torch.equal(module.model.state_dict()["backbone.fc.1.weight"], state["backbone.fc.1.weight"])
    # another file is another teacher (the key follows the file's content, not its name)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, path)
    _, again = plan_of(tmp_path, "logger=none", f"++teacher.checkpoint={path}", "defense=[finetune]", "attack=[fgsm]")
    assert again.stage("digits/teacher").key != teacher.key


def test_checkpoint_layouts_module_and_lightning_are_accepted(tmp_path, checkpoint):
    path, state = checkpoint
    wrapped = tmp_path / "lightning.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in state.items()} | {"projection.w": torch.ones(2)}}, wrapped)
    _, plan = plan_of(tmp_path, "logger=none", f"++teacher.checkpoint={wrapped}", "defense=[finetune]", "attack=[fgsm]")
    run_train_job(plan.stage("digits/teacher").job)
    stored = Cache(tmp_path / "cache").tensors("teacher", plan.stage("digits/teacher").key, "state")
    assert torch.equal(stored["model.backbone.classifier.weight"], state["backbone.classifier.weight"])


def test_a_missing_or_mismatched_checkpoint_is_one_line(tmp_path, checkpoint):
    path, state = checkpoint
    base = ["logger=none", "defense=[finetune]", "attack=[fgsm]"]
    cases = {
        tmp_path / "nowhere.pt": "no file at",
        tmp_path / "shapes.pt": r"does not fit the model \(SmallCNN\) read as suite: 1 shape mismatches "
        r"\(e.g. backbone.fc.1.weight: file \(3, 3\), model \(128, 1024\)\)",
        tmp_path
        / "keys.pt": r"\(SmallCNN\) read as suite: 1 of \d+ backbone tensors missing .*; 1 backbone tensors the",
        tmp_path / "code.pt": "is not a weights-only state dict",
    }
    torch.save({**state, "backbone.fc.1.weight": torch.zeros(3, 3)}, tmp_path / "shapes.pt")
    renamed = dict(state)
    renamed["backbone.features.9.weight"] = renamed.pop("backbone.features.0.weight")
    torch.save(renamed, tmp_path / "keys.pt")
    torch.save({"fn": Path}, tmp_path / "code.pt")  # a pickled class: refused by weights_only loading
    for file, message in cases.items():
        with pytest.raises(ConfigError, match=message) as e:
            plan_of(tmp_path, *base, f"++teacher.checkpoint={file}")
        assert "\n" not in str(e.value) and str(e.value).startswith("teacher.checkpoint")


def test_a_checkpoint_of_other_classes_gets_a_fresh_head_and_the_plan_says_so(tmp_path, checkpoint):
    path, state = checkpoint
    other = {**state, "backbone.classifier.weight": torch.zeros(100, 128), "backbone.classifier.bias": torch.zeros(100)}
    torch.save({"state_dict": {f"model.{k}": v for k, v in other.items()}, "epoch": 3}, path)
    base = ["logger=none", f"++teacher.checkpoint={path}", "defense=[finetune]", "attack=[fgsm]"]
    cfg = compose([*base, f"cache_dir={tmp_path / 'cache'}", f"results_dir={tmp_path / 'results'}"])
    plan, notes, _ = make_plan(cfg)
    line = next(n for n in notes if "teacher.checkpoint" in n)
    assert "loaded as suite" in line and "head fresh for the data's 10 classes (the file's has 100 outputs)" in line
    teacher = plan.stage("digits/teacher")
    meta = run_train_job(teacher.job)
    assert meta["checkpoint_report"] in line
    stored = Cache(tmp_path / "cache").tensors("teacher", teacher.key, "state")
    assert torch.equal(stored["model.backbone.fc.1.weight"], state["backbone.fc.1.weight"])
    assert stored["model.backbone.classifier.weight"].shape == (10, 128)
    assert stored["model.backbone.classifier.weight"].abs().sum() > 0  # the fresh head, not the file's zeros
    # the format named as it was detected loads the same tensors: the same key; a format that does not fit the file
    # stops in one line
    _, named = plan_of(tmp_path, *base, "++teacher.checkpoint_format=suite")
    assert named.stage("digits/teacher").key == teacher.key
    with pytest.raises(ConfigError, match=r"^teacher.checkpoint: .* read as timm: .* backbone tensors missing"):
        plan_of(tmp_path, *base, "++teacher.checkpoint_format=timm")


def test_pretrained_timm_weights_bring_their_own_normalization(tmp_path, monkeypatch):
    import timm

    calls = []
    real = timm.create_model

    def create(name, pretrained=False, **kwargs):
        calls.append(pretrained)
        net = real(name, pretrained=False, **kwargs)
        if pretrained:
            net.pretrained_cfg = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
        return net

    monkeypatch.setattr(timm, "create_model", create)
    cfg, plan = plan_of(tmp_path, "logger=none", "model.backbone=resnet18", "++model.pretrained=true",
                        "defense=[finetune]", "attack=[fgsm]")  # fmt: skip
    assert plan.stage("digits/teacher").job.public
    assert True not in calls, "checking and planning download no weights: the teacher's stage does"
    model = build_model(cfg["model"], build_datamodule(cfg["data"]["digits"]))
    assert True in calls
    assert torch.allclose(model.mean.flatten(), torch.tensor([(0.485 + 0.456 + 0.406) / 3]))  # grey input


def test_pretrained_weights_that_cannot_be_had_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no pretrained weights for 'small_cnn'.*teacher.checkpoint=PATH") as e:
        plan_of(tmp_path, "logger=none", "++model.pretrained=true", "defense=[finetune]", "attack=[fgsm]")
    assert "\n" not in str(e.value)


#: digits_ssl in a few seconds: one epoch per stage, two students, four attacks at one budget, 64 examples.
TINY_SSL = [
    *SSL,
    "teacher.common.trainer.max_epochs=1",
    "teacher.trainer.max_epochs=1",
    "defense=[commoninit,finetune]",
    "defense.commoninit.trainer.max_epochs=1",
    "defense.finetune.trainer.max_epochs=1",
    "attack=[pgd_linf,transfer_pgd_linf,uap_feature,advencoder_pat]",
    "attack.advencoder_pat.epsilons=[0.1]",
    "attack.advencoder_pat.attack={surrogate: common, epochs: 1, ngf: 8, batch_size: 64}",
    "attack.pgd_linf.attack.steps=3",
    "attack.transfer_pgd_linf.attack.attack.steps=3",
    "attack.uap_feature.epsilons=[16/255]",
    "attack.uap_feature.attack.epochs=1",
    "eval.n_examples=64",
]


@pytest.mark.slow
def test_a_tiny_ssl_sweep_reports_daes_beside_transfer_and_white_box(tmp_path):
    out = runner.run(compose([*TINY_SSL, f"cache_dir={tmp_path / 'cache'}", f"results_dir={tmp_path / 'res'}"]))
    with (tmp_path / "res" / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["defense"] for r in rows} == {"common", "teacher", "commoninit", "finetune"}
    dae = [r for r in rows if r["attack"] == "uap_feature"]
    assert len(dae) == 4 and all(r["threat_model"] == "agnostic" and r["surrogate"] == "common" for r in dae)
    for defense in ("commoninit", "finetune"):
        group = {r["attack"]: r for r in rows if r["defense"] == defense and r["eps_label"] == "16/255"}
        worst = group["worst_case"]
        assert "uap_feature" in worst["threat_model"] and "transfer_pgd_linf" in worst["threat_model"]
        assert float(worst["robust_acc"]) <= min(float(r["robust_acc"]) for k, r in group.items()) + 1e-9
    patch = [r for r in rows if r["norm"] == "patch"]
    assert {r["attack"] for r in patch} == {"advencoder_pat"} and len(patch) == 4, "a budget group of its own"
    assert all(r["threat_model"] == "agnostic" and r["eps_label"] == "0.1" for r in patch)
    assert all("advencoder_pat" not in r["threat_model"] for r in rows if r["attack"] == "worst_case")
    assert out["stats"]["crafted"] == 3, "the DAEs and the transfer set are crafted once, for every model"
