"""The embedded default pair: fixed, disjoint splits of [0, 1] images, few target labels, a real domain shift."""

from __future__ import annotations

import torch

from datamodules.base import labels_of
from datamodules.digits import DigitsShift, rotate


def test_shapes_ranges_and_sizes(digits):
    sizes = digits.sizes()
    assert sizes["target/train"] == sizes["target/val"] == 100, "10 labelled target images per class"
    assert sum(sizes.values()) == 1797
    for domain in ("source", "target"):
        x, y = digits.test_tensors(domain)
        assert x.shape[1:] == (1, 16, 16) and x.dtype == torch.float32
        assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
        assert set(y.tolist()) == set(range(10))
    assert labels_of(digits.splits("target").train).bincount().tolist() == [10] * 10


def test_splits_are_disjoint_and_deterministic(digits):
    other = DigitsShift()
    assert other.fingerprint() == digits.fingerprint()
    assert DigitsShift(split_seed=1).fingerprint() != digits.fingerprint()
    xs = [digits.splits(d).as_dict()[s].images for d in ("source", "target") for s in ("train", "val", "test")]
    flat = torch.cat([x.flatten(1) for x in xs])
    # No image appears in two splits (up to exact duplicates in the raw data, which are few).
    assert len(torch.unique(flat, dim=0)) >= len(flat) - 5


def test_target_is_the_rotated_source_domain():
    upright = torch.zeros(1, 1, 16, 16)
    upright[0, 0, 2:14, 7:9] = 1.0  # a vertical bar
    turned = rotate(upright, 90)
    assert turned[0, 0, 7:9, 2:14].mean() > 0.9 and turned[0, 0, 2:6, 7:9].mean() < 0.1
    dm = DigitsShift(rotation_deg=0)
    dm.setup()
    # Without rotation, the target images are plain digits, like the source ones.
    assert abs(float(dm.test_tensors("target")[0].mean() - dm.test_tensors("source")[0].mean())) < 0.02
