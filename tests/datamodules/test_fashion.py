"""The Fashion-MNIST loader and pairs: on tiny IDX files the tests write, and on the real files when installed."""

from __future__ import annotations

import struct
from pathlib import Path

import fake_data
import numpy as np
import pytest
import torch

import datamodules.fashion as fashion
from attacks.errors import ConfigError
from datamodules.base import labels_of
from datamodules.fashion import FashionShift, FashionTask, find_files, load_fashion, read_idx

PER_CLASS_TRAIN, PER_CLASS_TEST = 25, 6  # at most 251 images per file: an image's value is its index


def write_fashion(folder: Path, gz: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return fake_data.write_fashion(str(folder), PER_CLASS_TRAIN, PER_CLASS_TEST, gz=gz)


@pytest.fixture
def tiny(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(fashion, "DEBIAN_DIR", str(tmp_path / "no-debian"))
    write_fashion(tmp_path / "root")
    return tmp_path / "root"


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files_round_trip(tmp_path, gz):
    written = write_fashion(tmp_path, gz=gz)
    loaded = load_fashion(str(tmp_path), debian_dir=str(tmp_path / "none"))
    for split in ("train", "test"):
        assert np.array_equal(loaded[split][0], written[split][0])
        assert np.array_equal(loaded[split][1], written[split][1]) and loaded[split][1].dtype == np.int64


def test_bad_idx_files_are_one_line_errors(tmp_path):
    (tmp_path / "not-idx").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x02ab")  # float type code
    with pytest.raises(ConfigError, match="not an IDX file of unsigned bytes"):
        read_idx(tmp_path / "not-idx")
    (tmp_path / "short").write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">i", 5) + b"abc")
    with pytest.raises(ConfigError, match=r"header says \(5,\) \(5 bytes\), the file holds 3"):
        read_idx(tmp_path / "short")


def test_files_are_looked_for_in_root_then_the_debian_folder(tmp_path):
    write_fashion(tmp_path / "debian")
    write_fashion(tmp_path / "root" / "FashionMNIST" / "raw", gz=False)  # torchvision's layout
    found = find_files(str(tmp_path / "root"), debian_dir=str(tmp_path / "debian"))
    assert found["train"][0].parent == tmp_path / "root" / "FashionMNIST" / "raw"
    assert find_files(str(tmp_path / "empty"), debian_dir=str(tmp_path / "debian"))["test"][1].parent == (
        tmp_path / "debian"
    )
    assert find_files(None, debian_dir=str(tmp_path / "debian"))["test"][1].name == "t10k-labels-idx1-ubyte.gz"


def test_without_the_files_one_line_names_both_ways(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion, "DEBIAN_DIR", str(tmp_path / "no-debian"))
    with pytest.raises(ConfigError) as info:
        FashionTask(root=str(tmp_path / "nothing")).setup()
    message = str(info.value)
    assert "\n" not in message
    assert "apt-get install dataset-fashion-mnist" in message and "download=true" in message
    assert str(tmp_path / "nothing") in message and str(tmp_path / "no-debian") in message


def test_task_pair_splits_the_classes_and_holds_out_validation(tiny):
    dm = FashionTask(root=str(tiny), target_train_per_class=3, target_val_per_class=4, source_val_per_class=5)
    dm.setup()
    sizes = dm.sizes()
    assert sizes == {
        "source/train": 5 * (PER_CLASS_TRAIN - 5),
        "source/val": 25,
        "source/test": 5 * PER_CLASS_TEST,
        "target/train": 15,
        "target/val": 20,
        "target/test": 5 * PER_CLASS_TEST,
    }
    for split in ("train", "val", "test"):  # each domain numbers its own five classes 0-4
        assert set(labels_of(dm.splits("source").as_dict()[split]).tolist()) == {0, 1, 2, 3, 4}
        assert set(labels_of(dm.splits("target").as_dict()[split]).tolist()) == {0, 1, 2, 3, 4}
    assert labels_of(dm.splits("target").train).bincount().tolist() == [3] * 5
    assert dm.num_classes == 5 and dm.class_names == ("Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
    # The images behind target label 0 are the file's class-5 images (sandals), source label 0 its class 0.
    written = fashion.load_fashion(str(tiny))["test"]
    for domain, raw_class in (("target", 5), ("source", 0)):
        x, y = dm.test_tensors(domain)
        raw = torch.from_numpy(written[0][written[1] == raw_class][:, 0, 0].astype("int64"))
        assert sorted(x[y == 0][:, 0, 0, 0].mul(255).round().long().tolist()) == sorted(raw.tolist())
    # Train and val are disjoint training images (the value of a tiny image is its index in the file).
    ids = lambda ds: set(ds.images[:, 0, 0, 0].mul(255).round().long().tolist())  # noqa: E731
    target = dm.splits("target")
    assert not ids(target.train) & ids(target.val)
    x, _ = dm.test_tensors("target")
    assert x.shape[1:] == (1, 28, 28) and float(x.min()) >= 0 and float(x.max()) <= 1
    same = dict(root=str(tiny), target_train_per_class=3, source_val_per_class=5)
    assert FashionTask(**same).fingerprint() == FashionTask(**same).fingerprint()


def test_task_pair_rejects_bad_classes(tiny):
    with pytest.raises(ConfigError, match="source_val_per_class=25 leaves no source training image"):
        FashionTask(root=str(tiny), source_val_per_class=25).setup()
    with pytest.raises(ConfigError, match="distinct classes in 0..9"):
        FashionTask(root=str(tiny), source_classes=[0, 0, 1])
    with pytest.raises(ConfigError, match="five of the ten classes"):
        FashionTask(root=str(tiny), source_classes=[0, 1, 2])


def test_shift_pair_rotates_disjoint_target_images(tiny):
    dm = FashionShift(root=str(tiny), target_train_per_class=2, target_val_per_class=2, source_val_per_class=2)
    dm.setup()
    source, target = dm.splits("source"), dm.splits("target")
    ids = lambda ds: set(ds.images[:, 0, 14, 2].mul(255).round().long().tolist())  # noqa: E731
    assert not ids(source.train) & ids(target.train)
    assert set(labels_of(target.test).tolist()) == set(range(10))
    # The bright square's corner moved: a 30-degree turn puts background where the upright image had the square.
    up, turned = source.test.images[:, 0], target.test.images[:, 0]
    assert float(up[:, 10, 10].mean()) == pytest.approx(1.0)
    assert float(turned[:, 10, 10].mean()) < 0.9
    unrotated = FashionShift(root=str(tiny), rotation_deg=0, target_train_per_class=2, source_val_per_class=2)
    unrotated.setup()
    assert torch.equal(unrotated.splits("source").test.images.sort(0).values, source.test.images.sort(0).values)


@pytest.mark.skipif(not Path(fashion.DEBIAN_DIR).is_dir(), reason="dataset-fashion-mnist is not installed")
def test_the_real_files_from_the_debian_package():
    data = load_fashion(None)
    (x, y), (tx, ty) = data["train"], data["test"]
    assert x.shape == (60000, 28, 28) and tx.shape == (10000, 28, 28)
    assert np.bincount(y).tolist() == [6000] * 10 and np.bincount(ty).tolist() == [1000] * 10
    dm = FashionTask()
    dm.setup()
    assert dm.sizes()["target/test"] == 5000 and labels_of(dm.splits("target").test).bincount().tolist() == [1000] * 5
