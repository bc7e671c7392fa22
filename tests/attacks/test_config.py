"""An attack's config (its cache key) comes from its constructor's arguments; `replace` rebuilds from them.

What is checked, and why it matters: two attacks that can give different examples must never share a cached
result, so
- every constructor argument of every exported attack is in its config, and changing any one of them changes the
  config (a table below lists a second value per argument; a new argument without one fails the test);
- a subclass that adds an argument gets it in its config without writing any config code;
- spellings of the same attack share a key: "8/255" and 8/255, 1 and 1.0, "Linf" and "linf", Hydra's configs and
  direct construction, PGD's default step size and its value;
- `replace` builds a new attack from the recorded arguments (derived defaults follow the new values) and leaves
  the original alone;
- a transfer attack's config holds the config of the inner attack it runs;
- norm names are case-insensitive, anything else is a one-line error naming the valid ones.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import pickle

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

import attacks
from attacks import (
    FGSM,
    ILA,
    L4A,
    MIFGSM,
    PGD,
    SSP,
    AdvEncoderPAT,
    AdvEncoderPER,
    Attack,
    AutoAttack,
    FeatureUAP,
    MimicryAttack,
    RejectAwarePGD,
    SSPUniversal,
    TransferAttack,
)
from attacks.base import Eps
from attacks.errors import ConfigError

EPS = 0.1

#: Per exported class: the arguments of a reference attack, and for each constructor argument a second value that
#: gives a different attack. Arguments with a single valid value are listed in SINGLE_VALUED instead.
CHANGES: dict[type[Attack], tuple[dict, dict]] = {
    Attack: ({"eps": EPS}, {"eps": 0.2, "norm": "l2", "eot": 2, "bpda": True}),
    FGSM: ({"eps": EPS}, {"eps": 0.2, "norm": "l2", "loss": "margin", "eot": 2, "bpda": True}),
    PGD: (
        {"eps": EPS},
        {
            "eps": 0.2,
            "norm": "l2",
            "steps": 20,
            "step_size": 0.05,  # the default is 2.5 * 0.1 / 10 = 0.025
            "random_start": False,
            "restarts": 2,
            "loss": "margin",
            "early_stop": False,  # the default is on with eot 1
            "eot": 2,
            "bpda": True,
        },
    ),
    AutoAttack: (
        {"eps": EPS},
        {"eps": 0.2, "norm": "l2", "version": "rand", "seed": 1, "draws": 4, "steps": 50},
    ),
    TransferAttack: (
        {"eps": EPS, "attack": functools.partial(PGD, steps=5)},
        {"eps": 0.2, "attack": functools.partial(PGD, steps=6), "surrogate": ["teacher", "substitute"]},
    ),
    MIFGSM: (
        {"eps": EPS, "diversity_prob": 0.5, "ti_kernel_size": 5, "vmi_samples": 2},
        {
            "eps": 0.2,
            "steps": 20,
            "step_size": 0.02,
            "decay": 0.5,
            "diversity_prob": 0.7,
            "resize_rate": 1.1,
            "ti_kernel_size": 7,
            "ti_nsig": 2.0,
            "vmi_samples": 3,
            "vmi_beta": 1.0,
            "loss": "margin",
        },  # fmt: skip
    ),
    ILA: (
        {"eps": EPS},
        {
            "eps": 0.2,
            "layer": "backbone.features.2",
            "steps": 20,
            "step_size": 0.02,
            "base": functools.partial(MIFGSM, steps=5),
        },  # fmt: skip
    ),
}
CHANGES[RejectAwarePGD] = ({"eps": EPS}, {**CHANGES[PGD][1], "targets": 2, "untargeted": False, "kappa": 2.0})
CHANGES[MimicryAttack] = (
    {"eps": EPS},
    {
        "eps": 0.2,
        "norm": "dssim",
        "layer": "fc",
        "targeted": False,
        "steps": 50,
        "step_size": 0.05,  # the default is eps / 4
        "penalty": 1e9,
        "lr": 0.5,
        "rho": 0.9,
        "adadelta_eps": 1e-6,
        "quantize": True,
        "seed": 1,
    },
)
_UNIVERSAL = {
    "eps": 0.2,
    "norm": "l2",
    "layer": "backbone.features.2",
    "epochs": 2,
    "batch_size": 32,
    "step_size": 0.03,
    "max_examples": 100,
    "seed": 1,
    "surrogate": "common",
}
CHANGES[FeatureUAP] = ({"eps": EPS}, _UNIVERSAL)
CHANGES[SSPUniversal] = ({"eps": EPS}, _UNIVERSAL)
CHANGES[L4A] = (
    {"eps": EPS, "layer": "backbone.features.2"},
    {
        **_UNIVERSAL,
        "layer": "backbone.features.5",
        "variant": "ugs",
        "layer2": "backbone.features.2",
        "lam": 0.1,
        "noise_images": 4,
        "resample_every": 10,
    },
)
CHANGES[SSP] = (
    {"eps": EPS},
    {"eps": 0.2, "norm": "l2", "layer": "backbone.features.2", "steps": 5, "step_size": 0.02, "surrogate": "common"},
)
CHANGES[AdvEncoderPER] = (
    {"eps": EPS},
    {
        "eps": 0.2,
        "norm": "l2",
        "epochs": 2,
        "batch_size": 32,
        "lr": 1e-3,
        "alpha": 2.0,
        "temperature": 0.2,
        "radius": 2.0,
        "ngf": 16,
        "nz": 10,
        "max_examples": 100,
        "seed": 1,
        "surrogate": "common",
    },
)
CHANGES[AdvEncoderPAT] = (
    {"eps": 0.03},
    {
        "eps": 0.1,
        "position": [2, 3],
        "epochs": 2,
        "batch_size": 32,
        "lr": 1e-3,
        "alpha": 2.0,
        "temperature": 0.2,
        "radius": 2.0,
        "ngf": 16,
        "nz": 10,
        "max_examples": 100,
        "seed": 1,
        "surrogate": "common",
    },
)
#: Arguments with one value: the teacher is a mimicry attack's only surrogate; the transfer families are L-inf only.
SINGLE_VALUED = {MimicryAttack: {"surrogate"}, MIFGSM: {"norm"}, ILA: {"norm"}}


def exported_attacks() -> list[type[Attack]]:
    return [Attack] + [
        obj
        for obj in map(functools.partial(getattr, attacks), attacks.__all__)
        if isinstance(obj, type) and issubclass(obj, Attack) and obj is not Attack
    ]


def test_every_argument_of_every_attack_has_a_second_value():
    for cls in exported_attacks():
        assert cls in CHANGES, f"add {cls.__name__} to CHANGES in {__file__}"
        names = set(inspect.signature(cls).parameters)
        covered = set(CHANGES[cls][1]) | SINGLE_VALUED.get(cls, set())
        assert names == covered, f"{cls.__name__}: arguments without a second value: {sorted(names - covered)}"


@pytest.mark.parametrize("cls", list(CHANGES), ids=lambda c: c.__name__)
def test_changing_any_one_argument_changes_the_config(cls):
    reference, changes = CHANGES[cls]
    base = cls(**reference)
    # Every argument is recorded, defaults included (a default that changes in the code changes the key).
    assert set(inspect.signature(cls).parameters) <= set(base.config())
    configs = {json.dumps(base.config(), sort_keys=True)}
    for name, value in changes.items():
        changed = cls(**{**reference, name: value})
        assert changed.config() != base.config(), f"{cls.__name__}: {name} is not in the config"
        assert changed.config()["name"] == cls.name
        configs.add(json.dumps(changed.config(), sort_keys=True))  # JSON values: the cache key is their hash
    assert len(configs) == len(changes) + 1


@pytest.mark.parametrize("cls", list(CHANGES), ids=lambda c: c.__name__)
def test_replace(cls):
    reference, changes = CHANGES[cls]
    original = cls(**reference)
    before = (original.config(), dict(vars(original)))
    same = original.replace()
    assert same is not original and type(same) is cls and same.config() == original.config()
    for name, value in changes.items():
        changed = original.replace(**{name: value})
        assert changed.config() == cls(**{**reference, name: value}).config(), name
        assert changed.config() != original.config(), name
    assert (original.config(), vars(original)) == before, "replace modified the original"
    with pytest.raises(ConfigError, match=f"{cls.__name__} has no argument 'nope'; valid: eps"):
        original.replace(nope=1)


def test_a_subclass_argument_is_in_the_config_without_config_code():
    class Scaled(PGD):
        name = "scaled_pgd"

        def __init__(self, eps: Eps, scale: float = 1.0, momentum: float = 0.0, classes=(0, 1), **kwargs):
            super().__init__(eps, **kwargs)
            self.scale, self.momentum, self.classes = scale, momentum, classes

    config = Scaled("8/255", scale=2.0, steps=5).config()
    assert config["name"] == "scaled_pgd"
    assert config["eps"] == 8 / 255  # the annotation's rule: the fraction is parsed
    assert config["scale"] == 2.0 and config["momentum"] == 0.0  # given and default
    assert config["steps"] == 5  # passed on through **kwargs
    assert Scaled(EPS, momentum=0.9).config() != Scaled(EPS).config()
    assert Scaled(EPS).replace(scale=3.0).scale == 3.0
    # Containers become JSON lists and mappings, OmegaConf's too (Hydra passes nested values in them).
    assert config["classes"] == [0, 1] and Scaled(EPS, classes=[0, 2]).config()["classes"] == [0, 2]
    assert Scaled(EPS, classes=OmegaConf.create([0, 1])).config() == Scaled(EPS).config()
    weights = Scaled(EPS, classes=OmegaConf.create({"a": [1, "2/3"]})).config()["classes"]
    assert weights == {"a": [1, "2/3"]} and json.loads(json.dumps(weights)) == weights


def test_a_value_that_cannot_be_a_key_fails_at_construction():
    class WithModel(Attack):
        def __init__(self, eps: Eps, helper: object = None):
            super().__init__(eps)

    assert WithModel(EPS).config()["helper"] is None
    with pytest.raises(ConfigError, match="helper=.* cannot go into an attack's config"):
        WithModel(EPS, helper=object())
    with pytest.raises(ConfigError, match="attack=.* cannot go into"):
        TransferAttack(EPS, lambda eps: PGD(eps))  # a lambda cannot be reproduced from a key


def test_spellings_of_one_attack_share_a_config():
    assert PGD("8/255").config() == PGD(8 / 255).config() == PGD(" 8 / 255 ").config()
    assert PGD(1).config() == PGD(1.0).config() and isinstance(PGD(1).config()["eps"], float)
    assert PGD(EPS, step_size="1/40").config() == PGD(EPS, step_size=0.025).config() == PGD(EPS).config()
    assert PGD(EPS, norm="Linf").config() == PGD(EPS).config()
    assert AutoAttack(EPS, norm="L2").config() == AutoAttack(EPS, norm="l2").config()
    transfer = TransferAttack("8/255", functools.partial(PGD, norm="LINF", step_size="1/255"))
    assert transfer.config() == TransferAttack(8 / 255, functools.partial(PGD, step_size=1 / 255)).config()


def test_hydra_configs_give_the_direct_config():
    # The runner builds attacks with Hydra (`_partial_`, values in OmegaConf containers).
    cfg = {
        "_target_": "attacks.transfer.TransferAttack",
        "surrogate": "teacher",
        "attack": {"_target_": "attacks.pgd.PGD", "_partial_": True, "norm": "linf", "steps": 20, "restarts": 1},
    }
    built = instantiate(cfg, _partial_=True)(eps="16/255")
    direct = TransferAttack(16 / 255, functools.partial(PGD, norm="linf", steps=20, restarts=1))
    assert built.config() == direct.config()
    inner = instantiate({"_target_": "attacks.pgd.PGD", "norm": "L2", "steps": 20, "eot": 4}, eps=0.5)
    assert inner.config() == PGD(0.5, norm="l2", steps=20, eot=4).config()


def test_transfer_config_holds_the_inner_attack_config():
    transfer = TransferAttack(EPS, functools.partial(PGD, norm="l2", steps=5, restarts=2))
    # The inner attack as it runs: the transfer budget, early stopping off (crafting uses the full budget).
    assert transfer.config()["attack"] == PGD(EPS, norm="l2", steps=5, restarts=2, early_stop=False).config()
    assert transfer.config()["attack"] == transfer.base.config()
    fgsm = TransferAttack(EPS, functools.partial(FGSM, loss="margin"))
    assert fgsm.config()["attack"] == FGSM(EPS, loss="margin").config()
    assert transfer.replace(eps=0.2).config()["attack"]["eps"] == 0.2


def test_replace_rederives_defaults():
    pgd = PGD(EPS, steps=10)
    assert pgd.replace(eps=1.0).step_size == pytest.approx(2.5 * 1.0 / 10)
    assert pgd.replace(steps=40).step_size == pytest.approx(2.5 * EPS / 40)
    assert PGD(EPS, step_size=0.01).replace(eps=1.0).step_size == 0.01  # a given step size is kept
    # early_stop defaults to "on unless eot > 1": more EOT samples turn it off, and the original keeps it.
    eot = pgd.replace(steps=40, eot=20)
    assert (eot.steps, eot.eot, eot.early_stop) == (40, 20, False) and pgd.early_stop is True
    assert pgd.replace(early_stop=False).early_stop is False
    assert AutoAttack(EPS).replace(version="rand").eot == 20


def test_copies_keep_the_record():
    pgd = PGD("8/255", norm="L2", steps=3)
    for copied in (copy.deepcopy(pgd), copy.copy(pgd), pickle.loads(pickle.dumps(pgd))):
        assert copied.config() == pgd.config()
        assert copied.replace(steps=4).config() == PGD(8 / 255, norm="l2", steps=4).config()
    assert pgd.arguments["eps"] == "8/255", "the arguments are recorded as given"


@pytest.mark.parametrize("cls", [c for c in CHANGES if c is not AdvEncoderPAT], ids=lambda c: c.__name__)  # no norm
@pytest.mark.parametrize(("given", "norm"), [("Linf", "linf"), ("LINF", "linf"), ("L2", "l2"), ("l2", "l2")])
def test_norm_names_are_case_insensitive(cls, given, norm):
    reference = CHANGES[cls][0]
    if norm == "l2" and "norm" in SINGLE_VALUED.get(cls, ()):
        with pytest.raises(ConfigError, match=f"^{cls.__name__} supports norm linf only, got {given}$"):
            cls(**reference, norm=given)
        return
    if cls is TransferAttack:
        attack = cls(**{**reference, "attack": functools.partial(PGD, norm=given)})
    else:
        attack = cls(**reference, norm=given)
    assert attack.norm == norm
    assert attack.label == attack.replace().label


@pytest.mark.parametrize("bad", ["l1", "L3", "inf", "", None, 2])
def test_unknown_norm_is_a_one_line_error(bad):
    for build in (lambda: PGD(EPS, norm=bad), lambda: FGSM(EPS, norm=bad), lambda: AutoAttack(EPS, norm=bad)):
        with pytest.raises(ConfigError) as info:
            build()
        assert str(info.value) == f"unknown norm '{bad}'; valid: l2, linf"
