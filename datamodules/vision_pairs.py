"""The dataset pairs of paper 1 (Zhang et al., KDD'20), read from disk by the real torchvision dataset classes.

Pairs: MNIST -> USPS, SVHN -> MNIST (digits, 10 classes, identity labels) and CIFAR-10 <-> STL-10 on their
nine shared classes (CIFAR's frog and STL's monkey are dropped). Every image comes out as a float tensor of
shape (3, image_size, image_size) in [0, 1]; the geometry follows paper 1, which works at 32x32:

* MNIST (28x28 grey): zero-padded by 2 pixels on each side to 32x32, replicated to 3 channels.
* USPS (16x16 grey): bilinearly resized to 28x28, then zero-padded by 2 pixels to 32x32, replicated to
  3 channels. Paper 1 stores USPS as 28x28 and pads it to 32 like MNIST; resizing first keeps the digit
  inside the same 28x28 frame as an MNIST digit, so the two domains differ in style, not in scale.
* SVHN, CIFAR-10 (32x32 RGB): unchanged.
* STL-10 (96x96 RGB): bilinearly resized (with antialiasing) to 32x32.

With `image_size != 32` the 32x32 image above is then resized (bilinear, antialias) to `image_size`; an image
without padding is resized once, from its native size (STL-10: 96 -> `image_size`, not 96 -> 32 -> `image_size`).

Normalization: paper 1 feeds every dataset through `Normalize(0.5, 0.5)` (inputs in [-1, 1]), so `mean` and
`std` are 0.5 per channel for all pairs; the model applies them, the data stay in [0, 1].

Splits: a fixed `val_fraction` of each domain's official training split (after dropping unmapped classes)
is held out for validation with `split_indices(..., seed=split_seed)`; the official test split is the test
split. The images stay in torchvision's uint8 storage and are converted one item at a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, Dataset, Subset
from torchvision import datasets as tvd

from attacks.errors import ConfigError
from datamodules.base import Splits, TransferDataModule, split_indices

DIGIT_CLASSES = tuple(str(d) for d in range(10))
OBJECT_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "horse", "ship", "truck")

# Raw torchvision label -> shared label (-1: dropped). CIFAR-10 is airplane, automobile, bird, cat, deer, dog,
# frog, horse, ship, truck; STL-10 is airplane, bird, car, cat, deer, dog, horse, monkey, ship, truck.
IDENTITY_10 = tuple(range(10))
CIFAR10_TO_SHARED = (0, 1, 2, 3, 4, 5, -1, 6, 7, 8)
STL10_TO_SHARED = (0, 2, 1, 3, 4, 5, 6, -1, 7, 8)


def _resize(image: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(image[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]


@dataclass(frozen=True)
class ToUnitImage:
    """PIL image -> float tensor (channels, size, size) in [0, 1]: optional resize, zero pad, final resize.

    A class rather than a closure so that datasets holding it can be sent to DataLoader worker processes.

    Args:
        resize: side to resize to first (bilinear, antialias); None keeps the native size.
        pad: zero pixels added on each side after that resize.
        size: side of the output (resized to it, bilinear with antialias, if the padded image differs).
        channels: output channels; grey images are replicated to reach 3.
    """

    resize: int | None = None
    pad: int = 0
    size: int = 32
    channels: int = 3

    def __call__(self, image) -> torch.Tensor:
        # torchvision hands over a PIL image (uint8); convert only this one image to float.
        x = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
        x = (x[None] if x.ndim == 2 else x.permute(2, 0, 1)).float().div_(255.0)
        if self.resize is not None and x.shape[-1] != self.resize and (self.pad or self.size == self.resize):
            x = _resize(x, self.resize)  # into the padded frame; without padding, resized once (below) to `size`
        if self.pad:
            x = F.pad(x, (self.pad,) * 4)
        if x.shape[-1] != self.size:
            x = _resize(x, self.size)
        if x.shape[0] == 1 and self.channels != 1:
            x = x.expand(self.channels, -1, -1)
        return x.clamp(0.0, 1.0).contiguous()


def raw_labels(dataset: Dataset) -> torch.Tensor:
    """The labels of a torchvision dataset (its `targets` or `labels`, through `ConcatDataset`s), as int64."""
    if isinstance(dataset, ConcatDataset):
        return torch.cat([raw_labels(d) for d in dataset.datasets])
    for attr in ("targets", "labels"):
        values = getattr(dataset, attr, None)
        if values is not None:
            return torch.as_tensor(np.asarray(values)).long()
    raise TypeError(f"{type(dataset).__name__} has neither `targets` nor `labels`")


class MappedDataset(Dataset):
    """A labelled dataset seen through a label mapping: yields (image, shared label), drops label -1.

    Args:
        base: a dataset yielding (image, raw label) with readable raw labels (see `raw_labels`).
        mapping: shared label of each raw label; -1 drops the examples of that raw label.

    Attributes:
        labels: shared labels of the kept examples (int64), read without loading any image.
        indices: the index in `base` of each kept example.
    """

    def __init__(self, base: Dataset, mapping: Sequence[int]):
        raw = raw_labels(base)
        table = torch.tensor(list(mapping), dtype=torch.long)
        if len(raw) and (raw.min() < 0 or raw.max() >= len(table)):
            raise ValueError(f"raw labels span [{raw.min()}, {raw.max()}], outside the {len(table)}-entry mapping")
        mapped = table[raw]
        self.base = base
        self.indices = (mapped >= 0).nonzero().flatten()
        self.labels = mapped[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, _ = self.base[int(self.indices[i])]
        return image, int(self.labels[i])


@dataclass(frozen=True)
class DatasetSpec:
    """How to open one torchvision dataset, map its labels, shape its images and say where its files go.

    Args:
        title: the dataset's name in messages.
        cls: the torchvision dataset class.
        split_by_name: the class takes `split="train"|"test"|"extra"` (SVHN, STL-10) rather than `train=bool`.
        mapping: raw label -> shared label, -1 drops.
        resize: see `ToUnitImage.resize` (towards the 32x32 frame of paper 1).
        pad: see `ToUnitImage.pad`.
        files: (root, splits) -> where the files go, for the missing-data message.
    """

    title: str
    cls: type[Dataset]
    split_by_name: bool
    mapping: tuple[int, ...]
    resize: int | None
    pad: int
    files: Callable[[str, Sequence[str]], str]


def _in(folder: str) -> str:
    return folder.rstrip("/\\") + os.sep


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        "MNIST",
        tvd.MNIST,
        split_by_name=False,
        mapping=IDENTITY_10,
        resize=None,
        pad=2,
        files=lambda root, splits: (
            "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte "
            f"(unzipped) in {_in(os.path.join(root, 'MNIST', 'raw'))}"
        ),
    ),
    "usps": DatasetSpec(
        "USPS",
        tvd.USPS,
        split_by_name=False,
        mapping=IDENTITY_10,
        resize=28,
        pad=2,
        files=lambda root, splits: (
            f"{os.path.join(root, 'usps.bz2')} and {os.path.join(root, 'usps.t.bz2')} (libsvm text, bz2-compressed)"
        ),
    ),
    "svhn": DatasetSpec(
        "SVHN",
        tvd.SVHN,
        split_by_name=True,
        mapping=IDENTITY_10,  # torchvision already turns SVHN's label 10 into digit 0
        resize=None,
        pad=0,
        files=lambda root, splits: (
            " and ".join(os.path.join(root, f"{s}_32x32.mat") for s in (*splits, "test")) + " (cropped digits)"
        ),
    ),
    "cifar10": DatasetSpec(
        "CIFAR-10",
        tvd.CIFAR10,
        split_by_name=False,
        mapping=CIFAR10_TO_SHARED,
        resize=None,
        pad=0,
        files=lambda root, splits: (
            "data_batch_1..5, test_batch and batches.meta (the python version, unpacked) in "
            f"{_in(os.path.join(root, 'cifar-10-batches-py'))}"
        ),
    ),
    "stl10": DatasetSpec(
        "STL-10",
        tvd.STL10,
        split_by_name=True,
        mapping=STL10_TO_SHARED,
        resize=32,
        pad=0,
        files=lambda root, splits: (
            "train_X.bin, train_y.bin, test_X.bin, test_y.bin and unlabeled_X.bin (torchvision checks it even "
            f"though only train/test are used) in {_in(os.path.join(root, 'stl10_binary'))}"
        ),
    ),
}


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def open_dataset(
    key: str, root: str, split: str, download: bool, transform: Callable, train_splits: Sequence[str] = ("train",)
) -> Dataset:
    """Open one split of a dataset of `DATASETS`; missing or broken files become a one-line `ConfigError`.

    Args:
        key: a key of `DATASETS`.
        root: the data root (torchvision's `root`).
        split: "train", "test" or "extra".
        download: let torchvision download the files when absent.
        transform: the per-image transform handed to torchvision.
        train_splits: the training splits in use, only to name every needed file in the message.

    Returns:
        The torchvision dataset.

    Raises:
        ConfigError: the files are missing or corrupted (or could not be downloaded).
    """
    spec = DATASETS[key]
    which = {"split": split} if spec.split_by_name else {"train": split == "train"}
    try:
        return spec.cls(root, transform=transform, download=download, **which)
    # torchvision signals absent data with RuntimeError (MNIST; SVHN, CIFAR-10 and STL-10 after their md5 check)
    # or FileNotFoundError (USPS opens its bz2 file directly); a failed download raises URLError (an OSError).
    except (RuntimeError, OSError) as error:
        where = spec.files(root, train_splits)
        if download:
            raise ConfigError(
                f"{spec.title} ({split}) could not be downloaded ({_one_line(error)}); check the internet connection "
                f"or put {where} by hand"
            ) from None
        raise ConfigError(
            f"{spec.title} ({split}) not found or corrupted: put {where}, or set data.download=true to fetch them "
            f"(needs internet) [torchvision: {_one_line(error)}]"
        ) from None


class VisionPair(TransferDataModule):
    """A source -> target pair of two torchvision datasets of `DATASETS` (subclasses set the two keys).

    Args:
        root: the data root, torchvision's `root` for both datasets.
        download: let torchvision download missing files (needs internet).
        image_size: side of the square output images (paper 1 uses 32).
        val_fraction: fraction of each domain's official training split held out for validation.
        **kwargs: see `TransferDataModule` (batch_size, eval_batch_size, num_workers, target_train_per_class,
            max_train_per_domain, split_seed).
    """

    source_key: ClassVar[str] = ""
    target_key: ClassVar[str] = ""
    image_shape = (3, 32, 32)
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        image_size: int = 32,
        val_fraction: float = 0.1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if image_size < 8:
            raise ConfigError(f"image_size must be >= 8, got {image_size}")
        self.root = str(root)
        self.download = download
        self.image_size = image_size
        self.val_fraction = val_fraction
        self.image_shape = (3, image_size, image_size)

    def train_splits(self, key: str) -> tuple[str, ...]:
        """The official splits that together form the training pool of dataset `key`."""
        return ("train",)

    def load_domain(self, key: str) -> Splits:
        """Train / val / test splits of dataset `key`, labels in the shared label space."""
        spec = DATASETS[key]
        transform = ToUnitImage(resize=spec.resize, pad=spec.pad, size=self.image_size)
        pool = self.train_splits(key)

        def load(split: str) -> Dataset:
            return open_dataset(key, self.root, split, self.download, transform, train_splits=pool)

        parts = [load(s) for s in pool]
        train = MappedDataset(parts[0] if len(parts) == 1 else ConcatDataset(parts), spec.mapping)
        test = MappedDataset(load("test"), spec.mapping)
        val_idx, fit_idx = split_indices(len(train), (self.val_fraction, 1.0 - self.val_fraction), self.split_seed)
        # Sorted indices keep the order of the files (cheaper reads); shuffling is the DataLoader's job.
        return Splits(
            Subset(train, fit_idx.sort().values.tolist()), Subset(train, val_idx.sort().values.tolist()), test
        )

    def build_domains(self) -> dict[str, Splits]:
        return {"source": self.load_domain(self.source_key), "target": self.load_domain(self.target_key)}


_DIGITS_DOC = "identity: digit d is class d in both domains (torchvision already maps SVHN's label 10 to digit 0)"
_OBJECTS_DOC = (
    "9 shared classes (airplane, automobile, bird, cat, deer, dog, horse, ship, truck); "
    "CIFAR-10 label -> shared [0,1,2,3,4,5,-1,6,7,8] (frog dropped); "
    "STL-10 label -> shared [0,2,1,3,4,5,6,-1,7,8] (STL's order is airplane, bird, car, ...; monkey dropped)"
)


class MnistUsps(VisionPair):
    """MNIST (source) -> USPS (target), 10 digits, 32x32x3 (see the module docstring for the geometry).

    Files: MNIST reads `<root>/MNIST/raw/`, USPS `<root>/usps.bz2` and `<root>/usps.t.bz2`.
    Arguments: see `VisionPair`.
    """

    name = "mnist_usps"
    source_name = "mnist"
    target_name = "usps"
    source_key = "mnist"
    target_key = "usps"
    class_names = DIGIT_CLASSES
    label_mapping_doc = _DIGITS_DOC


class SvhnMnist(VisionPair):
    """SVHN (source) -> MNIST (target), 10 digits, 32x32x3.

    Args:
        root: the data root; SVHN reads `<root>/{train,test,extra}_32x32.mat`, MNIST `<root>/MNIST/raw/`.
        download: let torchvision download missing files (needs internet).
        image_size: side of the square output images.
        val_fraction: fraction of the official training split(s) held out for validation.
        svhn_extra: add SVHN's "extra" split (531,131 images) to its training pool, as paper 1 does.
        **kwargs: see `TransferDataModule`.
    """

    name = "svhn_mnist"
    source_name = "svhn"
    target_name = "mnist"
    source_key = "svhn"
    target_key = "mnist"
    class_names = DIGIT_CLASSES
    label_mapping_doc = _DIGITS_DOC

    def __init__(
        self,
        root: str = "data",
        download: bool = False,
        image_size: int = 32,
        val_fraction: float = 0.1,
        svhn_extra: bool = False,
        **kwargs,
    ):
        super().__init__(root=root, download=download, image_size=image_size, val_fraction=val_fraction, **kwargs)
        self.svhn_extra = svhn_extra
        self.source_name = "svhn+extra" if svhn_extra else "svhn"

    def train_splits(self, key: str) -> tuple[str, ...]:
        return ("train", "extra") if key == "svhn" and self.svhn_extra else ("train",)


class Cifar10Stl10(VisionPair):
    """CIFAR-10 (source) -> STL-10 (target) on their 9 shared classes, 32x32x3 (STL resized from 96x96).

    Files: CIFAR-10 reads `<root>/cifar-10-batches-py/`, STL-10 `<root>/stl10_binary/`.
    Arguments: see `VisionPair`.
    """

    name = "cifar10_stl10"
    source_name = "cifar10"
    target_name = "stl10"
    source_key = "cifar10"
    target_key = "stl10"
    class_names = OBJECT_CLASSES
    label_mapping_doc = _OBJECTS_DOC


class Stl10Cifar10(VisionPair):
    """STL-10 (source) -> CIFAR-10 (target) on their 9 shared classes, 32x32x3 (STL resized from 96x96).

    Files: STL-10 reads `<root>/stl10_binary/`, CIFAR-10 `<root>/cifar-10-batches-py/`.
    Arguments: see `VisionPair`.
    """

    name = "stl10_cifar10"
    source_name = "stl10"
    target_name = "cifar10"
    source_key = "stl10"
    target_key = "cifar10"
    class_names = OBJECT_CLASSES
    label_mapping_doc = _OBJECTS_DOC
