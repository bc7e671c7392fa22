"""`make perf-memory`: peak resident memory of the steps that read whole splits, on a fake 224-px pair.

The pair has CIFAR-10 -> STL-10's shape: `--n-source` (default 50,000) native 32x32 uint8 training images (in memory
as torchvision's CIFAR10 holds them, 150 MB); `--n-target` native 96x96 target training images (a tenth more for
validation) and `--n-test` (default 7,200: STL-10's test images of the 9 shared classes) test images; every domain
is resized to 224 px per item by the vision pairs' own transform (`ToUnitImage`). Each step runs in a fresh process
and reports its peak RSS (`ru_maxrss`) and the RSS before the step (imports, data in uint8, model built):

- `datamodule`: build and set up the pair, its fingerprint (labels only);
- `universal`: one fit step of a universal attack (FeatureUAP, 64 images) on the source training split, handed
  over as the runner hands it (`lazy_tensors` where the code has it, else the split stacked as float32);
- `genaf`: Gen-AF's preparation (its robustness-sensitivity probe: PGD copy of the target training split, one
  step, one probe epoch per layer);
- `cell`: one white-box cell of the runner on the evaluation subset (the whole target test split): the model's clean
  predictions and detector (2,000 reference images of the target training split), then PGD (2 steps, L-inf 8/255)
  on the clean-correct examples, scored, with detection scores;
- `cell_randomized`: the same cell on a randomized model (fresh input noise in every pass, 2 draws): every example
  attacked, then scored over the draws;
- `craft`: a transfer cell: PGD crafted on the evaluation subset on one model (a crafted set), then scored on another;
- `tune`: `benchmark.devtools.tune`'s validation pass: clean predictions and a PGD cell on the target validation split.

The data are read as the runner at this checkout reads them (`evaluation_subset` and `validation_split` where the
code has them, else the splits stacked as float32), so the same file measures an older checkout. Eval batch 256 (the
runner's off CUDA). The model is a small CNN with an 8x8 stride-8 stem (`PatchCNN`), so that its activations stay
small next to the data and the peaks show what the data cost.

Run it on an older checkout (the same file) to get the figures before a change. A float32 copy of a split of N
images at 224 px takes N x 602 KB (50,000 images: 30.1 GB), so the older code is measured at smaller N.
Written to results/perf_memory.json (`--out`).
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from attacks.pgd import PGD
from attacks.universal import FeatureUAP
from benchmark.devtools import tune
from benchmark.runner import execute
from benchmark.runner.detection import RepresentationDetector
from benchmark.runner.stages.attack import compute_cell, predict_draws, run_attack
from datamodules.base import Splits, TransferDataModule
from datamodules.vision_pairs import OBJECT_CLASSES, ToUnitImage
from defenses.gen_af import GenAF
from lightning_modules.backbones import TimmStyleClassifier
from lightning_modules.classifier import ImageClassifier

STEPS = ("datamodule", "universal", "genaf", "cell", "cell_randomized", "craft", "tune")
#: The evaluation batch size (`eval.batch_size` off CUDA), the detector's reference images (`eval.detection_reference`).
EVAL_BATCH, DETECTION_REFERENCE = 256, 2000


class NativeImages(Dataset):
    """uint8 HWC images held as a torchvision dataset holds them, turned into float per item by `transform`."""

    def __init__(self, n: int, side: int, seed: int, transform):
        rng = np.random.default_rng(seed)
        self.data = rng.integers(0, 256, size=(n, side, side, 3), dtype=np.uint8)
        self.labels = torch.as_tensor(np.arange(n) % len(OBJECT_CLASSES))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.data[i]), int(self.labels[i])


class FakePair(TransferDataModule):
    """A CIFAR-10 -> STL-10-shaped pair of random images at `image_size` (the sizes are arguments)."""

    name = "fake224"
    class_names = OBJECT_CLASSES
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)

    def __init__(self, n_source: int, n_target: int, n_test: int, image_size: int = 224, **kwargs):
        super().__init__(**kwargs)
        self.n_source, self.n_target, self.n_test = n_source, n_target, n_test
        self.image_shape = (3, image_size, image_size)
        self.transform = ToUnitImage(size=image_size)

    def build_domains(self) -> dict[str, Splits]:
        def domain(sizes, side, seed):
            return Splits(*(NativeImages(m, side, seed + k, self.transform) for k, m in enumerate(sizes)))

        source = (self.n_source, self.n_source // 10, self.n_source // 10)
        target = (self.n_target, self.n_target // 10, self.n_test)
        return {"source": domain(source, 32, 0), "target": domain(target, 96, 10)}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class PatchCNN(TimmStyleClassifier):
    """A model whose activations are small next to the data (an 8x8 stride-8 stem), so the peaks show the data."""

    def __init__(self, num_classes: int = 9):
        super().__init__(32, num_classes)
        self.features = nn.Sequential(nn.Conv2d(3, 16, 8, 8), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU())

    def forward_features(self, x):
        return self.features(x)


class Noisy(nn.Module):
    """A randomized model: fresh input noise in every pass."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model((x + 0.03 * torch.randn_like(x)).clamp(0, 1))

    def features(self, x):
        return self.model.features(x)


def runner_split(dm, split: str):
    """The target test split (the evaluation subset) or validation split as the runner at this checkout reads it."""
    if split == "test" and hasattr(execute, "evaluation_subset"):
        return execute.evaluation_subset(dm, None)
    if split == "val" and hasattr(tune, "validation_split"):
        return tune.validation_split(dm)
    return dm.tensors("target", split)  # before: the split stacked as float32


def detection_reference(dm):
    """The detector's clean reference images as the runner at this checkout reads them."""
    if hasattr(execute, "evaluation_subset"):  # changed with it
        x, y = dm.lazy_tensors("target", "train")
        return x[:DETECTION_REFERENCE], y[:DETECTION_REFERENCE]
    return dm.tensors("target", "train", DETECTION_REFERENCE)


def run_cell(step: str, model: nn.Module, dm) -> None:
    """One attack cell as the runner computes it (see the module docstring)."""
    cpu = torch.device("cpu")
    x, y = runner_split(dm, "val" if step == "tune" else "test")
    randomized = step == "cell_randomized"
    if randomized:
        model = Noisy(model)
    common = {"randomized": randomized, "batch_size": EVAL_BATCH, "device": cpu, "seed": 0}
    pred = predict_draws(model, x, 2 if randomized else 1, EVAL_BATCH, cpu)
    if step == "tune":  # no detector
        compute_cell(PGD(8 / 255, steps=2), model, x, y, pred, **common)
        return
    detector = RepresentationDetector(model.features, *detection_reference(dm), EVAL_BATCH, cpu)
    common.update(detector=detector, score_clean=detector.scores(x, pred[0]))
    x_adv = None
    if step == "craft":
        torch.manual_seed(1)
        surrogate = copy.deepcopy(model)
        for q in surrogate.parameters():
            q.data.add_(0.01 * torch.randn_like(q))
        x_adv, _ = run_attack(PGD(8 / 255, steps=2, early_stop=False), surrogate, x, y, EVAL_BATCH, cpu)
    attack = PGD(8 / 255, steps=2, early_stop=not randomized)
    compute_cell(attack, model, x, y, pred, x_adv=x_adv, **common)


def run_step(step: str, n_source: int, n_target: int, n_test: int) -> dict:
    torch.manual_seed(0)
    model = ImageClassifier(PatchCNN(), (0.5,) * 3, (0.5,) * 3).eval()
    dm = FakePair(n_source, n_target, n_test)
    before = rss_mb()
    start = time.perf_counter()
    dm.setup()
    dm.fingerprint()
    if step == "universal":
        attack = FeatureUAP(8 / 255, epochs=1, batch_size=64, max_examples=64)  # one fit step
        runner_way = getattr(dm, "lazy_tensors", None) or dm.tensors
        attack.attacker_data = runner_way("source", "train")
        attack.fitted(model, "cpu")
    elif step == "genaf":
        module = GenAF(model, teacher_state=model.state_dict(), probe_steps=1, probe_epochs=1, probe_batch_size=64)
        module.prepare(dm)
    elif step in ("cell", "cell_randomized", "craft", "tune"):
        run_cell(step, model, dm)
    sizes = {"n_source": n_source, "n_target": n_target, "n_test": n_test}
    return {"step": step, **sizes, "rss_before_mb": round(before, 1), "peak_mb": round(peak_mb(), 1),
            "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-source", type=int, default=50_000)
    parser.add_argument("--n-target", type=int, default=5_000)
    parser.add_argument("--n-test", type=int, default=7_200)
    parser.add_argument("--steps", nargs="+", default=list(STEPS), choices=STEPS)
    parser.add_argument("--step", choices=STEPS, help=argparse.SUPPRESS)  # one step, in this process
    parser.add_argument("--out", default="results/perf_memory.json")
    args = parser.parse_args(argv)
    if args.step:
        print(json.dumps(run_step(args.step, args.n_source, args.n_target, args.n_test)))
        return 0
    rows = []
    for step in args.steps:
        sizes = ["--n-source", str(args.n_source), "--n-target", str(args.n_target), "--n-test", str(args.n_test)]
        cmd = [sys.executable, "-m", "benchmark.devtools.memory", "--step", step, *sizes]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode:
            rows.append({"step": step, "n_source": args.n_source, "error": proc.stderr.strip().splitlines()[-1]})
        else:
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"torch_threads": torch.get_num_threads(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
