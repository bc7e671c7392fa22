"""Fashion-MNIST (Xiao et al. 2017, arXiv 1708.07747) read from its IDX files, and the two pairs built from it.

The files (the same four torchvision downloads) are looked for, in this order:

1. `root` (`data.<pair>.root`, by default `$BENCH_DATA_DIR`): in `root/` itself, in `root/fashion-mnist/` or in
   torchvision's layout `root/FashionMNIST/raw/`, gzipped or not;
2. the Debian package `dataset-fashion-mnist` (`apt-get install dataset-fashion-mnist`): `/usr/share/datasets/
   fashion-mnist/`;
3. torchvision's download into `root` (or `data/`) when `download=true` (needs internet).

Without any of them, a one-line `ConfigError` names the two ways to get the files. No copy is committed.

Pairs (28 x 28 grey images in [0, 1], labels the dataset's 10 classes in both domains; with `channels=3` and
`image_size=32` the images are resized to 32 x 32, bilinear, and copied into three channels: RGB images that
CIFAR-sized networks and public CIFAR checkpoints take, kept as bytes in memory):

* `FashionTask` -- task transfer (Wang et al. 2018's setting: a public model fine-tuned for a new task; papers 2, 3):
  the teacher learns classes 0-4 (T-shirt/top, trouser, pullover, dress, coat) from the training images; the
  students learn the other five (sandal, shirt, sneaker, bag, ankle boot) from `target_train_per_class` labels each.
  Each domain numbers its own five classes 0-4 (a model has five outputs; the students' head learns a new meaning
  for them). Validation: held-out training images (never test images). Test: the official test images of the
  students' classes (5,000).
* `FashionShift` -- the same-label pair of paper 1 (its transfer attack needs a teacher and students that share the
  labels): all ten classes; the source domain is half of the training images, upright; the target domain is the
  other half (disjoint images), rotated by `rotation_deg` (the digits pair's shift), with few labels; its test
  split is the official test images, rotated the same way.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path

import numpy as np
import torch

from attacks.errors import ConfigError
from datamodules.base import LabeledTensors, Splits, TransferDataModule, per_class_indices, split_indices
from datamodules.digits import rotate

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
#: IDX type codes (the third byte of the magic number) we read: unsigned bytes only, as Fashion-MNIST stores.
IDX_UBYTE = 0x08


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (LeCun's MNIST format; gzipped when the name ends in .gz) as a uint8 array.

    The header is two zero bytes, the type code (0x08: unsigned byte), the number of dimensions d, then d
    big-endian int32 sizes; the data follow. A wrong header or a short file raises a one-line `ConfigError`.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != IDX_UBYTE:
        raise ConfigError(f"{path} is not an IDX file of unsigned bytes (magic {data[:4].hex() or 'empty'})")
    ndim = data[3]
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    start, size = 4 + 4 * ndim, int(np.prod(shape))
    if len(data) - start != size:
        raise ConfigError(f"{path}: the header says {shape} ({size} bytes), the file holds {len(data) - start}")
    return np.frombuffer(data, dtype=np.uint8, offset=start).reshape(shape)


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def find_files(root: str | None, debian_dir: str | None = None) -> dict[str, tuple[Path, Path]] | None:
    """The four files' paths by split, from the first folder that has all four (see the module docstring)."""
    folders = []
    if root:
        folders += [Path(root), Path(root) / "fashion-mnist", Path(root) / "FashionMNIST" / "raw"]
    folders.append(Path(debian_dir or DEBIAN_DIR))
    for folder in folders:
        found = {split: tuple(_find(folder, n) for n in names) for split, names in FILES.items()}
        if all(p is not None for pair in found.values() for p in pair):
            return found
    return None


def missing_message(root: str | None, debian_dir: str | None = None) -> str:
    where = f"{root}, {root}/fashion-mnist or {root}/FashionMNIST/raw" if root else "data.<pair>.root"
    return (
        f"Fashion-MNIST not found (looked in {where} and {debian_dir or DEBIAN_DIR}): install it with "
        "`apt-get install dataset-fashion-mnist`, or set data.<pair>.download=true to let torchvision fetch it "
        "(needs internet)"
    )


@functools.lru_cache(maxsize=2)
def _read_files(files: tuple[tuple[str, Path, Path, float, float], ...]) -> dict[str, tuple]:
    """The decoded files, kept for the next pair this process builds (keyed by path and modification time)."""
    out = {}
    for split, images, labels, _, _ in files:
        x, y = read_idx(images), read_idx(labels).astype(np.int64)
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ConfigError(f"{images} and {labels} do not match: shapes {x.shape} and {y.shape}")
        out[split] = (x, y)
    return out


def load_fashion(root: str | None, download: bool = False, debian_dir: str | None = None) -> dict[str, tuple]:
    """{"train": (images, labels), "test": (images, labels)}: images uint8 (N, 28, 28), labels int64 (N,)."""
    files = find_files(root, debian_dir)
    if files is None and download:
        from torchvision.datasets import FashionMNIST

        target = root or "data"
        try:
            for train in (True, False):
                FashionMNIST(target, train=train, download=True)
        except (RuntimeError, OSError) as error:
            one_line = " ".join(str(error).split())
            raise ConfigError(f"Fashion-MNIST could not be downloaded into {target} ({one_line})") from None
        files = find_files(target, debian_dir)
    if files is None:
        raise ConfigError(missing_message(root, debian_dir))
    return _read_files(tuple((s, i, lb, i.stat().st_mtime, lb.stat().st_mtime) for s, (i, lb) in files.items()))


def to_unit(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) -> float (N, 1, H, W) in [0, 1]."""
    return torch.from_numpy(images.copy()).float().div_(255.0).unsqueeze(1)


class FashionPair(TransferDataModule):
    """The common part of the Fashion-MNIST pairs: where the files are, and how many labels the students get.

    Args:
        root: a folder to look for the files in first (null: only the Debian package's folder).
        download: let torchvision download the files into `root` (or data/) when they are nowhere.
        target_train_per_class: labelled target training images per class (the few-label setting).
        target_val_per_class: labelled target validation images per class, held out from the training images.
        source_train_max: cap on the teacher's training images (a fixed random subset; null: all).
        source_val_per_class: source validation images per class, held out from the training images.
        channels: 1 (grey, the files' images) or 3 (the grey image in each channel: RGB).
        image_size: side of the square images (28: the files' size; else resized, bilinear).
        **kwargs: see `TransferDataModule`.
    """

    class_names = CLASSES
    image_shape = (1, 28, 28)
    mean = (0.286,)  # the training images' mean and std
    std = (0.353,)

    def __init__(
        self,
        root: str | None = None,
        download: bool = False,
        target_train_per_class: int | None = 20,
        target_val_per_class: int = 50,
        source_train_max: int | None = None,
        source_val_per_class: int = 100,
        channels: int = 1,
        image_size: int = 28,
        **kwargs,
    ):
        super().__init__(target_train_per_class=None, **kwargs)
        if channels not in (1, 3):
            raise ConfigError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
        if image_size < 8:
            raise ConfigError(f"image_size must be >= 8, got {image_size}")
        self.channels, self.image_size = channels, image_size
        self.image_shape = (channels, image_size, image_size)
        # a pair of other images has other names in the rows (fashion_56789_rgb32)
        self.suffix = "" if (channels, image_size) == (1, 28) else f"_{'rgb' if channels == 3 else 'grey'}{image_size}"
        for name, value in (
            ("target_val_per_class", target_val_per_class),
            ("source_val_per_class", source_val_per_class),
        ):
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        self.root = None if root in (None, "") else str(root)
        self.download = download
        self.few_train_per_class = target_train_per_class
        self.target_val_per_class = target_val_per_class
        self.source_train_max = source_train_max
        self.source_val_per_class = source_val_per_class

    def _source(self, x: torch.Tensor, y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor) -> Splits:
        """Source splits: val_per_class held out, the rest (capped at source_train_max) trains the teacher."""
        val = per_class_indices(y, self.source_val_per_class, self.split_seed + 10)
        rest = torch.ones(len(y), dtype=torch.bool)
        rest[val] = False
        train = rest.nonzero().flatten()
        if len(train) == 0:
            raise ConfigError(f"source_val_per_class={self.source_val_per_class} leaves no source training image")
        if self.source_train_max is not None and len(train) > self.source_train_max:
            keep = split_indices(len(train), (1.0,), self.split_seed + 11)[0][: self.source_train_max]
            train = train[keep.sort().values]
        return Splits(
            LabeledTensors(x[train], y[train]), LabeledTensors(x[val], y[val]), LabeledTensors(test_x, test_y)
        )

    def _target(self, x: torch.Tensor, y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor) -> Splits:
        """Target splits: few labels per class for training and validation (disjoint), the given test images."""
        k = self.few_train_per_class
        train = per_class_indices(y, k, self.split_seed + 12) if k is not None else torch.arange(len(y))
        free = torch.ones(len(y), dtype=torch.bool)
        free[train] = False
        pool = free.nonzero().flatten()
        val = pool[per_class_indices(y[pool], self.target_val_per_class, self.split_seed + 13)]
        # The test images in a fixed random order, so that the first n (eval.n_examples) are a random sample.
        order = split_indices(len(test_y), (1.0,), self.split_seed + 14)[0]
        return Splits(
            LabeledTensors(x[train], y[train]),
            LabeledTensors(x[val], y[val]),
            LabeledTensors(test_x[order], test_y[order]),
        )

    def shaped(self, domains: dict[str, Splits]) -> dict[str, Splits]:
        """The splits' images at `image_size` with `channels` channels, as bytes (each split is a few thousand
        images: 3 KB each at 3 x 32 x 32); the 28 x 28 grey images as they are."""
        if self.image_shape == (1, 28, 28):
            return domains

        def convert(part: LabeledTensors) -> LabeledTensors:
            x = part.images.float() / 255.0 if part.images.dtype == torch.uint8 else part.images
            x = torch.nn.functional.interpolate(x, size=(self.image_size,) * 2, mode="bilinear", align_corners=False)
            x = x.clamp(0, 1).mul(255).round().to(torch.uint8).expand(-1, self.channels, -1, -1)
            return LabeledTensors(x, part.labels)

        return {d: Splits(*(convert(p) for p in (s.train, s.val, s.test))) for d, s in domains.items()}

    def load(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        raw = load_fashion(self.root, self.download)
        return {split: (to_unit(x), torch.from_numpy(y)) for split, (x, y) in raw.items()}


class FashionTask(FashionPair):
    """Task transfer: the teacher on classes `source_classes`, the students on the other five (see the module doc).

    Args:
        source_classes: the teacher's classes; the students get the rest.
        **kwargs: see `FashionPair`.
    """

    name = "fashion_task"
    class_names = CLASSES[5:]

    def __init__(self, source_classes: tuple[int, ...] | list[int] = (0, 1, 2, 3, 4), **kwargs):
        super().__init__(**kwargs)
        source = sorted(int(c) for c in source_classes)
        if len(set(source)) != len(source) or not source or source[0] < 0 or source[-1] >= len(CLASSES):
            raise ConfigError(f"source_classes must be distinct classes in 0..9, got {list(source_classes)}")
        if 2 * len(source) != len(CLASSES):
            raise ConfigError(
                f"source_classes must be five of the ten classes (the rest are the students'), got {source}"
            )
        self.source_classes = tuple(source)
        self.target_classes = tuple(c for c in range(len(CLASSES)) if c not in source)
        self.class_names = tuple(CLASSES[c] for c in self.target_classes)  # what the students (and the report) learn
        self.source_name = "fashion_" + "".join(map(str, self.source_classes)) + self.suffix
        self.target_name = "fashion_" + "".join(map(str, self.target_classes)) + self.suffix
        self.label_mapping_doc = (
            "task transfer: each domain numbers its own five classes 0-4; source "
            + ", ".join(f"{i}={CLASSES[c]}" for i, c in enumerate(self.source_classes))
            + "; target "
            + ", ".join(f"{i}={CLASSES[c]}" for i, c in enumerate(self.target_classes))
        )

    def build_domains(self) -> dict[str, Splits]:
        data = self.load()
        (x, y), (tx, ty) = data["train"], data["test"]
        domains = {}
        for domain, classes in (("source", self.source_classes), ("target", self.target_classes)):
            relabel = torch.full((len(CLASSES),), -1, dtype=torch.long)
            relabel[list(classes)] = torch.arange(len(classes))  # the domain's own numbering 0..4
            keep, test = relabel[y] >= 0, relabel[ty] >= 0
            build = self._source if domain == "source" else self._target
            domains[domain] = build(x[keep], relabel[y[keep]], tx[test], relabel[ty[test]])
        return self.shaped(domains)


class FashionShift(FashionPair):
    """The same ten classes in a shifted domain: upright (source) -> rotated (target), disjoint training images.

    Args:
        rotation_deg: rotation of the target images (training, validation and test), degrees counter-clockwise.
        **kwargs: see `FashionPair`.
    """

    name = "fashion_shift"
    source_name = "fashion"
    label_mapping_doc = "identity: class c in the source is class c in the (rotated) target"

    def __init__(self, rotation_deg: float = 30.0, **kwargs):
        super().__init__(**kwargs)
        self.rotation_deg = float(rotation_deg)
        self.source_name = "fashion" + self.suffix
        self.target_name = f"fashion_rot{self.rotation_deg:g}{self.suffix}"

    def build_domains(self) -> dict[str, Splits]:
        data = self.load()
        (x, y), (tx, ty) = data["train"], data["test"]
        src, tgt = split_indices(len(y), (0.5, 0.5), self.split_seed)
        src, tgt = src.sort().values, tgt.sort().values
        source = self._source(x[src], y[src], tx, ty)
        turn = lambda images: rotate(images, self.rotation_deg).clamp(0, 1)  # noqa: E731
        return self.shaped({"source": source, "target": self._target(turn(x[tgt]), y[tgt], turn(tx), ty)})
