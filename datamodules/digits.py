"""The embedded default pair, built from scikit-learn's 8x8 handwritten digits (ships with the package).

Source domain: upright digits. Target domain: *other* digits (disjoint images) rotated by `rotation_deg`
degrees counter-clockwise, with strokes thickened by a `thicken`-pixel grey dilation when asked. Both
domains are upsampled from 8x8 to `image_size` (bilinear) and scaled to [0, 1] (sklearn stores 0..16).
Labels are the ten digits in both domains (identity mapping).

The split is deterministic (`split_seed`): a fixed permutation puts `source_fraction` of the 1,797 images
in the source domain, the rest in the target domain. Source: 80/10/10 % train/val/test. Target: by
default only 10 labelled training and 10 validation images per class (the few-label transfer setting);
the remaining target images are its test split.

With the defaults the shift is a real transfer problem: a `small_cnn` teacher trained on the source alone
(8 epochs) reaches about 60-65 % on the target test split (chance is 10 %), a student fine-tuned from it on
the 100 target labels (30 epochs) about 90-93 % (`test_the_shift_is_a_transfer_problem` in
`tests/datamodules/test_digits.py` checks both, with margin).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from datamodules.base import LabeledTensors, Splits, TransferDataModule, per_class_indices, split_indices


def rotate(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate NCHW images about their centre (bilinear, zero fill). The sampling grid is the same for every image:
    made once and expanded (making it per image was most of the time of building Fashion-MNIST's rotated domain;
    the same bits, tests/datamodules)."""
    t = math.radians(degrees)
    theta = torch.tensor([[[math.cos(t), -math.sin(t), 0.0], [math.sin(t), math.cos(t), 0.0]]])
    grid = F.affine_grid(theta, [1, *images.shape[1:]], align_corners=False)
    return F.grid_sample(images, grid.expand(len(images), -1, -1, -1), align_corners=False)


class DigitsShift(TransferDataModule):
    """Upright digits (source) -> rotated digits (target), from scikit-learn's `load_digits`.

    Args:
        rotation_deg: rotation of the target domain, in degrees.
        thicken: size of the grey dilation applied to target strokes (0 or 1: none).
        image_size: side of the square images after upsampling from 8x8.
        source_fraction: fraction of the 1,797 images that form the source domain.
        target_val_per_class: labelled target validation images per class.
        **kwargs: see `TransferDataModule` (target_train_per_class defaults to 10 here).
    """

    name = "digits"
    source_name = "digits"
    target_name = "digits_rot30"
    class_names = tuple(str(i) for i in range(10))
    image_shape = (1, 16, 16)
    mean = (0.3,)
    std = (0.4,)
    label_mapping_doc = "identity: digit d in the source is digit d in the target"

    def __init__(
        self,
        rotation_deg: float = 30.0,
        thicken: int = 0,
        image_size: int = 16,
        source_fraction: float = 0.6,
        target_val_per_class: int = 10,
        target_train_per_class: int | None = 10,
        **kwargs,
    ):
        super().__init__(target_train_per_class=None, **kwargs)
        if not 0.0 < source_fraction < 1.0:
            raise ValueError(f"source_fraction must be in (0, 1), got {source_fraction}")
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        self.rotation_deg = rotation_deg
        self.thicken = thicken
        self.image_size = image_size
        self.source_fraction = source_fraction
        self.target_val_per_class = target_val_per_class
        self.few_train_per_class = target_train_per_class
        self.image_shape = (1, image_size, image_size)
        self.target_name = f"digits_rot{rotation_deg:g}" + (f"_thick{thicken}" if thicken > 1 else "")

    def build_domains(self) -> dict[str, Splits]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
        images = F.interpolate(images, size=self.image_size, mode="bilinear", align_corners=False).clamp(0, 1)
        labels = torch.tensor(digits.target, dtype=torch.long)

        src_idx, tgt_idx = split_indices(len(labels), (self.source_fraction, 1 - self.source_fraction), self.split_seed)
        s_train, s_val, s_test = split_indices(len(src_idx), (0.8, 0.1, 0.1), self.split_seed + 1)
        source = Splits(*(LabeledTensors(images[src_idx[i]], labels[src_idx[i]]) for i in (s_train, s_val, s_test)))

        t_images = images[tgt_idx]
        if self.thicken > 1:
            t_images = F.max_pool2d(t_images, self.thicken, stride=1, padding=self.thicken // 2)
            t_images = t_images[..., : self.image_size, : self.image_size]
        t_images = rotate(t_images, self.rotation_deg).clamp(0, 1)
        t_labels = labels[tgt_idx]

        # Few labelled target images: k per class for train, k per class for val, the rest is test.
        taken = torch.zeros(len(t_labels), dtype=torch.bool)
        parts = []
        for k, seed in (
            (self.few_train_per_class, self.split_seed + 2),
            (self.target_val_per_class, self.split_seed + 3),
        ):
            free = (~taken).nonzero().flatten()
            pick = free if k is None else free[per_class_indices(t_labels[free], k, seed)]
            taken[pick] = True
            parts.append(pick)
        parts.append((~taken).nonzero().flatten())
        target = Splits(*(LabeledTensors(t_images[i], t_labels[i]) for i in parts))
        return {"source": source, "target": target}
