"""timm names with pretrained tags, and timm's pretrained weights from a local file (no network): the weights land
in the teacher, the file's hash (not its path) is in the cache key, bad names and files are one line."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from attacks.errors import ConfigError
from benchmark.runner.cache import Cache
from benchmark.runner.config import compose
from benchmark.runner.planner import make_plan
from benchmark.runner.stages.train import run_train_job
from lightning_modules.classifier import build_classifier

TAGGED = "resnet10t.c3_in1k"


def plan_of(tmp: Path, *overrides: str):
    base = ["logger=none", "defense=[finetune]", "attack=[fgsm]"]
    cfg = compose([*base, *overrides, f"cache_dir={tmp / 'cache'}", f"results_dir={tmp / 'results'}"])
    return make_plan(cfg)[0]


def test_names_with_pretrained_tags_are_accepted_and_bad_tags_are_one_line():
    assert build_classifier(TAGGED, 10, 3, (0.5,), (0.5,)).backbone.num_classes == 10
    with pytest.raises(ConfigError, match=r"unknown model 'resnet10t.no_such_tag'.*pretrained tag") as e:
        build_classifier("resnet10t.no_such_tag", 10, 3, (0.5,), (0.5,))
    assert "\n" not in str(e.value)


def test_pretrained_weights_from_a_local_file_and_its_hash_in_the_key(tmp_path):
    torch.manual_seed(1)
    weights = timm.create_model("resnet10t", num_classes=1000).state_dict()
    file = tmp_path / "resnet10t.pth"
    torch.save(weights, file)
    over = [f"model.backbone={TAGGED}", "++model.pretrained=true", f"++model.pretrained_file={file}"]
    plan = plan_of(tmp_path, *over)
    teacher = plan.stage("digits/teacher")
    assert teacher.job.public
    meta = run_train_job(teacher.job)
    state = Cache(tmp_path / "cache").tensors("teacher", teacher.key, "state")
    assert torch.equal(state["model.backbone.layer2.0.conv1.weight"], weights["layer2.0.conv1.weight"])
    assert state["model.backbone.fc.weight"].shape[0] == 10 and meta["epochs"] == 0  # a fresh head for the digits
    # grey digits into an RGB stem: timm sums the file's first conv over its input channels
    stem = weights["conv1.0.weight"].sum(1, keepdim=True)
    assert torch.allclose(state["model.backbone.conv1.0.weight"], stem)
    moved = tmp_path / "elsewhere.pth"
    file.rename(moved)
    again = plan_of(tmp_path, *over[:2], f"++model.pretrained_file={moved}").stage("digits/teacher")
    assert again.key == teacher.key  # the same bytes elsewhere: the same stage
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in weights.items()}, moved)
    changed = plan_of(tmp_path, *over[:2], f"++model.pretrained_file={moved}").stage("digits/teacher")
    assert changed.key != teacher.key


def test_a_pretrained_file_that_is_not_there_or_without_pretrained_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match="model.pretrained_file: no file at") as e:
        plan_of(tmp_path, "model.backbone=resnet10t", "++model.pretrained=true", "++model.pretrained_file=/no/such")
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="set model.pretrained=true as well"):
        plan_of(tmp_path, "model.backbone=resnet10t", f"++model.pretrained_file={tmp_path}")
