"""Attacks: `attack(model, x, y) -> x_adv` on [0, 1] images, checked before they are scored."""

from attacks.autoattack import AutoAttack
from attacks.base import (
    NORMS,
    Attack,
    AttackConstraintError,
    attack_mode,
    check_adversarial,
    eps_label,
    parse_eps,
    parse_norm,
)
from attacks.fgsm import FGSM
from attacks.pgd import PGD
from attacks.transfer import TransferAttack

__all__ = [
    "FGSM",
    "NORMS",
    "PGD",
    "Attack",
    "AttackConstraintError",
    "AutoAttack",
    "TransferAttack",
    "attack_mode",
    "check_adversarial",
    "eps_label",
    "parse_eps",
    "parse_norm",
]
