"""Dataset pairs (source domain -> target domain) with a shared label space and fixed splits."""

from datamodules.base import DomainDataModule, Splits, TransferDataModule
from datamodules.digits import DigitsShift
from datamodules.fashion import FashionShift, FashionTask
from datamodules.vision_pairs import Cifar10Stl10, MnistUsps, Stl10Cifar10, SvhnMnist

__all__ = [
    "Cifar10Stl10",
    "DigitsShift",
    "DomainDataModule",
    "FashionShift",
    "FashionTask",
    "MnistUsps",
    "Splits",
    "Stl10Cifar10",
    "SvhnMnist",
    "TransferDataModule",
]
