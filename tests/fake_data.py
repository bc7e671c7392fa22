"""Tiny fake datasets written in each dataset's native on-disk format, as torchvision's classes read them.

Shared by the dataset tests and the runner tests (the fast runs of the paper-1 experiment configs).
"""

from __future__ import annotations

import bz2
import gzip
import os
import pickle
import struct

import numpy as np
import scipy.io
import torchvision.datasets.cifar
import torchvision.datasets.stl10
import torchvision.datasets.svhn

N_TRAIN, N_TEST, N_EXTRA = 40, 20, 10
CIFAR_MAP = [0, 1, 2, 3, 4, 5, -1, 6, 7, 8]
STL_MAP = [0, 2, 1, 3, 4, 5, 6, -1, 7, 8]
IDENTITY = list(range(10))


def fake_labels(n: int, seed: int) -> np.ndarray:
    """Every class n // 10 times, in a fixed shuffled order."""
    return np.random.default_rng(seed).permutation(np.arange(n) % 10)


def fake_pixels(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def write_mnist(root: str) -> dict:
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw)
    out = {}
    for split, prefix, n, seed in (("train", "train", N_TRAIN, 1), ("test", "t10k", N_TEST, 2)):
        images, labels = fake_pixels((n, 28, 28), seed), fake_labels(n, seed)
        # idx format: big-endian magic (0x0803 = uint8, 3 dims / 0x0801 = uint8, 1 dim), then the sizes.
        with open(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        with open(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), "wb") as f:
            f.write(struct.pack(">II", 2049, n) + labels.astype(np.uint8).tobytes())
        out[split] = (images, labels)
    return out


def write_usps(root: str) -> dict:
    out = {}
    for split, name, n, seed in (("train", "usps.bz2", N_TRAIN, 3), ("test", "usps.t.bz2", N_TEST, 4)):
        values = np.random.default_rng(seed).uniform(-1, 1, size=(n, 256)).round(4)
        values[0] = 1.0  # a plain white first image: resized it stays 1.0, so the padding is exactly visible
        labels = fake_labels(n, seed)
        # libsvm text: "<label 1..10> 1:<v> ... 256:<v>" with v in [-1, 1].
        lines = [
            f"{y + 1} " + " ".join(f"{j + 1}:{v:.4f}" for j, v in enumerate(row)) for y, row in zip(labels, values)
        ]
        with bz2.open(os.path.join(root, name), "wb") as f:
            f.write(("\n".join(lines) + "\n").encode())
        out[split] = (values, labels)
    return out


def write_svhn(root: str) -> dict:
    out = {}
    for split, n, seed in (("train", N_TRAIN, 5), ("test", N_TEST, 6), ("extra", N_EXTRA, 7)):
        images, labels = fake_pixels((32, 32, 3, n), seed), fake_labels(n, seed)
        # SVHN's .mat files: X is (H, W, C, N) uint8, y is (N, 1) with 10 standing for the digit 0.
        y = np.where(labels == 0, 10, labels).astype(np.uint8).reshape(n, 1)
        scipy.io.savemat(os.path.join(root, f"{split}_32x32.mat"), {"X": images, "y": y})
        out[split] = (images, labels)
    return out


def write_cifar10(root: str) -> dict:
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    out = {}
    for split, n, seed in (("train", N_TRAIN, 8), ("test", N_TEST, 9)):
        images, labels = fake_pixels((n, 3072), seed), fake_labels(n, seed)
        names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
        for name, rows in zip(names, np.array_split(np.arange(n), len(names))):
            # torchvision unpickles with encoding="latin1" and reads str keys ("data", "labels"): the original
            # Python 2 pickles decode that way. Rows are R, G, B planes of 32x32, row-major.
            with open(os.path.join(folder, name), "wb") as f:
                pickle.dump({"data": images[rows], "labels": labels[rows].tolist()}, f)
        out[split] = (images.reshape(n, 3, 32, 32), labels)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": 10000, "num_vis": 3072}, f)
    return out


def write_stl10(root: str) -> dict:
    folder = os.path.join(root, "stl10_binary")
    os.makedirs(folder)
    out = {}
    for split, n, seed in (("train", N_TRAIN, 10), ("test", N_TEST, 11)):
        images, labels = fake_pixels((n, 3, 96, 96), seed), fake_labels(n, seed)
        images[0, :, :, :48], images[0, :, :, 48:] = 200, 20  # left half bright, right half dark
        # STL-10 stores each channel column-major: torchvision reshapes to (N, 3, 96, 96) and swaps H and W.
        images.transpose(0, 1, 3, 2).tofile(os.path.join(folder, f"{split}_X.bin"))
        (labels + 1).astype(np.uint8).tofile(os.path.join(folder, f"{split}_y.bin"))  # labels 1..10 on disk
        out[split] = (images, labels)
    # torchvision's integrity check wants unlabeled_X.bin although the train and test splits never read it.
    open(os.path.join(folder, "unlabeled_X.bin"), "wb").close()
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    with open(os.path.join(folder, "class_names.txt"), "w") as f:
        f.write("\n".join(names) + "\n")
    return out


WRITERS = {"mnist": write_mnist, "usps": write_usps, "svhn": write_svhn, "cifar10": write_cifar10, "stl10": write_stl10}
MAPS = {"mnist": IDENTITY, "usps": IDENTITY, "svhn": IDENTITY, "cifar10": CIFAR_MAP, "stl10": STL_MAP}


def write_idx(path: str, array: np.ndarray) -> None:
    """LeCun's IDX format (Fashion-MNIST): 0, 0, type 0x08 (ubyte), ndim, big-endian int32 sizes, the bytes."""
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_fashion(root: str, per_class_train: int = 25, per_class_test: int = 6, gz: bool = True) -> dict:
    """Tiny Fashion-MNIST IDX files in `root`. Each image is filled with its index in the file (mod 251), so an
    image can be traced when a file holds at most 251, with a bright 8 x 8 square in the middle."""
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(0)
    files = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}  # fmt: skip
    written = {}
    for split, per_class in (("train", per_class_train), ("test", per_class_test)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class)).astype(np.uint8)
        images = (np.arange(len(labels)) % 251).astype(np.uint8)[:, None, None] * np.ones((1, 28, 28), np.uint8)
        images[:, 10:18, 10:18] = 255
        for name, array in zip(files[split], (images, labels)):
            write_idx(os.path.join(root, name + (".gz" if gz else "")), array)
        written[split] = (images, labels)
    return written


def write_all(root: str) -> dict:
    """Write all five fake datasets under one root (their files do not collide); return what was written."""
    return {key: write(root) for key, write in WRITERS.items()}


def skip_md5(monkeypatch) -> None:
    """SVHN, CIFAR-10 and STL-10 compare md5 sums with the real files, which tiny fake files cannot match.

    Patch only the md5 part, in each dataset module: a missing file must still count as missing.
    """

    def exists_only(fpath, md5=None) -> bool:
        return os.path.isfile(fpath)

    for module in (torchvision.datasets.svhn, torchvision.datasets.cifar, torchvision.datasets.stl10):
        monkeypatch.setattr(module, "check_integrity", exists_only)
