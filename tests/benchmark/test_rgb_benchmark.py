"""The embedded RGB benchmark (`experiment=fashion_rgb32`: Fashion-MNIST as 3 x 32 x 32 with resnet18_cifar) served
by a public checkpoint written the way solo-learn writes one, end to end through `benchmark.run.main`. Skipped when
the Debian package dataset-fashion-mnist is not installed (CI installs it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import datamodules.fashion as fashion
from benchmark import run as runner
from benchmark.devtools import checkpoint_layouts as layouts
from benchmark.runner.cache import Cache
from benchmark.runner.config import compose

pytestmark = pytest.mark.skipif(not Path(fashion.DEBIAN_DIR).is_dir(), reason="dataset-fashion-mnist not installed")

#: The experiment shortened: one epoch per student, 16 test images, 2 PGD steps.
SHORT = [
    "experiment=fashion_rgb32",
    "logger=none",
    "progress=false",
    "launcher=inline",
    "defense.finetune.trainer.max_epochs=1",
    "defense.freeze.trainer.max_epochs=1",
    "attack.fgsm.epsilons=[8/255]",
    "attack.pgd_linf.attack.steps=2",
    "eval.n_examples=16",
]


def test_the_pair_is_the_grey_images_resized_and_copied_into_three_channels():
    grey = fashion.FashionTask(source_train_max=50, source_val_per_class=2, target_val_per_class=2)
    rgb = fashion.FashionTask(source_train_max=50, source_val_per_class=2, target_val_per_class=2, channels=3,
                              image_size=32)  # fmt: skip
    assert grey.image_shape == (1, 28, 28) and rgb.image_shape == (3, 32, 32)
    assert rgb.target_name == "fashion_56789_rgb32" and grey.target_name == "fashion_56789"
    g, c = grey.splits("target").test, rgb.splits("target").test
    assert c.images.dtype == torch.uint8 and c.images.shape[1:] == (3, 32, 32)
    assert torch.equal(c.images[:, 0], c.images[:, 2]), "the same grey image in each channel"
    resized = torch.nn.functional.interpolate(g.images[:8], size=(32, 32), mode="bilinear", align_corners=False)
    assert (c.batch(torch.arange(8))[:, :1] - resized.clamp(0, 1)).abs().max() <= 0.5 / 255 + 1e-6
    assert torch.equal(g.labels, c.labels) and grey.fingerprint() != rgb.fingerprint()
    with pytest.raises(Exception, match="channels must be 1"):
        fashion.FashionTask(channels=2)


@pytest.mark.slow
def test_a_solo_learn_checkpoint_is_the_teacher_of_the_rgb_benchmark_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    path = layouts.solo_learn_file(tmp_path / "byol-cifar10.ckpt", num_classes=10)  # BYOL, a CIFAR-10 probe
    over = [*SHORT, f"teacher.checkpoint={path}", f"cache_dir={tmp_path / 'cache'}"]
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert runner.main([*over, "--plan"]) == 0
    plan_out = capsys.readouterr().out
    assert "fashion_rgb32/teacher: teacher.checkpoint: " in plan_out
    assert "loaded as solo-learn: 120 of 120 backbone tensors; head fresh for the data's 5 classes" in plan_out
    assert runner.main(over) == 0
    err = capsys.readouterr().err
    assert "loaded 1 public teacher(s)" in err and "trained 0 teacher(s) and 2 student(s)" in err
    folder = Path(compose(over)["results_dir"])
    assert folder.parts[:3] == ("results", "fashion_rgb32", "sweeps"), "a run with a checkpoint: its own folder"
    rows = (folder / "results.csv").read_text()
    assert "fashion_56789_rgb32" in rows and ",finetune," in rows and ",freeze," in rows
    stats = json.loads((folder / "run_stats.json").read_text())
    assert stats["teacher_loaded"] == 1 and stats["student_trained"] == 2
    assert set(stats["cpu_seconds_by_kind"]) == {"train", "attack/fgsm", "attack/pgd_linf"}
    # the teacher is the file's network: its backbone tensors, a fresh 5-class head
    plan = json.loads((folder / "plan.json").read_text())
    teacher = next(s for s in plan["stages"] if s["id"] == "fashion_rgb32/teacher")
    state = Cache(tmp_path / "cache").tensors("teacher", teacher["key"], "state")
    saved = torch.load(path, weights_only=True)["state_dict"]
    assert torch.equal(state["model.backbone.layer4.1.conv2.weight"], saved["backbone.layer4.1.conv2.weight"])
    assert state["model.backbone.fc.weight"].shape == (5, 512)
