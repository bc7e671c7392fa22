"""Tests of the paper-1 dataset pairs on tiny fake files in each dataset's native format.

The files are written exactly as torchvision's MNIST, USPS, SVHN, CIFAR10 and STL10 classes read them, and
the pairs load them through those real classes, so a change in torchvision's formats shows up here.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar
import torchvision.datasets.stl10
import torchvision.datasets.svhn
from fake_data import MAPS, N_EXTRA, skip_md5, write_all
from torchvision.datasets import MNIST

from attacks.errors import ConfigError
from datamodules import Cifar10Stl10, MnistUsps, Stl10Cifar10, SvhnMnist
from datamodules.base import labels_of
from datamodules.vision_pairs import DATASETS, ToUnitImage, open_dataset

PAIRS = [
    (MnistUsps, "mnist", "usps"),
    (SvhnMnist, "svhn", "mnist"),
    (Cifar10Stl10, "cifar10", "stl10"),
    (Stl10Cifar10, "stl10", "cifar10"),
]
PAIR_IDS = [p[0].name for p in PAIRS]


@pytest.fixture(scope="module")
def fake(tmp_path_factory) -> tuple[str, dict]:
    """One data root holding all five fake datasets, and what was written."""
    root = str(tmp_path_factory.mktemp("data"))
    return root, write_all(root)


@pytest.fixture(autouse=True)
def no_md5(monkeypatch):
    skip_md5(monkeypatch)


def expected_labels(raw: np.ndarray, key: str) -> np.ndarray:
    mapped = np.asarray(MAPS[key])[raw]
    return mapped[mapped >= 0]


@pytest.mark.parametrize("pair, source, target", PAIRS, ids=PAIR_IDS)
def test_shapes_sizes_and_labels(fake, pair, source, target):
    root, written = fake
    dm = pair(root=root, batch_size=4, eval_batch_size=8)
    assert dm.image_shape == (3, 32, 32) and len(dm.mean) == len(dm.std) == 3
    assert dm.num_classes == (10 if pair in (MnistUsps, SvhnMnist) else 9)
    for domain, key in (("source", source), ("target", target)):
        splits = dm.splits(domain)
        kept_train = expected_labels(written[key]["train"][1], key)
        kept_test = expected_labels(written[key]["test"][1], key)
        assert len(splits.train) + len(splits.val) == len(kept_train)
        assert len(splits.val) == round(0.1 * len(kept_train))
        assert len(splits.test) == len(kept_test)
        # The test split keeps the file order, so its labels are the mapped raw labels in order.
        assert labels_of(splits.test).tolist() == kept_test.tolist()
        assert sorted(labels_of(splits.train).tolist() + labels_of(splits.val).tolist()) == sorted(kept_train)
        for ds in splits.as_dict().values():
            image, label = ds[0]
            assert image.dtype == torch.float32 and tuple(image.shape) == (3, 32, 32)
            assert image.min() >= 0.0 and image.max() <= 1.0
            assert label == int(labels_of(ds)[0]) and 0 <= label < dm.num_classes
        x, y = dm.test_tensors(domain, n=5)
        assert x.shape == (5, 3, 32, 32) and y.tolist() == kept_test[:5].tolist()


def test_train_and_val_are_disjoint(fake):
    dm = Cifar10Stl10(root=fake[0])
    for domain in ("source", "target"):
        s = dm.splits(domain)
        assert s.train.dataset is s.val.dataset
        assert not set(s.train.indices) & set(s.val.indices)


def test_cifar_stl_mapping(fake):
    root, written = fake
    dm = Cifar10Stl10(root=root)
    cifar, stl = dm.splits("source").test, dm.splits("target").test
    cifar_raw, stl_raw = written["cifar10"]["test"][1], written["stl10"]["test"][1]
    # Frogs (CIFAR 6) and monkeys (STL 7) are gone; nothing maps outside the 9 shared classes.
    assert len(cifar) == int((cifar_raw != 6).sum()) and len(stl) == int((stl_raw != 7).sum())
    assert set(labels_of(cifar).tolist()) == set(labels_of(stl).tolist()) == set(range(9))
    # A CIFAR horse (7) is shared class 6; an STL car (label file value 3, index 2) is shared class 1.
    horse = int(np.flatnonzero(cifar_raw == 7)[0])
    assert cifar.labels[cifar.indices.tolist().index(horse)] == 6
    car = int(np.flatnonzero(stl_raw == 2)[0])
    assert stl.labels[stl.indices.tolist().index(car)] == 1
    assert dm.class_names[1] == "automobile" and dm.class_names[6] == "horse"
    assert "[0,1,2,3,4,5,-1,6,7,8]" in dm.label_mapping_doc and "[0,2,1,3,4,5,6,-1,7,8]" in dm.label_mapping_doc
    # The reverse pair uses the same per-dataset mappings.
    rev = Stl10Cifar10(root=root)
    assert labels_of(rev.splits("source").test).tolist() == labels_of(stl).tolist()
    assert labels_of(rev.splits("target").test).tolist() == labels_of(cifar).tolist()


def test_pixels_land_where_expected(fake):
    root, written = fake
    mnist_usps = MnistUsps(root=root)
    # MNIST: the 28x28 image sits at offset 2 inside a zero 32x32 frame, identical in all 3 channels.
    raw = torch.from_numpy(written["mnist"]["test"][0][3]).float() / 255
    image, _ = mnist_usps.splits("source").test[3]
    frame = torch.zeros(32, 32)
    frame[2:30, 2:30] = raw
    assert torch.allclose(image, frame.expand(3, 32, 32))
    # USPS: v in [-1, 1] -> uint8 (v + 1) / 2 * 255; a white 16x16 image resized to 28x28 and padded by 2.
    image, _ = mnist_usps.splits("target").test[0]
    frame = torch.zeros(3, 32, 32)
    frame[:, 2:30, 2:30] = 1.0
    assert torch.allclose(image, frame)
    # SVHN: X[h, w, c, n] -> image[c, h, w], no resizing.
    image, _ = SvhnMnist(root=root).splits("source").test[4]
    assert torch.allclose(image, torch.from_numpy(written["svhn"]["test"][0][..., 4]).permute(2, 0, 1).float() / 255)
    # CIFAR-10: rows of R, G, B planes of 32x32, row-major (compare the first kept image with its raw row).
    cifar = Cifar10Stl10(root=root).splits("source").test
    image, _ = cifar[0]
    raw = written["cifar10"]["test"][0][int(cifar.indices[0])]
    assert torch.allclose(image, torch.from_numpy(raw).float() / 255)


def test_stl_pixels_are_not_transposed(fake):
    # STL-10 is column-major on disk; the left-bright / right-dark test image 0 must stay so after the 96 -> 32
    # resize. Opened without the label mapping so the check does not depend on image 0's fake label.
    ds = open_dataset("stl10", fake[0], "test", False, ToUnitImage(resize=DATASETS["stl10"].resize))
    image, _ = ds[0]
    assert tuple(image.shape) == (3, 32, 32)
    assert torch.allclose(image[:, :, :14], torch.tensor(200 / 255), atol=1e-4)
    assert torch.allclose(image[:, :, 18:], torch.tensor(20 / 255), atol=1e-4)


def test_target_train_per_class(fake):
    root, _ = fake
    full = Cifar10Stl10(root=root)
    few = Cifar10Stl10(root=root, target_train_per_class=2)
    available = torch.bincount(labels_of(full.splits("target").train), minlength=9)
    kept = torch.bincount(labels_of(few.splits("target").train), minlength=9)
    assert kept.tolist() == available.clamp(max=2).tolist()
    # The source domain, the target val and test splits are untouched.
    assert few.sizes()["source/train"] == full.sizes()["source/train"]
    assert few.sizes()["target/val"] == full.sizes()["target/val"]


def test_svhn_extra_joins_the_training_pool(fake):
    root, _ = fake
    plain, extra = SvhnMnist(root=root), SvhnMnist(root=root, svhn_extra=True)
    n_plain = len(plain.splits("source").train) + len(plain.splits("source").val)
    n_extra = len(extra.splits("source").train) + len(extra.splits("source").val)
    assert n_extra == n_plain + N_EXTRA
    assert extra.source_name == "svhn+extra"
    assert extra.fingerprint() != plain.fingerprint()


@pytest.mark.parametrize("pair", [p[0] for p in PAIRS], ids=PAIR_IDS)
def test_fingerprint_is_stable(fake, pair):
    root, _ = fake
    assert pair(root=root).fingerprint() == pair(root=root).fingerprint()
    assert pair(root=root, split_seed=1).fingerprint() != pair(root=root).fingerprint()


def test_labels_are_read_without_loading_images(fake, monkeypatch):
    dm = MnistUsps(root=fake[0])
    dm.setup()

    def no_images(self, index):
        raise AssertionError("an image was loaded")

    monkeypatch.setattr(MNIST, "__getitem__", no_images)
    monkeypatch.setattr(torchvision.datasets.USPS, "__getitem__", no_images)
    for domain in ("source", "target"):
        for ds in dm.splits(domain).as_dict().values():
            assert len(labels_of(ds)) == len(ds)
    dm.fingerprint()
    dm.describe()


def test_images_stay_uint8_in_memory(fake):
    dm = Stl10Cifar10(root=fake[0])
    for domain in ("source", "target"):
        base = dm.splits(domain).test.base
        assert base.data.dtype == np.uint8


@pytest.mark.parametrize(
    "pair, folder",
    [
        (MnistUsps, os.path.join("MNIST", "raw")),
        (SvhnMnist, "train_32x32.mat"),
        (Cifar10Stl10, "cifar-10-batches-py"),
        (Stl10Cifar10, "stl10_binary"),
    ],
    ids=PAIR_IDS,
)
def test_missing_source_data_is_a_config_error(tmp_path, pair, folder):
    with pytest.raises(ConfigError) as info:
        pair(root=str(tmp_path)).setup()
    message = str(info.value)
    assert "\n" not in message
    assert os.path.join(str(tmp_path), folder) in message
    assert "data.download=true" in message


@pytest.mark.parametrize(
    "pair, missing, named",
    [
        (MnistUsps, "usps", "usps.bz2"),
        (SvhnMnist, "mnist", os.path.join("MNIST", "raw")),
        (Cifar10Stl10, "stl10", "stl10_binary"),
        (Stl10Cifar10, "cifar10", "cifar-10-batches-py"),
    ],
    ids=PAIR_IDS,
)
def test_missing_target_data_is_a_config_error(fake, tmp_path, pair, missing, named):
    # A root with everything but the target dataset's files (symlinks to the fake ones).
    prefix = {"usps": "usps", "mnist": "MNIST", "stl10": "stl10_binary", "cifar10": "cifar-10-batches-py"}[missing]
    for entry in os.listdir(fake[0]):
        if not entry.startswith(prefix):
            os.symlink(os.path.join(fake[0], entry), tmp_path / entry)
    with pytest.raises(ConfigError, match="data.download=true") as info:
        pair(root=str(tmp_path)).setup()
    assert os.path.join(str(tmp_path), named) in str(info.value)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="val_fraction"):
        MnistUsps(val_fraction=1.0)
    with pytest.raises(ConfigError, match="image_size"):
        MnistUsps(image_size=4)


def test_other_image_size(fake):
    dm = Cifar10Stl10(root=fake[0], image_size=24)
    assert dm.image_shape == (3, 24, 24)
    for domain in ("source", "target"):
        image, _ = dm.splits(domain).train[0]
        assert tuple(image.shape) == (3, 24, 24)
