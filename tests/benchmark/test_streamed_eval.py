"""Real image sizes: a cell streams the evaluation subset (uint8 images made float a batch at a time) and its
adversarial examples (scored a window at a time as they are made, or kept in a file), with the numbers of the cell
computed on x and x' held whole, as before."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from attacks.base import attack_mode
from attacks.pgd import PGD
from benchmark.runner.detection import RepresentationDetector
from benchmark.runner.stages.attack import compute_cell, predict_draws, run_attack
from datamodules.base import ImageFile, LabeledTensors, LazyImages

CPU = torch.device("cpu")
BS = 64


class Reads(LabeledTensors):
    """uint8 images that record how many rows each read asks for."""

    def __init__(self, images, labels):
        super().__init__(images, labels)
        self.sizes = []

    def batch(self, index):
        self.sizes.append(torch.as_tensor(index).numel())
        return super().batch(index)


class Noisy(nn.Module):
    """A randomized model: fresh input noise on every pass, its features too."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x):
        return self.classifier(x + 0.05 * torch.randn_like(x))

    def features(self, x):
        return self.classifier.features(x + 0.05 * torch.randn_like(x))


def _subset(digits, n: int = 300):
    """digits' first n target test images as uint8 read on access, the same images as one float tensor, labels."""
    x, y = digits.test_tensors("target", n)
    images = (x * 255).round().to(torch.uint8)
    data = Reads(images, y)
    return LazyImages(data), images.float() / 255, y, data


def _whole(attack, model, x, y, pred_clean, randomized: bool, seed: int, detector=None, x_adv=None):
    """The cell as it was computed with x and x' held whole: x' = x, the attacked batches written into it, then K
    passes over all of x', then the detector's scores of x'."""
    torch.manual_seed(seed)
    if x_adv is None:
        x_adv = x.clone()
        idx = torch.arange(len(x)) if randomized else (pred_clean[0] == y).nonzero().flatten()
        for i in range(0, len(idx), BS):
            b = idx[i : i + BS]
            x_adv[b] = attack(model, x[b], y[b]).float()
    with torch.no_grad(), attack_mode(model):
        passes = [torch.cat([model(x_adv[i : i + BS]).argmax(1) for i in range(0, len(x), BS)]) for _ in pred_clean]
    pred_adv = torch.stack(passes)
    return x_adv, pred_adv, None if detector is None else detector.scores(x_adv, pred_adv[0])


@pytest.mark.parametrize("randomized", [False, True], ids=["deterministic", "randomized"])
def test_a_streamed_cell_is_the_cell_computed_on_the_whole_subset(digits, digits_classifier, randomized):
    lazy, whole, y, data = _subset(digits)
    base = copy.deepcopy(digits_classifier).eval()
    model = Noisy(base) if randomized else base
    attack = PGD(0.1, steps=3, early_stop=not randomized)  # random start: the order of random draws matters
    embed = model.features if randomized else base.features
    ref_x, ref_y = digits.tensors("target", "train", 100)
    torch.manual_seed(1)
    pred_clean = predict_draws(model, whole, 3 if randomized else 1, BS, CPU)
    detector = RepresentationDetector(embed, ref_x, ref_y, BS, CPU)

    data.sizes.clear()
    common = {"randomized": randomized, "batch_size": BS, "device": CPU, "seed": 0, "detector": detector}
    out, cost = compute_cell(attack, model, lazy, y, pred_clean, **common)
    _, pred_adv, scores = _whole(attack, model, whole, y, pred_clean, randomized, 0, detector)

    assert torch.equal(out["pred_adv"], pred_adv) and torch.equal(out["score_adv"], scores)
    attacked = len(y) if randomized else int((pred_clean[0] == y).sum())
    assert cost["n_attacked"] == attacked and 0 < attacked < len(y) + randomized
    assert out["changed"].any(), "the attack must change predictions for the comparison to mean much"
    # never a float copy of the subset: each image read once, at most a batch at a time
    assert max(data.sizes) <= BS and sum(data.sizes) == len(y)


def test_a_crafted_set_is_kept_in_a_file_and_scored_as_the_whole_tensor(digits, digits_classifier, tmp_path):
    lazy, whole, y, data = _subset(digits)
    model = copy.deepcopy(digits_classifier).eval()
    attack = PGD(0.1, steps=3, early_stop=False)
    torch.manual_seed(0)
    crafted, cost = run_attack(attack, model, lazy, y, BS, CPU, path=tmp_path / "x_adv.npy")
    x_adv, _, _ = _whole(attack, model, whole, y, torch.zeros(1, len(y), dtype=torch.long), True, 0)

    assert isinstance(crafted.dataset, ImageFile) and cost["n_attacked"] == len(y)
    assert np.array_equal(np.load(tmp_path / "x_adv.npy"), x_adv.numpy()), "the file holds x' as NumPy reads it"
    assert torch.equal(crafted[torch.arange(len(y))], x_adv)

    pred_clean = predict_draws(model, whole, 1, BS, CPU)
    data.sizes.clear()
    out, _ = compute_cell(attack, model, lazy, y, pred_clean, randomized=False, batch_size=BS, device=CPU, seed=0,
                          x_adv=LazyImages(ImageFile.open(tmp_path / "x_adv.npy")))  # fmt: skip
    assert torch.equal(out["pred_adv"], _whole(attack, model, whole, y, pred_clean, False, 0, x_adv=x_adv)[1])
    assert max(data.sizes) <= BS


def test_a_crafted_set_of_another_size_is_refused(digits, digits_classifier):
    from attacks.base import AttackConstraintError

    lazy, whole, y, _ = _subset(digits, 40)
    model = copy.deepcopy(digits_classifier).eval()
    pred = predict_draws(model, whole, 1, BS, CPU)
    with pytest.raises(AttackConstraintError, match="x_adv has 39 examples, expected 40"):
        compute_cell(PGD(0.1), model, lazy, y, pred, randomized=False, batch_size=BS, device=CPU, seed=0,
                     x_adv=whole[:39])  # fmt: skip
