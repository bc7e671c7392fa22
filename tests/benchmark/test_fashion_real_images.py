"""End to end on real Fashion-MNIST images (the Debian package's files): a few hundred images, one defense, one attack.

The task-transfer pair: a teacher on 300 images of classes 0-4, a `finetune` student on 100 labelled images of
classes 5-9, PGD at 16/255 on the first 200 official test images of classes 5-9. Skipped when the package is not
installed (CI installs it: .ci/run).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import datamodules.fashion as fashion
from benchmark import run as runner
from benchmark.runner.config import compose

SMALL = [
    "experiment=fashion_task",
    "logger=none",
    "progress=false",
    "seeds=[0]",
    "data.fashion_task.source_train_max=300",
    "data.fashion_task.source_val_per_class=20",
    "data.fashion_task.target_val_per_class=10",
    "teacher.trainer.max_epochs=4",
    "defense=[finetune]",
    "defense.finetune.trainer.max_epochs=10",
    "attack=[pgd_linf]",
    "attack.pgd_linf.epsilons=[16/255]",
    "attack.pgd_linf.attack.steps=5",
    "eval.n_examples=200",
    "eval.detection=false",
]


@pytest.mark.slow
@pytest.mark.skipif(not Path(fashion.DEBIAN_DIR).is_dir(), reason="dataset-fashion-mnist is not installed")
def test_a_few_hundred_real_images_end_to_end(tmp_path, one_thread):
    out = runner.run(compose([*SMALL, f"cache_dir={tmp_path / 'cache'}", f"results_dir={tmp_path / 'r'}"]))
    assert out["failed"] == []
    rows = {r.defense: r for r in out["rows"] if r.attack == "pgd_linf"}
    student = rows["finetune"]
    assert student.n_examples == 200 and student.target == "fashion_56789"
    # Five classes (chance 20 %): 100 labels and the teacher's features must give a real classifier, and PGD at
    # 16/255 must take a real share of it away (an attack that did nothing would leave robust == clean).
    assert student.clean_acc > 0.6
    assert student.robust_acc < student.clean_acc - 0.2
    teacher = json.loads(next((tmp_path / "cache" / "teacher").glob("*/meta.json")).read_text())
    assert teacher["best_value"] > 0.6, "the teacher learned its five source classes (source validation accuracy)"
    assert (tmp_path / "r" / "leaderboard.md").read_text().count("One training seed") == 1
