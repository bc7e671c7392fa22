"""The dataset-pair contract shared by every source -> target pair.

A pair yields two domains, each with fixed train / val / test splits of images in [0, 1] (float, NCHW)
and labels in one shared label space (`class_names`). Normalization is not done here: it lives inside
the model (`mean` and `std` are exposed for it), so attacks and data see the same [0, 1] images.
Checkpoint and model selection use the val split; the test split is for the final evaluation only.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from attacks.errors import choose

DOMAINS = ("source", "target")


class LabeledTensors(Dataset):
    """An in-memory dataset of images and integer labels: float images in [0, 1], or uint8 images (0..255) that
    stay uint8 in memory and become float in [0, 1] one item (or one batch, `batch`) at a time."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"images must be NCHW, got shape {tuple(images.shape)}")
        self.images = (images if images.dtype == torch.uint8 else images.float()).contiguous()
        self.labels = labels.long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.batch(i), self.labels[i]

    def batch(self, index) -> torch.Tensor:
        x = self.images[index]
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x


class LazyImages:
    """The images of a dataset as an indexable that reads them on access, never all at once.

    `x[i]` is one float image, `x[idx]` (a list or tensor of indices) a stacked float batch, `x[a:b]` another
    `LazyImages` (a view, nothing read); `len(x)` and `x.shape` as a tensor's. In-memory `LabeledTensors` (through
    `Subset`s) and `ImageFile`s are read a batch of rows at once, other datasets item by item (their own transform:
    decode, resize).
    """

    def __init__(self, dataset: Dataset, indices: torch.Tensor | None = None):
        while isinstance(dataset, Subset):  # resolve Subset chains to the base dataset's indices
            inner = torch.as_tensor(dataset.indices, dtype=torch.long)
            indices = inner if indices is None else inner[indices]
            dataset = dataset.dataset
        self.dataset = dataset
        self.indices = torch.arange(len(dataset)) if indices is None else torch.as_tensor(indices, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def shape(self) -> tuple[int, ...]:
        first = self[0] if len(self) else torch.empty(0)
        return (len(self), *first.shape)

    def __getitem__(self, key):
        if isinstance(key, slice):
            return LazyImages(self.dataset, self.indices[key])
        if isinstance(key, int):
            return self._read(self.indices[key : key + 1])[0] if key >= 0 else self[len(self) + key]
        return self._read(self.indices[torch.as_tensor(key, dtype=torch.long).flatten().cpu()])

    def _read(self, rows: torch.Tensor) -> torch.Tensor:
        if isinstance(self.dataset, (LabeledTensors, ImageFile)):
            return self.dataset.batch(rows)
        return torch.stack([self.dataset[int(i)][0] for i in rows])


class ImageFile:
    """Float32 images in a NumPy `.npy` file, written and read a batch of rows at a time: a set that has to be kept
    whole (a crafted attack's examples, a randomized model's examples that each draw scores, Gen-AF's adversarial
    copy) without being held in memory. Rows go through the file's reads and writes, not a memory map, so what was
    read is not kept in the process's memory (the kernel may cache the file in free memory).

    `ImageFile(shape)` makes an anonymous temporary file (in `$TMPDIR`; removed when closed or collected),
    `ImageFile(shape, path)` a named one, `ImageFile.open(path)` reads one. `LazyImages(file)` indexes it as a split.
    """

    def __init__(self, shape: tuple[int, ...], path: str | Path | None = None):
        f = tempfile.TemporaryFile() if path is None else open(path, "w+b")  # noqa: SIM115 (kept open)
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)})
        self._attach(f, shape, path)
        f.truncate(self._start + self.row_bytes * len(self))

    def _attach(self, f, shape: tuple[int, ...], path: str | Path | None) -> None:
        self._file, self._start = f, f.tell()  # the rows start after the header
        self.shape = tuple(int(s) for s in shape)
        self.path = None if path is None else Path(path)
        self.row_bytes = 4 * int(np.prod(self.shape[1:]))

    @classmethod
    def open(cls, path: str | Path) -> ImageFile:
        f = open(path, "rb")  # noqa: SIM115 (kept open)
        version = np.lib.format.read_magic(f)
        if version != (1, 0):
            raise ValueError(f"{path}: .npy version {version}, expected (1, 0)")
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        if fortran or dtype != np.dtype("<f4"):
            raise ValueError(f"{path}: not a C-ordered float32 array ({dtype}, fortran_order={fortran})")
        images = cls.__new__(cls)
        images._attach(f, shape, path)
        return images

    def __len__(self) -> int:
        return self.shape[0]

    def _rows(self, rows) -> list[int]:
        rows = torch.as_tensor(rows, dtype=torch.long).flatten().tolist()
        if rows and (min(rows) < 0 or max(rows) >= len(self)):
            raise IndexError(f"rows {min(rows)}..{max(rows)} out of range for {len(self)} images")
        return rows

    def write(self, start: int, images: torch.Tensor) -> None:
        """Write `images` as rows start, start + 1, ..."""
        data = images.detach().to("cpu", torch.float32).contiguous()
        if tuple(data.shape[1:]) != self.shape[1:]:
            raise ValueError(f"images of shape {tuple(data.shape[1:])}, the file holds {self.shape[1:]}")
        self._rows([start, start + len(data) - 1] if len(data) else [])
        self._file.seek(self._start + start * self.row_bytes)
        self._file.write(memoryview(data.numpy()).cast("B"))

    def batch(self, rows) -> torch.Tensor:
        """The given rows, stacked (runs of consecutive rows are read at once)."""
        rows = self._rows(rows)
        out = torch.empty((len(rows), *self.shape[1:]))
        flat = out.numpy().reshape(len(rows), self.row_bytes // 4)
        i = 0
        while i < len(rows):
            j = i + 1
            while j < len(rows) and rows[j] == rows[j - 1] + 1:
                j += 1
            self._file.seek(self._start + rows[i] * self.row_bytes)
            if self._file.readinto(memoryview(flat[i:j]).cast("B")) != (j - i) * self.row_bytes:
                raise EOFError(f"{self.path or 'temporary image file'} ends before row {rows[j - 1]}")
            i = j
        return out

    def close(self) -> None:
        self._file.close()


class Pairs(Dataset):
    """(image, label) pairs from images read on access (a tensor, `LazyImages`) and their labels; a DataLoader reads
    each batch of images at once (`__getitems__`)."""

    def __init__(self, images, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]

    def __getitems__(self, rows: list[int]) -> list:
        return list(zip(self.images[torch.as_tensor(rows, dtype=torch.long)], self.labels[rows]))


def chunks(x, size: int):
    """Float batches of `size` images of `x` in order: a tensor's slices (views, nothing copied), or images read on
    access (`LazyImages`) read a batch at a time (a whole split is never stacked)."""
    for i in range(0, len(x), size):
        yield x[i : i + size] if isinstance(x, torch.Tensor) else x[torch.arange(i, min(i + size, len(x)))]


def labels_of(dataset: Dataset) -> torch.Tensor:
    """The labels of a dataset without loading its images (`labels` attribute, through `Subset`s)."""
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[torch.as_tensor(dataset.indices)]
    labels = getattr(dataset, "labels", None)
    if labels is None:
        raise TypeError(f"{type(dataset).__name__} has no `labels`; wrap it so its labels can be read")
    return torch.as_tensor(labels)


def split_indices(n: int, fractions: tuple[float, ...], seed: int) -> list[torch.Tensor]:
    """Split range(n) into consecutive parts of a fixed random permutation (the last part takes the rest)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    parts, start = [], 0
    for f in fractions[:-1]:
        stop = start + round(f * n)
        parts.append(perm[start:stop])
        start = stop
    parts.append(perm[start:])
    return parts


def per_class_indices(labels: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Indices of k examples of each class (fewer if a class has fewer), fixed by `seed`, in sorted order."""
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        chosen.append(idx[torch.randperm(len(idx), generator=g)[:k]])
    return torch.cat(chosen).sort().values


@dataclass
class Splits:
    """The fixed train / val / test splits of one domain."""

    train: Dataset
    val: Dataset
    test: Dataset

    def as_dict(self) -> dict[str, Dataset]:
        return {"train": self.train, "val": self.val, "test": self.test}


class DomainDataModule(L.LightningDataModule):
    """One domain of a pair as a LightningDataModule, for `Trainer.fit` (train/val) and `Trainer.test`."""

    def __init__(self, splits: Splits, batch_size: int, eval_batch_size: int, num_workers: int = 0):
        super().__init__()
        self.splits = splits
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers

    def _loader(self, dataset: Dataset, shuffle: bool, batch_size: int) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.splits.train, True, self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.splits.val, False, self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.splits.test, False, self.eval_batch_size)


class TransferDataModule(L.LightningDataModule):
    """Base of every dataset pair. Subclasses set the class attributes and implement `build_domains`.

    Args:
        batch_size: training batch size.
        eval_batch_size: batch size for validation, test and attacks.
        num_workers: DataLoader workers.
        target_train_per_class: keep only this many labelled target training examples per class
            (the few-label transfer setting); None keeps all.
        max_train_per_domain: cap on the training examples of each domain (for fast runs); None keeps all.
        split_seed: seed of the fixed splits. It is part of the pair's identity, not a run seed.
    """

    name: ClassVar[str] = ""
    source_name: ClassVar[str] = "source"
    target_name: ClassVar[str] = "target"
    class_names: ClassVar[tuple[str, ...]] = ()
    image_shape: ClassVar[tuple[int, int, int]] = (1, 16, 16)
    mean: ClassVar[tuple[float, ...]] = (0.5,)
    std: ClassVar[tuple[float, ...]] = (0.5,)
    label_mapping_doc: ClassVar[str] = "identical label sets"

    def __init__(
        self,
        batch_size: int = 64,
        eval_batch_size: int = 256,
        num_workers: int = 0,
        target_train_per_class: int | None = None,
        max_train_per_domain: int | None = None,
        split_seed: int = 0,
    ):
        super().__init__()
        if batch_size < 1 or eval_batch_size < 1:
            raise ValueError("batch_size and eval_batch_size must be >= 1")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.target_train_per_class = target_train_per_class
        self.max_train_per_domain = max_train_per_domain
        self.split_seed = split_seed
        self._domains: dict[str, Splits] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def build_domains(self) -> dict[str, Splits]:
        """Return {"source": Splits, "target": Splits}, labels already in the shared label space."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self._domains is not None:
            return
        domains = self.build_domains()
        target = domains["target"]
        if self.target_train_per_class is not None:
            keep = per_class_indices(labels_of(target.train), self.target_train_per_class, self.split_seed)
            domains["target"] = Splits(Subset(target.train, keep.tolist()), target.val, target.test)
        if self.max_train_per_domain is not None:
            for name, s in domains.items():
                if len(s.train) > self.max_train_per_domain:
                    keep = split_indices(len(s.train), (1.0,), self.split_seed)[0][: self.max_train_per_domain]
                    domains[name] = Splits(Subset(s.train, keep.sort().values.tolist()), s.val, s.test)
        self._domains = domains

    def splits(self, domain: str) -> Splits:
        choose("domain", domain, DOMAINS)
        self.setup()
        return self._domains[domain]

    def domain(self, domain: str) -> DomainDataModule:
        """The given domain as a LightningDataModule."""
        return DomainDataModule(self.splits(domain), self.batch_size, self.eval_batch_size, self.num_workers)

    def tensors(self, domain: str, split: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first n examples of a domain's split (all if n is None), stacked."""
        dataset = self.splits(domain).as_dict()[split]
        n = len(dataset) if n is None else min(n, len(dataset))
        loader = DataLoader(Subset(dataset, range(n)), batch_size=self.eval_batch_size, shuffle=False)
        xs, ys = zip(*loader) if n else ((), ())
        return torch.cat(xs), torch.cat(ys)

    def lazy_tensors(self, domain: str, split: str) -> tuple[LazyImages, torch.Tensor]:
        """A split's images read on access (`LazyImages`: a batch at a time, never a float copy of the whole split)
        and its labels (read without the images)."""
        dataset = self.splits(domain).as_dict()[split]
        return LazyImages(dataset), labels_of(dataset)

    def test_tensors(self, domain: str = "target", n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first n test examples of a domain (all if n is None), stacked: the fixed evaluation subset."""
        return self.tensors(domain, "test", n)

    def sizes(self) -> dict[str, int]:
        return {f"{d}/{k}": len(v) for d in DOMAINS for k, v in self.splits(d).as_dict().items()}

    def fingerprint(self) -> str:
        """A hash of what the pair contains (split sizes and labels), for the stage cache keys."""
        h = hashlib.sha256(f"{self.name}|{self.class_names}|{self.image_shape}".encode())
        for d in DOMAINS:
            for split, ds in self.splits(d).as_dict().items():
                labels = labels_of(ds)
                h.update(f"{d}/{split}/{len(ds)}".encode())
                h.update(labels.numpy().astype("int64").tobytes())
        return h.hexdigest()[:16]

    def describe(self) -> dict:
        """What the pair is, for the logs and the report."""
        return {
            "name": self.name,
            "source": self.source_name,
            "target": self.target_name,
            "classes": list(self.class_names),
            "label_mapping": self.label_mapping_doc,
            "image_shape": list(self.image_shape),
            "sizes": self.sizes(),
        }
