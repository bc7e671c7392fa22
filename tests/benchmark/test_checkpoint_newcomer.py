"""Public checkpoints as a newcomer meets them (issue 33), through `benchmark.run.main`: the documented commands work
as written, `--plan` shows what each file loads, every refusal is one line that names the fix, the head is a choice,
cache keys and results folders follow the tensors' content, the log and `--help` say what happens."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torchvision

import datamodules.fashion as fashion
from benchmark import run as runner
from benchmark.components import build_datamodule, build_model
from benchmark.devtools import checkpoint_layouts as layouts
from benchmark.runner.cache import file_sha256
from benchmark.runner.config import compose
from lightning_modules.checkpoints import load_into, resave
from lightning_modules.classifier import build_classifier

#: The embedded RGB benchmark (Fashion-MNIST as 3 x 32 x 32) needs the Debian package's files.
NEEDS_FASHION = pytest.mark.skipif(not Path(fashion.DEBIAN_DIR).is_dir(), reason="dataset-fashion-mnist not installed")
BASE = ["logger=none", "progress=false", "defense=[finetune]", "attack=[fgsm]", "attack.fgsm.epsilons=[8/255]"]


def main(tmp: Path, capsys, *overrides: str) -> tuple[int, str, str]:
    """`python -m benchmark.run` on a small digits sweep: exit code, stdout, stderr."""
    capsys.readouterr()
    code = runner.main([*BASE, f"cache_dir={tmp / 'cache'}", *overrides])
    out, err = capsys.readouterr()
    return code, out, err


def plan_json(tmp: Path, capsys, *overrides: str) -> dict:
    code, out, err = main(tmp, capsys, *overrides, "--plan-json")
    assert code == 0, err
    return json.loads(out)


def teacher_of(plan: dict) -> dict:
    return next(s for s in plan["stages"] if s["id"].endswith("/teacher"))


def one_line_error(code: int, err: str) -> str:
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("error: ") and "Traceback" not in err
    return err.strip()


@pytest.fixture()
def suite_file(tmp_path) -> Path:
    """The digits experiment's small_cnn classifier, saved as a state dict (a suite file, 10 classes)."""
    cfg = compose(["logger=none"])
    torch.manual_seed(3)
    path = tmp_path / "public.pt"
    torch.save(build_model(cfg["model"], build_datamodule(cfg["data"]["digits"])).state_dict(), path)
    return path


@pytest.fixture
def timm_file(tmp_path) -> Path:
    """timm's resnet10t weights (ImageNet's 1000-class head) saved as a user's downloaded file."""
    torch.manual_seed(1)
    path = tmp_path / "resnet10t.pth"
    torch.save(timm.create_model("resnet10t", num_classes=1000).state_dict(), path)
    return path


# ---- 1. the documented commands work as written -------------------------------------------------------------------
def test_the_documented_pretrained_and_checkpoint_commands_work_without_plus(tmp_path, capsys, suite_file, timm_file):
    weights = timm_file
    documented = ["model.backbone=resnet10t.c3_in1k", "model.pretrained=true", f"model.pretrained_file={weights}"]
    code, out, err = main(tmp_path, capsys, *documented, "--plan")
    assert code == 0, err
    code, out, err = main(tmp_path, capsys, f"teacher.checkpoint={suite_file}", "teacher.checkpoint_format=suite",
                          "teacher.checkpoint_head=fresh", "--plan")  # fmt: skip
    assert code == 0, err


# ---- 2. the plan shows what each file loads ----------------------------------------------------------------------
@NEEDS_FASHION
def test_the_plan_shows_each_files_load_report(tmp_path, capsys):
    path = layouts.solo_learn_file(tmp_path / "byol.ckpt", num_classes=100)
    over = ["experiment=fashion_rgb32", f"teacher.checkpoint={path}"]
    code, out, err = main(tmp_path, capsys, *over, "--plan")
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("fashion_rgb32/teacher: teacher.checkpoint: "))
    assert f"'{path}' loaded as solo-learn: 120 of 120 backbone tensors" in line
    assert "head fresh for the data's 5 classes (the file's has 100 outputs)" in line
    assert "keys of the file not loaded (e.g. " in line
    report = teacher_of(plan_json(tmp_path, capsys, *over))["load_report"]
    assert report["format"] == "solo-learn" and report["matched"] == report["backbone_total"] == 120
    assert report["not_loaded"] > 100 and report["head"].startswith("fresh") and report["line"] in line


def test_timms_weights_from_a_local_file_are_reported_and_recorded_as_the_file(tmp_path, capsys, timm_file):
    from benchmark.records import Job
    from benchmark.runner.stages.train import run_train_job

    weights = timm_file
    over = ["model.backbone=resnet10t.c3_in1k", "model.pretrained=true", f"model.pretrained_file={weights}"]
    code, out, err = main(tmp_path, capsys, *over, "--plan")
    assert code == 0, err
    line = next(x for x in out.splitlines() if x.startswith("digits/teacher: model.pretrained_file: "))
    total = sum(1 for k in timm.create_model("resnet10t").state_dict() if not k.startswith("fc."))
    assert f"'{weights}' loaded as timm (its pretrained weights): {total} of {total} backbone tensors" in line
    assert "head fresh for the data's 10 classes (the file's has 1000 outputs)" in line
    teacher = teacher_of(plan_json(tmp_path, capsys, *over))
    assert teacher["load_report"]["path"] == str(weights)
    meta = run_train_job(Job.from_json(teacher["job"]))  # the job as the plan's JSON holds it
    assert meta["public"] == str(weights) and meta["checkpoint_report"] == teacher["load_report"]["line"]


# ---- 3. a model that does not take the data's images -------------------------------------------------------------
def test_a_vit_for_224_px_on_16_px_data_stops_in_one_line_that_names_the_fix(tmp_path, capsys):
    err = one_line_error(*main(tmp_path, capsys, "model.backbone=vit_tiny_patch16_224", "--plan")[::2])
    assert (
        "does not take the data's 1 x 16 x 16 images (data digits): Input height (16) doesn't match model (224)" in err
    )
    assert "++model.kwargs.img_size=16" in err and "data.digits.image_size=224" in err
    code, _, err = main(tmp_path, capsys, "model.backbone=vit_tiny_patch16_224", "++model.kwargs.img_size=16", "--plan")
    assert code == 0, err  # the fix it names works
    err = one_line_error(*main(tmp_path, capsys, "model=dtn", "--plan")[::2])
    assert "dtn expects 32x32 inputs" in err and "data.digits.image_size=" in err


# ---- 4. files that need unpickling: a re-save that works; random bytes ------------------------------------------
def _resave_command(err: str) -> list[str]:
    tail = err.split("weights_only=False): python -m ")[1]
    module, src, dst = tail.split(",")[0].split()
    return [sys.executable, "-m", module, src, dst]


def test_a_deit_file_with_its_args_is_resaved_by_the_command_the_error_gives(tmp_path, capsys, suite_file):
    state = torch.load(suite_file, weights_only=True)
    deit = tmp_path / "deit.pth"
    torch.save({"model": state, "args": argparse.Namespace(model="small_cnn", lr=5e-4), "epoch": 299}, deit)
    err = one_line_error(*main(tmp_path, capsys, f"teacher.checkpoint={deit}", "--plan")[::2])
    assert "it pickles argparse.Namespace" in err
    command = _resave_command(err)
    assert command[-2:] == [str(deit), "weights.pt"]
    root = Path(__file__).resolve().parents[2]
    subprocess.run([*command[:-1], str(tmp_path / "weights.pt")], check=True, capture_output=True, cwd=root)
    code, out, err = main(tmp_path, capsys, f"teacher.checkpoint={tmp_path / 'weights.pt'}", "--plan")
    assert code == 0, err
    assert "loaded as suite" in out
    resaved = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert resaved.keys() == state.keys() and all(torch.equal(resaved[k], v) for k, v in state.items())


GONE = """
import torch.nn as nn

class Config:
    def __init__(self):
        self.lr = 0.1

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3)
        self.bn1 = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
"""


def test_a_file_whose_classes_no_longer_exist_is_resaved_with_its_tensors(tmp_path):
    (tmp_path / "gone_pkg.py").write_text(GONE)
    sys.path.insert(0, str(tmp_path))
    try:
        import gone_pkg

        net = gone_pkg.Net()
        torch.save({"state_dict": net.state_dict(), "cfg": gone_pkg.Config()}, tmp_path / "ckpt.pth")
        torch.save(net, tmp_path / "model.pth")  # a whole pickled model
        expected = net.state_dict()
    finally:
        sys.path.remove(str(tmp_path))
        del sys.modules["gone_pkg"]
    (tmp_path / "gone_pkg.py").unlink()  # the class is gone
    for name in ("ckpt.pth", "model.pth"):
        with pytest.raises(Exception, match="gone_pkg"):  # what the old hint ran: torch.load(weights_only=False)
            torch.load(tmp_path / name, weights_only=False)
        assert resave(str(tmp_path / name), str(tmp_path / f"{name}.pt")) == len(expected)
        got = torch.load(tmp_path / f"{name}.pt", weights_only=True)
        assert got.keys() == expected.keys() and all(torch.equal(got[k], v) for k, v in expected.items()), name


def test_random_bytes_are_not_offered_a_resave(tmp_path, capsys):
    torch.manual_seed(0)
    for i in range(5):  # most random files used to read as "needs arbitrary unpickling"
        junk = tmp_path / f"junk{i}.bin"
        junk.write_bytes(bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8).tolist()))
        err = one_line_error(*main(tmp_path, capsys, f"teacher.checkpoint={junk}", "--plan")[::2])
        assert "is not a checkpoint file: neither torch.save's" in err and "re-save" not in err, err
    pickled = tmp_path / "plain.pkl"  # a pickle that torch.save did not write
    pickled.write_bytes(__import__("pickle").dumps({"w": [1, 2]}))
    err = one_line_error(*main(tmp_path, capsys, f"teacher.checkpoint={pickled}", "--plan")[::2])
    assert "is not a checkpoint file" in err and "re-save" not in err


def test_a_safetensors_file_is_read(tmp_path, capsys, suite_file):
    from safetensors.torch import save_file

    save_file(torch.load(suite_file, weights_only=True), tmp_path / "public.safetensors")
    code, out, err = main(tmp_path, capsys, f"teacher.checkpoint={tmp_path / 'public.safetensors'}", "--plan")
    assert code == 0 and "loaded as suite" in out, err


# ---- 5. an RGB file for grey data, an ImageNet stem for the CIFAR network -----------------------------------------
def test_an_rgb_file_for_grey_data_names_the_channels_and_the_rgb_benchmark(tmp_path, capsys):
    torch.manual_seed(0)
    torch.save(build_classifier("small_cnn", 10, 3, (0.5,), (0.5,)).state_dict(), tmp_path / "rgb.pt")
    err = one_line_error(*main(tmp_path, capsys, f"teacher.checkpoint={tmp_path / 'rgb.pt'}", "--plan")[::2])
    assert "file (32, 3, 3, 3), model (32, 1, 3, 3)" in err
    assert "the file's network takes 3-channel images, the model 1-channel ones (the data's)" in err
    assert "experiment=fashion_rgb32" in err and "formats:" not in err


def test_an_imagenet_stem_for_the_cifar_resnet_names_the_backbone_to_use(tmp_path):
    from attacks.errors import ConfigError

    path = layouts.torchvision_file(tmp_path / "imagenet.pth")
    with pytest.raises(ConfigError, match=r"ImageNet ResNet's stem \(7x7 conv1\): use model.backbone=resnet18") as e:
        load_into(build_classifier("resnet18_cifar", 10, 3, (0.5,), (0.5,)), str(path))
    assert "\n" not in str(e.value)
    cifar = layouts.torchvision_file(tmp_path / "cifar.pth", cifar_stem=True)
    with pytest.raises(ConfigError, match=r"CIFAR ResNet's stem \(3x3 conv1\): use model=resnet18_cifar"):
        load_into(build_classifier("resnet18", 10, 3, (0.5,), (0.5,)), str(cifar))
    grey = build_classifier("resnet18_cifar", 10, 1, (0.5,), (0.5,))
    with pytest.raises(ConfigError, match=r"3-channel images, the model 1-channel .*; the file has an ImageNet"):
        load_into(grey, str(path))


# ---- 6. the head: a choice, the default stated -------------------------------------------------------------------
def test_the_head_is_loaded_fresh_or_required_as_chosen(tmp_path, capsys, suite_file):
    over = [f"teacher.checkpoint={suite_file}"]
    code, auto, err = main(tmp_path, capsys, *over, "--plan")
    assert code == 0, err
    assert (
        "head loaded (10 classes, taken to be the data's classes in their order; teacher.checkpoint_head=fresh" in auto
    )
    code, fresh, err = main(tmp_path, capsys, *over, "teacher.checkpoint_head=fresh", "--plan")
    assert "head fresh for the data's 10 classes (teacher.checkpoint_head=fresh; the file's has 10 outputs)" in fresh
    keys = {h: teacher_of(plan_json(tmp_path, capsys, *over, f"teacher.checkpoint_head={h}"))["key"]
            for h in ("auto", "fresh", "file")}  # fmt: skip
    assert keys["auto"] == keys["file"] != keys["fresh"], "a fresh head is another teacher"
    state = torch.load(suite_file, weights_only=True)
    other = {**state, "backbone.classifier.weight": torch.zeros(100, 128), "backbone.classifier.bias": torch.zeros(100)}
    torch.save(other, tmp_path / "other.pt")
    err = one_line_error(*main(tmp_path, capsys, f"teacher.checkpoint={tmp_path / 'other.pt'}",
                               "teacher.checkpoint_head=file", "--plan")[::2])  # fmt: skip
    assert "has no head of the model's shape (the file's has 100 outputs)" in err
    assert "teacher.checkpoint_head=fresh or auto" in err
    err = one_line_error(*main(tmp_path, capsys, *over, "teacher.checkpoint_head=keep", "--plan")[::2])
    assert "unknown teacher.checkpoint_head 'keep'; valid: auto, file, fresh" in err


# ---- 7. cache keys and results folders follow the tensors' content ----------------------------------------------
def test_the_key_follows_the_tensors_not_the_format_spelling_nor_the_files_name(tmp_path, capsys):
    net = torchvision.models.resnet18()
    net.conv1 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)  # torchvision's ResNet-18 for the grey digits
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)
    over = ["model=resnet18_cifar", "model.backbone=resnet18"]
    keys = {f: teacher_of(plan_json(tmp_path, capsys, *over, f"teacher.checkpoint={path}",
                                    f"teacher.checkpoint_format={f}"))["key"]
            for f in ("auto", "torchvision", "timm")}  # fmt: skip
    assert len(set(keys.values())) == 1, keys
    renamed = tmp_path / "other_name.pth"
    torch.save(torch.load(path, weights_only=True), renamed)  # torch writes the name into the archive
    assert file_sha256(renamed) != file_sha256(path), "the bytes differ"
    again = teacher_of(plan_json(tmp_path, capsys, *over, f"teacher.checkpoint={renamed}"))["key"]
    assert again == keys["auto"]
    state = torch.load(path, weights_only=True)
    state["layer1.0.conv1.weight"] += 1
    torch.save(state, renamed)
    assert teacher_of(plan_json(tmp_path, capsys, *over, f"teacher.checkpoint={renamed}"))["key"] != again


def test_the_results_folder_differs_with_a_checkpoint_and_follows_its_content(tmp_path, suite_file):
    without = compose(["logger=none"])["results_dir"]
    first = compose(["logger=none", f"teacher.checkpoint={suite_file}"])["results_dir"]
    assert first != without and first.startswith("results/digits/sweeps/teacher.checkpoint-")
    assert compose(["logger=none", f"teacher.checkpoint={suite_file}"])["results_dir"] == first, "reproducible"
    state = torch.load(suite_file, weights_only=True)
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, suite_file)
    assert compose(["logger=none", f"teacher.checkpoint={suite_file}"])["results_dir"] != first, "an edited file"


def test_a_file_changed_after_the_plan_is_not_computed_under_the_plans_key(tmp_path, capsys, suite_file):
    from attacks.errors import ConfigError
    from benchmark.runner.planner import make_plan
    from benchmark.runner.stages.train import run_train_job

    cfg = compose([*BASE, f"cache_dir={tmp_path / 'cache'}", f"teacher.checkpoint={suite_file}"])
    teacher = make_plan(cfg)[0].stage("digits/teacher")
    state = torch.load(suite_file, weights_only=True)
    torch.save({k: v * 2 if v.is_floating_point() else v for k, v in state.items()}, suite_file)
    with pytest.raises(ConfigError, match="holds other tensors than when the run was planned"):
        run_train_job(teacher.job)


# ---- 8. counts that agree, a log that says "loaded", --help -----------------------------------------------------
def test_missing_tensors_are_counted_as_the_matched_ones_are(tmp_path):
    from attacks.errors import ConfigError

    path = layouts.lightly_file(tmp_path / "simclr.ckpt", momentum=False)
    ok = load_into(build_classifier("resnet18", 10, 3, (0.5,), (0.5,)), str(path))
    assert (ok.matched, ok.backbone_total) == (120, 120)
    with pytest.raises(ConfigError, match="read as solo-learn: 120 of 120 backbone tensors missing"):
        load_into(build_classifier("resnet18", 10, 3, (0.5,), (0.5,)), str(path), fmt="solo-learn")


def test_a_loaded_teacher_is_logged_as_loaded_not_trained(tmp_path, capsys, suite_file, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # the console's lines unwrapped
    over = [f"teacher.checkpoint={suite_file}", "defense.finetune.trainer.max_epochs=1", "eval.n_examples=16",
            "eval.detection=false", f"results_dir={tmp_path / 'r'}"]  # fmt: skip
    code, _, err = main(tmp_path, capsys, *over)
    assert code == 0, err
    assert "loading public teacher teacher" in err
    assert "trained 0 teacher(s) and 1 student(s), loaded 1 public teacher(s)" in err
    stats = json.loads((tmp_path / "r" / "run_stats.json").read_text())
    assert stats["teacher_loaded"] == 1 and stats["teacher_trained"] == 0


def test_help_lists_the_checkpoint_options(capsys):
    assert runner.main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("teacher.checkpoint=FILE", "teacher.common.checkpoint=FILE", "teacher.checkpoint_format=",
                   "teacher.checkpoint_head=", "model.pretrained=true", "model.pretrained_file=FILE",
                   "experiment=fashion_rgb32"):  # fmt: skip
        lines = [x for x in out.splitlines() if x.strip().startswith(option)]
        assert len(lines) == 1, option
    assert "auto (the file's when it has the data's number of classes, else fresh; the default)" in out
