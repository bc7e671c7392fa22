"""Attacks: `attack(model, x, y) -> x_adv` on [0, 1] images, checked before they are scored."""

from attacks.advencoder import AdvEncoderPAT, AdvEncoderPER
from attacks.autoattack import AutoAttack
from attacks.base import (
    NORMS,
    Attack,
    AttackConstraintError,
    attack_mode,
    check_adversarial,
    eps_tag,
    parse_eps,
    parse_norm,
)
from attacks.fgsm import FGSM
from attacks.ila import ILA
from attacks.mimicry import MimicryAttack
from attacks.ms_ssim import dssim, ms_ssim
from attacks.pgd import PGD
from attacks.reject import RejectAwarePGD
from attacks.transfer import TransferAttack
from attacks.transfer_families import MIFGSM
from attacks.universal import L4A, SSP, FeatureUAP, SSPUniversal

__all__ = [
    "L4A",
    "SSP",
    "AdvEncoderPAT",
    "AdvEncoderPER",
    "FeatureUAP",
    "SSPUniversal",
    "FGSM",
    "ILA",
    "MIFGSM",
    "NORMS",
    "PGD",
    "Attack",
    "AttackConstraintError",
    "AutoAttack",
    "MimicryAttack",
    "RejectAwarePGD",
    "TransferAttack",
    "attack_mode",
    "check_adversarial",
    "dssim",
    "eps_tag",
    "ms_ssim",
    "parse_eps",
    "parse_norm",
]
