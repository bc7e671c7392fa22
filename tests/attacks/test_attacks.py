"""Tests of the attack contract (`attacks/base.py`) and of every attack exported by `attacks/__init__.py`.

What is checked, and why it matters for an honest robustness number:
- invariants of every registered attack: x_adv inside the threat model (eps ball, [0, 1], finite), the model's
  per-submodule train/eval modes and `requires_grad` flags restored, no parameter gradient left behind, the
  input's device and dtype kept, the input not modified in place, eps = 0 returning x exactly;
- `check_adversarial` rejects every kind of violation and tolerates float round-off;
- our FGSM / FGM equals independent implementations (ART, torchattacks) element-wise on a trained model;
- our PGD is as strong as torchattacks' PGD / PGDL2, and stronger than FGSM (an iterative attack must win);
- early stopping never changes the verdict, and what it reports fooled really is misclassified;
- a transfer attack never queries the target, crafts with the inner attack's full budget, and its white-box
  counterpart is the inner attack as configured;
- bad hyper-parameters fail at construction with a `ConfigError`.

The trained model comes from the session fixture `digits_classifier` (tests/conftest.py). Tests that change a
model's state work on a deep copy.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from toy_models import UnqueryableTarget

import attacks
from attacks import (
    FGSM,
    PGD,
    Attack,
    AttackConstraintError,
    MimicryAttack,
    TransferAttack,
    attack_mode,
    check_adversarial,
    eps_tag,
    parse_eps,
)
from attacks.errors import ConfigError
from attacks.universal import UniversalAttack

#: One intra-op thread per test (tests/conftest.py): the batches are tiny.
pytestmark = pytest.mark.usefixtures("one_thread")

# ---------------------------------------------------------------------------------------------------------------
# The registry of attacks under test, built from what `attacks/__init__.py` exports.
# ---------------------------------------------------------------------------------------------------------------


def exported_attack_classes() -> list[type[Attack]]:
    """Every concrete `Attack` subclass that `attacks/__init__.py` exports, in export order."""
    found = []
    for name in attacks.__all__:
        obj = getattr(attacks, name)
        if isinstance(obj, type) and issubclass(obj, Attack) and obj is not Attack:
            found.append(obj)
    return found


#: Variants per exported class: (variant id, norm, constructor keyword arguments without eps). Few steps keep the
#: invariant tests fast; the invariants do not depend on the number of steps.
#: A low-level layer of small_cnn (the first conv block), for L4A.
LOW_LAYER = "backbone.features.2"
VARIANTS: dict[str, list[tuple[str, str, dict]]] = {
    "FGSM": [
        ("linf", "linf", {}),
        ("l2", "l2", {"norm": "l2"}),
        ("linf-margin", "linf", {"loss": "margin"}),
    ],
    "PGD": [
        ("linf", "linf", {"steps": 5}),
        ("linf-noearlystop", "linf", {"steps": 5, "early_stop": False}),
        ("l2", "l2", {"norm": "l2", "steps": 5}),
        ("l2-noearlystop", "l2", {"norm": "l2", "steps": 5, "early_stop": False}),
        ("linf-restarts3-margin", "linf", {"steps": 5, "restarts": 3, "loss": "margin"}),
        ("l2-restarts2-nostart", "l2", {"norm": "l2", "steps": 5, "restarts": 2, "random_start": False}),
    ],
    # The transfer families (Dong et al. 2018 and after) and the intermediate-level attack; their exact iterates
    # against torchattacks are in test_transfer_families.py.
    "MIFGSM": [
        ("mi", "linf", {"steps": 3}),
        ("vmi-di-ti", "linf", {"steps": 2, "diversity_prob": 0.5, "ti_kernel_size": 5, "vmi_samples": 2}),
    ],
    "ILA": [("ila", "linf", {"steps": 3, "layer": "backbone.features.2"})],
    "TransferAttack": [
        ("pgd-linf", "linf", {"attack": functools.partial(PGD, norm="linf", steps=5)}),
        ("pgd-l2-restarts2", "l2", {"attack": functools.partial(PGD, norm="l2", steps=5, restarts=2)}),
        ("fgsm-l2", "l2", {"attack": functools.partial(FGSM, norm="l2")}),
    ],
    # The authors' budgets (100 iterations, 5,000 Square queries, EOT 20) cost minutes per run here; the invariants
    # do not depend on them (tests/attacks/test_adaptive.py compares the full budgets with the authors' code).
    "MimicryAttack": [
        ("linf-targeted", "linf", {"steps": 5}),
        ("l2-untargeted", "l2", {"norm": "l2", "steps": 5, "targeted": False}),
    ],
    # Universal and per-sample encoder attacks (paper 3's threat model), at tiny fitting budgets.
    "FeatureUAP": [("linf", "linf", {"epochs": 1, "batch_size": 16}), ("l2", "l2", {"norm": "l2", "epochs": 1})],
    "SSPUniversal": [("linf", "linf", {"epochs": 1, "batch_size": 16})],
    "L4A": [("linf", "linf", {"epochs": 1, "batch_size": 16, "layer": LOW_LAYER})],
    "SSP": [("linf", "linf", {"steps": 5}), ("l2", "l2", {"norm": "l2", "steps": 5})],
    "AdvEncoderPER": [("linf", "linf", {"epochs": 1, "batch_size": 16, "ngf": 8, "nz": 8})],
    "AdvEncoderPAT": [("patch", "patch", {"epochs": 1, "batch_size": 16, "ngf": 8, "nz": 8})],
    "RejectAwarePGD": [
        ("linf", "linf", {"steps": 5}),
        ("l2-restarts2-margin", "l2", {"norm": "l2", "steps": 5, "restarts": 2, "loss": "margin"}),
        ("linf-targeted", "linf", {"steps": 5, "targets": 2}),
        ("linf-targeted-eot", "linf", {"steps": 3, "targets": 1, "eot": 2}),
    ],
    "AutoAttack": [
        ("standard-linf", "linf", {"version": "standard", "steps": 2}),
        ("standard-l2", "l2", {"norm": "l2", "version": "standard", "steps": 2}),
        ("rand-linf", "linf", {"version": "rand", "steps": 2}),
    ],
}

#: Budgets per norm, 0 included (the attack must then return x exactly). 0.3 L-inf / 2.0 L2 are large for
#: 16x16 digits, so the projections and the [0, 1] clipping are both exercised.
#: A patch's budget is its area fraction: 3 % is 2 x 2 px on 16 px digits, 30 % is 8 x 8.
EPS = {"linf": (0.0, 8 / 255, 0.3), "l2": (0.0, 0.5, 2.0), "patch": (0.0, 0.03, 0.3)}


@dataclass(frozen=True)
class Case:
    """One configured attack: `build(eps)` gives a fresh instance (a transfer attack still needs its surrogate)."""

    id: str
    cls: type[Attack]
    norm: str
    kwargs: dict = field(hash=False)

    def build(self, eps: float) -> Attack:
        return self.cls(eps=eps, **self.kwargs)


CASES = [
    Case(f"{cls.__name__}-{vid}", cls, norm, kwargs)
    for cls in exported_attack_classes()
    for vid, norm, kwargs in VARIANTS.get(cls.__name__, [])
]
CASE_EPS = [pytest.param(c, eps, id=f"{c.id}-eps{eps_tag(eps, c.norm)}") for c in CASES for eps in EPS[c.norm]]
CASE_ONLY = [pytest.param(c, id=c.id) for c in CASES]

#: Examples used by the invariant tests: enough for a batch with fooled and unfooled examples, and fast.
N_INVARIANT = 32


def test_every_exported_attack_has_variants():
    # A new attack exported from attacks/__init__.py must get variants here, or it escapes every invariant test.
    missing = [cls.__name__ for cls in exported_attack_classes() if cls.__name__ not in VARIANTS]
    assert not missing, f"add variants for {missing} to VARIANTS in {__file__}"
    assert {c.cls for c in CASES} == set(exported_attack_classes())


# ---------------------------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def batch(digits_source_test) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `N_INVARIANT` source test examples (clones, so a test cannot corrupt the session tensors).

    Returns:
        (x, y) on the CPU, float32 images in [0, 1] and int64 labels.
    """
    x, y = digits_source_test
    return x[:N_INVARIANT].clone(), y[:N_INVARIANT].clone()


def make_attack(case: Case, eps: float, surrogate: nn.Module) -> Attack:
    attack = case.build(eps)
    if isinstance(attack, TransferAttack):
        attack.surrogate = surrogate
    if isinstance(attack, (MimicryAttack, UniversalAttack)):  # images (and labels) the attacker holds
        g = torch.Generator().manual_seed(0)
        attack.attacker_data = (torch.rand(40, 1, 16, 16, generator=g), torch.arange(40) % 10)
    return attack


def distances(x: torch.Tensor, x_adv: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-example distance, computed here in float64 independently of `attacks.base.lp_norm`; for a patch, the
    side of the square that holds the changed pixels, in units of the budget's side (eps is then compared with
    the area fraction that square takes)."""
    if norm == "patch":
        h, w = x.shape[-2:]
        out = []
        for a, b in zip(x, x_adv):
            rows, cols = (a != b).any(0).nonzero(as_tuple=True)
            side = max(int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1) if len(rows) else 0
            out.append(side**2 / (h * w))
        return torch.tensor(out, dtype=torch.float64)
    d = (x_adv.double() - x.double()).reshape(len(x), -1)
    return d.abs().max(dim=1).values if norm == "linf" else torch.sqrt((d * d).sum(dim=1))


def assert_in_threat_model(x: torch.Tensor, x_adv: torch.Tensor, norm: str, eps: float) -> None:
    """An independent version of `check_adversarial`: shape, finiteness, box and ball."""
    assert x_adv.shape == x.shape
    assert torch.isfinite(x_adv).all(), "x_adv has non-finite values"
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0, "x_adv leaves [0, 1]"
    # Tolerance: float32 rounding of x +- eps (half an ulp at 1 is 6e-8), summed over 256 pixels for L2.
    worst = distances(x, x_adv, norm).max().item()
    assert worst <= eps * (1 + 1e-6) + 1e-6, f"{norm} distance {worst} > eps {eps}"


def fmt_eps(eps: float, norm: str) -> str:
    """eps for messages: L-inf in 1/255 units ("8/255"), L2 as is."""
    return f"{eps_tag(eps, norm)}/255" if norm == "linf" else eps_tag(eps, norm)


def robust_accuracy(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of the examples still classified correctly (the model is scored in eval mode)."""
    with torch.no_grad():
        return (model.eval()(x_adv).argmax(1) == y).float().mean().item()


def snapshot(net: nn.Module) -> dict:
    """Everything an attack must leave as it found it: per-module modes, flags, gradients and buffers."""
    return {
        "modes": {name: m.training for name, m in net.named_modules()},
        "flags": {name: p.requires_grad for name, p in net.named_parameters()},
        "grads": {name: p.grad for name, p in net.named_parameters() if p.grad is not None},
        "buffers": {name: b.clone() for name, b in net.named_buffers()},
    }


def record_forward_state(net: nn.Module) -> tuple[list[tuple[bool, bool]], Callable[[], None]]:
    """Record, each time a module runs forward, (module.training, any of its own parameters requires grad).

    Returns:
        (records, remove_hooks).
    """
    seen: list[tuple[bool, bool]] = []

    def hook(mod, args):
        seen.append((mod.training, any(p.requires_grad for p in mod.parameters(recurse=False))))

    handles = [m.register_forward_pre_hook(hook) for m in net.modules()]
    return seen, lambda: [h.remove() for h in handles]


# ---------------------------------------------------------------------------------------------------------------
# 1. The session classifier
# ---------------------------------------------------------------------------------------------------------------


def test_session_classifier_is_accurate(digits_classifier, digits_source_test):
    x, y = digits_source_test
    assert len(x) >= 100 and x.shape[1:] == (1, 16, 16)
    assert x.min().item() >= 0.0 and x.max().item() <= 1.0
    assert robust_accuracy(digits_classifier, x, y) > 0.9
    assert not digits_classifier.training
    assert all(p.grad is None for p in digits_classifier.parameters())


# ---------------------------------------------------------------------------------------------------------------
# 2. Invariants of every registered attack
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "eps"), CASE_EPS)
def test_output_in_threat_model(case, eps, model, surrogate, batch):
    x, y = batch
    model.train()  # the attack must switch to eval itself; a train-mode forward would also move BN statistics
    x_adv = make_attack(case, eps, surrogate)(model, x, y)
    check_adversarial(x, x_adv, case.norm, eps)
    assert_in_threat_model(x, x_adv, case.norm, eps)
    if eps > 0:
        # Guards against a vacuous pass (an attack that returns x always satisfies the constraints).
        assert not torch.equal(x_adv, x), "the attack did not move any example"


@pytest.mark.parametrize("modes", ["train", "mixed"])
@pytest.mark.parametrize(("case", "eps"), CASE_EPS)
def test_model_state_restored(case, eps, modes, model, surrogate, batch):
    x, y = batch
    nets = {"target": model, "surrogate": surrogate}
    for net in nets.values():
        net.train()
        if modes == "mixed":
            # One submodule in eval (a frozen BN, as in fine-tuning with frozen statistics), the rest in train.
            net.backbone.features[1].eval()
        # A frozen parameter must stay frozen, and the others must get their flag back.
        net.backbone.features[0].weight.requires_grad_(False)
    before = {k: snapshot(net) for k, net in nets.items()}
    seen = {}
    removers = []
    for k, net in nets.items():
        seen[k], remove = record_forward_state(net)
        removers.append(remove)
    try:
        make_attack(case, eps, surrogate)(model, x, y)
    finally:
        for remove in removers:
            remove()
    for k, net in nets.items():
        after = snapshot(net)
        assert after["modes"] == before[k]["modes"], f"{k}: per-submodule train/eval modes not restored"
        assert after["flags"] == before[k]["flags"], f"{k}: requires_grad flags not restored"
        assert not after["grads"], f"{k}: gradients left on {sorted(after['grads'])}"
        for name, buf in before[k]["buffers"].items():
            assert torch.equal(after["buffers"][name], buf), f"{k}: buffer {name} changed (ran in train mode?)"
        assert not any(training for training, _ in seen[k]), f"{k}: a module ran forward in train mode in the attack"
        # The contract freezes the parameters during the attack, so no backward can reach them.
        assert not any(trainable for _, trainable in seen[k]), f"{k}: a parameter required grad during the attack"
    if case.cls is TransferAttack:
        assert not seen["target"], "a transfer attack queried the target model"
        assert seen["surrogate"], "a transfer attack did not use its surrogate"
    else:
        assert seen["target"], "a white-box attack did not query the model"


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(("case", "eps"), CASE_EPS)
def test_device_dtype_and_input_untouched(case, eps, dtype, device, model, surrogate, batch):
    x, y = batch
    model.to(device=device, dtype=dtype)
    surrogate.to(device=device, dtype=dtype)
    x, y = x.to(device=device, dtype=dtype), y.to(device)
    x_before, y_before = x.clone(), y.clone()
    x_adv = make_attack(case, eps, surrogate)(model, x, y)
    assert x_adv.device == x.device and x_adv.dtype == x.dtype
    assert not x_adv.requires_grad
    assert torch.equal(x, x_before) and torch.equal(y, y_before), "the attack modified its inputs in place"
    # x_adv must not share memory with x: a caller editing x_adv (e.g. clamp_) would silently corrupt x.
    assert x_adv.data_ptr() != x.data_ptr()
    check_adversarial(x, x_adv, case.norm, eps)


@pytest.mark.parametrize("case", CASE_ONLY)
def test_eps_zero_returns_input_exactly(case, model, surrogate, batch):
    x, y = batch
    x_adv = make_attack(case, 0.0, surrogate)(model, x, y)
    assert torch.equal(x_adv, x)


@pytest.mark.parametrize("case", CASE_ONLY)
def test_same_result_under_no_grad(case, model, surrogate, batch):
    # Evaluation loops often run under torch.no_grad(); the attack must still get its input gradients.
    x, y = batch
    eps = EPS[case.norm][1]
    attack = make_attack(case, eps, surrogate)
    torch.manual_seed(0)
    expected = attack(model, x, y)
    torch.manual_seed(0)
    with torch.no_grad():
        x_adv = attack(model, x, y)
        assert not torch.is_grad_enabled(), "the attack left gradient mode switched on"
    assert torch.equal(x_adv, expected)


@pytest.mark.parametrize("case", CASE_ONLY)
def test_state_restored_when_model_raises(case, model, surrogate, batch):
    # A crash inside the attack (OOM, a bad layer) must not leave the caller's model frozen or in eval mode.
    x, y = batch
    attacked = surrogate if case.cls is TransferAttack else model
    attacked.train()
    attacked.backbone.features[0].weight.requires_grad_(False)
    before = snapshot(attacked)

    def boom(mod, args):
        raise RuntimeError("boom")

    handle = attacked.backbone.features[0].register_forward_pre_hook(boom)  # every path (a layer-level one too)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            make_attack(case, EPS[case.norm][1], surrogate)(model, x, y)
    finally:
        handle.remove()
    after = snapshot(attacked)
    assert after["modes"] == before["modes"] and after["flags"] == before["flags"]


# ---------------------------------------------------------------------------------------------------------------
# 3. check_adversarial
# ---------------------------------------------------------------------------------------------------------------

_EPS_CHECK = 8 / 255


def _grey() -> torch.Tensor:
    # Mid-grey images: a perturbation of size eps stays inside [0, 1], so only the ball is at stake.
    return torch.full((2, 1, 4, 4), 0.5)


def _l2_direction() -> torch.Tensor:
    d = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    return d / d.flatten(1).norm(dim=1).view(-1, 1, 1, 1)


def _bad_linf():
    x = _grey()
    x_adv = x.clone()
    x_adv[1, 0, 2, 3] += _EPS_CHECK + 1e-3
    return x, x_adv, "linf"


def _bad_l2():
    x = _grey()
    return x, x + 1.01 * 0.5 * _l2_direction(), "l2"


def _below_zero():
    x = torch.zeros(2, 1, 4, 4)
    x_adv = x.clone()
    x_adv[0, 0, 0, 0] = -1e-3  # inside the ball, outside the box
    return x, x_adv, "linf"


def _above_one():
    x = torch.ones(2, 1, 4, 4)
    x_adv = x.clone()
    x_adv[1, 0, 3, 3] = 1 + 1e-3
    return x, x_adv, "linf"


def _nan():
    x = _grey()
    x_adv = x.clone()
    x_adv[0, 0, 1, 1] = float("nan")
    return x, x_adv, "linf"


def _inf():
    x = _grey()
    x_adv = x.clone()
    x_adv[0, 0, 1, 1] = float("inf")
    return x, x_adv, "l2"


def _wrong_shape():
    x = _grey()
    return x, x[:1].clone(), "linf"


@pytest.mark.parametrize(
    "make",
    [_bad_linf, _bad_l2, _below_zero, _above_one, _nan, _inf, _wrong_shape],
    ids=["outside-linf-ball", "outside-l2-ball", "below-0", "above-1", "nan", "inf", "wrong-shape"],
)
def test_check_adversarial_rejects(make):
    x, x_adv, norm = make()
    eps = _EPS_CHECK if norm == "linf" else 0.5
    with pytest.raises(AttackConstraintError):
        check_adversarial(x, x_adv, norm, eps)


def test_check_adversarial_accepts_round_off():
    x = _grey()
    # Exactly on the sphere, and a hair (1e-7) outside it: float round-off, not a violation.
    check_adversarial(x, x + _EPS_CHECK, "linf", _EPS_CHECK)
    check_adversarial(x, x + (_EPS_CHECK + 1e-7), "linf", _EPS_CHECK)
    check_adversarial(x, x - (_EPS_CHECK + 1e-7), "linf", _EPS_CHECK)
    check_adversarial(x, x + 0.5 * _l2_direction(), "l2", 0.5)
    check_adversarial(x, x + (0.5 + 1e-7) * _l2_direction(), "l2", 0.5)
    # Clipping round-off at the box edges is tolerated too.
    zeros = torch.zeros(2, 1, 4, 4)
    check_adversarial(zeros, zeros - 1e-7, "linf", _EPS_CHECK)
    check_adversarial(zeros, torch.zeros_like(zeros), "linf", 0.0)


# ---------------------------------------------------------------------------------------------------------------
# 4. FGSM against independent implementations (ART, torchattacks)
# ---------------------------------------------------------------------------------------------------------------


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d CE / d x in eval mode, computed here (not by the attack code) to locate exact-zero gradient entries."""
    net = copy.deepcopy(model).eval()
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(net(xg), y, reduction="sum"), xg)
    return g


def art_fgm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm) -> torch.Tensor:
    """ART's FastGradientMethod on a copy of the model (ART sets the model's mode and leaves parameter grads)."""
    from art.attacks.evasion import FastGradientMethod
    from art.estimators.classification import PyTorchClassifier

    classifier = PyTorchClassifier(
        model=copy.deepcopy(model),
        loss=nn.CrossEntropyLoss(),
        input_shape=(1, 16, 16),
        nb_classes=10,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    fgm = FastGradientMethod(classifier, norm=norm, eps=eps, batch_size=len(x))
    return torch.from_numpy(fgm.generate(x.numpy(), y=y.numpy()))


@pytest.mark.parametrize("eps", [8 / 255, 16 / 255], ids=["8", "16"])
def test_fgsm_linf_matches_art_and_torchattacks(eps, digits_classifier, digits_source_test):
    import torchattacks

    x, y = digits_source_test
    ours = FGSM(eps, "linf")(digits_classifier, x, y)
    art = art_fgm(digits_classifier, x, y, eps, np.inf)
    ta = torchattacks.FGSM(copy.deepcopy(digits_classifier), eps=eps)(x, y)
    # Where the input gradient is exactly 0, sign(0) = 0 in all three; exclude those entries only if they disagree.
    nonzero = input_gradient(digits_classifier, x, y) != 0
    for name, ref in (("ART", art), ("torchattacks", ta)):
        diff = (ours - ref).abs()
        print(f"FGSM linf eps={fmt_eps(eps, 'linf')}: max |ours - {name}| = {diff.max().item():.3g}")
        assert diff[nonzero].max().item() <= 1e-6, f"FGSM differs from {name}"
        # Zero-gradient entries may only differ by the sign(0) convention, i.e. by at most eps.
        assert diff.max().item() <= eps + 1e-6
    assert robust_accuracy(digits_classifier, ours, y) < robust_accuracy(digits_classifier, x, y)


@pytest.mark.parametrize("eps", [0.5, 1.0])
def test_fgm_l2_matches_art(eps, digits_classifier, digits_source_test):
    x, y = digits_source_test
    ours = FGSM(eps, "l2")(digits_classifier, x, y)
    art = art_fgm(digits_classifier, x, y, eps, 2)
    diff = (ours - art).abs().max().item()
    print(f"FGM l2 eps={eps}: max |ours - ART| = {diff:.3g}")
    assert diff <= 1e-5


# ---------------------------------------------------------------------------------------------------------------
# 5. PGD against torchattacks, and against FGSM
# ---------------------------------------------------------------------------------------------------------------

#: (norm, eps) pairs where the trained model keeps a non-trivial robust accuracy (neither ~clean nor ~0).
PGD_BUDGETS = [("linf", 8 / 255), ("linf", 16 / 255), ("l2", 0.5), ("l2", 1.0)]
PGD_IDS = [f"{n}-{eps_tag(e, n)}" for n, e in PGD_BUDGETS]


@pytest.mark.parametrize(("norm", "eps"), PGD_BUDGETS, ids=PGD_IDS)
def test_pgd_matches_torchattacks(norm, eps, digits_classifier, digits_source_test):
    import torchattacks

    x, y = digits_source_test
    steps, alpha = 10, 2.5 * eps / 10
    # Same seed for both: they draw their random start the same way, so the comparison is not noise-limited.
    torch.manual_seed(0)
    ours = PGD(eps, norm, steps=steps, step_size=alpha, random_start=True)(digits_classifier, x, y)
    reference = torchattacks.PGD if norm == "linf" else torchattacks.PGDL2
    torch.manual_seed(0)
    theirs = reference(copy.deepcopy(digits_classifier), eps=eps, alpha=alpha, steps=steps, random_start=True)(x, y)
    assert_in_threat_model(x, theirs, norm, eps)  # the reference itself must be valid to be a reference
    acc_ours = robust_accuracy(digits_classifier, ours, y)
    acc_theirs = robust_accuracy(digits_classifier, theirs, y)
    print(f"PGD {norm} eps={fmt_eps(eps, norm)}: robust acc ours {acc_ours:.4f} torchattacks {acc_theirs:.4f}")
    assert abs(acc_ours - acc_theirs) <= 0.02
    # Early stopping keeps the first adversarial iterate, so ours may only be stronger.
    assert acc_ours <= acc_theirs + 0.01


@pytest.mark.parametrize(("norm", "eps"), PGD_BUDGETS, ids=PGD_IDS)
def test_pgd_not_weaker_than_fgsm(norm, eps, digits_classifier, digits_source_test):
    x, y = digits_source_test
    torch.manual_seed(0)
    acc_pgd = robust_accuracy(digits_classifier, PGD(eps, norm, steps=20, restarts=2)(digits_classifier, x, y), y)
    acc_fgsm = robust_accuracy(digits_classifier, FGSM(eps, norm)(digits_classifier, x, y), y)
    print(f"{norm} eps={fmt_eps(eps, norm)}: robust acc PGD-20x2 {acc_pgd:.4f} FGSM {acc_fgsm:.4f}")
    assert acc_pgd <= acc_fgsm + 0.01


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_robust_accuracy_falls_with_eps(norm, digits_classifier, digits_source_test):
    # Carlini et al.'s checklist: success must grow with eps; eps = 0 must give the clean accuracy.
    x, y = digits_source_test
    grid = [0.0, 4 / 255, 8 / 255, 16 / 255, 32 / 255] if norm == "linf" else [0.0, 0.25, 0.5, 1.0, 2.0]
    accs = []
    for eps in grid:
        torch.manual_seed(0)
        accs.append(robust_accuracy(digits_classifier, PGD(eps, norm, steps=10)(digits_classifier, x, y), y))
    assert accs[0] == robust_accuracy(digits_classifier, x, y)
    assert all(b <= a + 0.01 for a, b in zip(accs, accs[1:])), accs
    assert accs[-1] < 0.1, f"PGD at a large budget should break nearly every example: {accs}"


# ---------------------------------------------------------------------------------------------------------------
# 6. Early stopping does not change the verdict
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("norm", "eps"), PGD_BUDGETS, ids=PGD_IDS)
def test_early_stop_not_weaker(norm, eps, digits_classifier, digits_source_test):
    x, y = digits_source_test
    results = {}
    for early_stop in (True, False):
        torch.manual_seed(0)
        pgd = PGD(eps, norm, steps=10, early_stop=early_stop)
        x_adv = pgd(digits_classifier, x, y)
        with torch.no_grad():
            fooled = digits_classifier(x_adv).argmax(1) != y
        results[early_stop] = (fooled, pgd.forward_passes)
    (fooled_es, passes_es), (fooled_full, passes_full) = results[True], results[False]
    acc_es, acc_full = 1 - fooled_es.float().mean().item(), 1 - fooled_full.float().mean().item()
    print(f"PGD {norm} eps={fmt_eps(eps, norm)}: robust acc early stop {acc_es:.4f} without {acc_full:.4f}")
    assert acc_es <= acc_full + 0.01
    # Per example: with the same random start, an example fooled by the full run is fooled by early stopping
    # (float noise from different batch compositions may flip at most one borderline example).
    assert int((fooled_full & ~fooled_es).sum()) <= 1
    assert passes_es < passes_full, "early stopping saved no work"


@pytest.mark.parametrize(("norm", "eps"), [("linf", 16 / 255), ("l2", 1.0)], ids=["linf-16", "l2-1"])
def test_early_stop_freezes_first_adversarial_iterate(norm, eps, digits_classifier, digits_source_test):
    # Early-stopping PGD must be plain PGD truncated per example at its first misclassified iterate: frozen
    # neither later (a point that may no longer fool) nor at some other point.
    x, y = digits_source_test
    model = copy.deepcopy(digits_classifier)
    iterates, wrong = [], []

    def record(mod, args, out):
        iterates.append(args[0].detach().clone())
        wrong.append(out.argmax(1) != y)

    handle = model.register_forward_hook(record)
    torch.manual_seed(0)
    try:
        full = PGD(eps, norm, steps=10, early_stop=False)(model, x, y)
    finally:
        handle.remove()
    assert len(iterates) == 10  # one full-batch forward per step: iterate k is the input of step k
    wrong = torch.stack(wrong)  # (steps, N)
    hit = wrong.any(0)
    first = wrong.float().argmax(0)  # index of the first misclassified iterate (0 if none; masked by `hit`)
    expected = full.clone()
    expected[hit] = torch.stack(iterates)[first[hit], hit.nonzero().squeeze(1)]
    torch.manual_seed(0)
    stopped = PGD(eps, norm, steps=10, early_stop=True)(model, x, y)
    assert hit.any() and (~hit).any(), "need both fooled and robust examples for a meaningful check"
    torch.testing.assert_close(stopped, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize("restarts", [1, 3])
@pytest.mark.parametrize(("norm", "eps"), [("linf", 16 / 255), ("l2", 1.0)], ids=["linf-16", "l2-1"])
def test_early_stop_reports_are_true(norm, eps, restarts, digits_classifier, digits_source_test):
    x, y = digits_source_test
    model = copy.deepcopy(digits_classifier)
    pgd = PGD(eps, norm, steps=10, restarts=restarts, early_stop=True)
    torch.manual_seed(0)
    # What one restart reports as fooled (the examples frozen early, plus the final check) ...
    with attack_mode(model):
        out, fooled = pgd._run(model, x, y, final_check=True)
    with torch.no_grad():
        rescored = model(out).argmax(1) != y
    assert fooled.any(), "nothing was fooled: the check below would be vacuous"
    assert rescored[fooled].all(), "an example reported fooled is classified correctly when re-scored"
    check_adversarial(x, out, norm, eps)
    # ... and through the public call: every example the attack stopped working on stays fooled.
    torch.manual_seed(0)
    x_adv = pgd(model, x, y)
    with torch.no_grad():
        rescored = model(x_adv).argmax(1) != y
    assert rescored[fooled].all()


# ---------------------------------------------------------------------------------------------------------------
# 7. TransferAttack
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "factory",
    [
        functools.partial(PGD, norm="linf", steps=5),
        functools.partial(PGD, norm="l2", steps=5, restarts=2),
        functools.partial(FGSM, norm="linf"),
    ],
    ids=["pgd-linf", "pgd-l2-restarts2", "fgsm-linf"],
)
def test_transfer_crafts_on_surrogate_only(factory, surrogate, batch):
    x, y = batch
    eps = 16 / 255 if factory.keywords["norm"] == "linf" else 1.0
    target = UnqueryableTarget().train()
    transfer = TransferAttack(eps, factory)
    transfer.surrogate = surrogate
    torch.manual_seed(0)
    x_adv = transfer(target, x, y)
    assert all(p.grad is None and p.requires_grad for p in target.parameters())
    assert target.training
    # The same inner attack on the surrogate, under the same seed, gives the same examples.
    torch.manual_seed(0)
    assert torch.equal(x_adv, transfer.base(surrogate, x, y))
    inner = factory(eps=eps)
    if hasattr(inner, "early_stop"):
        inner.early_stop = False
    torch.manual_seed(0)
    assert torch.equal(x_adv, inner(surrogate, x, y))
    check_adversarial(x, x_adv, transfer.norm, eps)


def test_transfer_ignores_target_gradients(model, surrogate, batch):
    x, y = batch
    calls = []
    handle = model.register_forward_hook(lambda mod, args, out: calls.append(1))
    transfer = TransferAttack(16 / 255, functools.partial(PGD, steps=5))
    transfer.surrogate = surrogate
    try:
        transfer(model, x, y)
    finally:
        handle.remove()
    assert not calls, "the target model was run"
    assert all(p.grad is None for p in model.parameters())
    assert all(p.grad is None for p in surrogate.parameters())


def test_transfer_inner_attack_runs_full_budget(digits_classifier, digits_source_test):
    x, y = digits_source_test
    steps = 10
    factory = functools.partial(PGD, norm="linf", steps=steps)  # early_stop defaults to True
    transfer = TransferAttack(16 / 255, factory)
    assert factory(eps=16 / 255).early_stop is True
    assert transfer.base.early_stop is False
    assert transfer.config()["attack"]["early_stop"] is False
    transfer.surrogate = digits_classifier
    transfer(UnqueryableTarget(), x, y)
    # Many examples are fooled within 10 steps at 16/255; with early stopping the pass count would be lower.
    assert transfer.forward_passes == steps * len(x)
    assert transfer.backward_passes == steps * len(x)


def test_transfer_without_surrogate_fails_clearly(model, batch):
    x, y = batch
    with pytest.raises(RuntimeError, match="surrogate"):
        TransferAttack(8 / 255, functools.partial(PGD, steps=2))(model, x, y)


# ---------------------------------------------------------------------------------------------------------------
# 8. Configuration errors
# ---------------------------------------------------------------------------------------------------------------

BAD_CONFIGS = {
    "fgsm-eps-negative": lambda: FGSM(-0.1),
    "pgd-eps-negative": lambda: PGD(-0.1),
    "fgsm-eps-abc": lambda: FGSM("abc"),
    "pgd-eps-abc": lambda: PGD("abc"),
    "pgd-eps-nan": lambda: PGD(math.nan),
    "pgd-eps-inf": lambda: PGD(math.inf),
    "pgd-eps-div0": lambda: PGD("1/0"),
    "pgd-eps-none": lambda: PGD(None),
    "pgd-eps-list": lambda: PGD([0.1]),
    "pgd-steps-0": lambda: PGD(0.1, steps=0),
    "pgd-steps-fractional": lambda: PGD(0.1, steps=2.5),
    "pgd-restarts-0": lambda: PGD(0.1, restarts=0),
    "pgd-step-size-0": lambda: PGD(0.1, step_size=0.0),
    "fgsm-norm-l3": lambda: FGSM(0.1, norm="l3"),
    "pgd-norm-l3": lambda: PGD(0.1, norm="l3"),
    "fgsm-loss-foo": lambda: FGSM(0.1, loss="foo"),
    "pgd-loss-foo": lambda: PGD(0.1, loss="foo"),
    "transfer-eps-negative": lambda: TransferAttack(-0.1, functools.partial(PGD)),
    "transfer-inner-steps-0": lambda: TransferAttack(0.1, functools.partial(PGD, steps=0)),
    "transfer-surrogate-unknown": lambda: TransferAttack(0.1, functools.partial(PGD), surrogate="student"),
}


@pytest.mark.parametrize("build", list(BAD_CONFIGS.values()), ids=list(BAD_CONFIGS))
def test_bad_hyperparameters_rejected(build):
    with pytest.raises(ConfigError):
        build()


def test_parse_eps_and_labels():
    assert parse_eps("8/255") == 8 / 255
    assert parse_eps(" 8 / 255 ") == 8 / 255
    assert parse_eps(0) == 0.0
    assert parse_eps("0.5") == 0.5
    assert PGD("16/255").eps == 16 / 255
    assert eps_tag(8 / 255, "linf") == "8"
    assert eps_tag(0.5, "l2") == "0.5"
    assert PGD("8/255").label == "pgd_linf_8"
