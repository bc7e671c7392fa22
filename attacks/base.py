"""The attack contract and the checks every adversarial example passes before it is scored.

An attack is built from its hyper-parameters and called as `attack(model, x, y) -> x_adv`:
- `model` takes float images in [0, 1] (NCHW) and returns logits; it is attacked in eval mode, and its
  train/eval mode (per submodule) and its parameters' `requires_grad` flags are restored afterwards;
- no gradient is left on the model's parameters (they do not require grad during the attack);
- the device is the inputs' device;
- `x_adv` is in [0, 1] and inside the epsilon ball. `check_adversarial` verifies this before scoring,
  and a violation raises `AttackConstraintError`: it is an error, never a number.

An attack's `config()` (its cache key) is made from the arguments it was constructed with, recorded for every
subclass by the base class (`RecordsArguments`), so a new hyper-parameter cannot be left out of the key;
`replace(**changes)` builds a new attack from them with some changed.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from fractions import Fraction
from typing import Annotated, ClassVar, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from attacks.errors import ConfigError, choose
from attacks.ms_ssim import dssim

NORMS = ("linf", "l2")
LOSSES = ("ce", "margin")


class AttackConstraintError(RuntimeError):
    """An adversarial example left the threat model (epsilon ball, [0, 1] box) or is not finite."""


def parse_eps(value) -> float:
    """An epsilon from a number or a fraction string such as "8/255"; must be finite and >= 0."""
    try:
        eps = float(Fraction(value.replace(" ", ""))) if isinstance(value, str) else float(value)
    except (ValueError, ZeroDivisionError, TypeError):  # TypeError: e.g. `eps: null` or a list in the config
        raise ConfigError(f"epsilon '{value}' is not a number; write e.g. 0.5 or \"8/255\"") from None
    if not math.isfinite(eps) or eps < 0:
        raise ConfigError(f"epsilon must be a finite number >= 0, got {value}")
    return eps


def check_steps(steps, step_size=None) -> int:
    """`steps` as an int, after the checks every iterative attack makes: a ConfigError unless `steps` is an integer
    >= 1 and `step_size`, where given, is above 0."""
    if int(steps) != steps or steps < 1:
        raise ConfigError(f"steps must be an integer >= 1, got {steps}")
    if step_size is not None and parse_eps(step_size) <= 0:
        raise ConfigError(f"step_size must be > 0, got {step_size}")
    return int(steps)


def parse_norm(value) -> str:
    """A norm name, case-insensitive ("Linf", "L2" as AutoAttack and RobustBench write them) -> linf or l2."""
    norm = value.lower() if isinstance(value, str) else value
    if norm not in NORMS:
        choose("norm", value, NORMS)  # the error names the value as written
    return norm


#: Argument types whose parser `config()` applies to the recorded value: the rule the attack itself uses.
Eps = Annotated[float, parse_eps]
Norm = Annotated[str, parse_norm]


#: How an attack reads a tensor that a forward hook captured inside the model (an intermediate layer's output):
#: as is, or, inside `benchmark.runner.stages.attack.precision`, cast to fp32 with fp16's gradient scale, like the
#: outputs of the model's entry points (`forward`, `features`).
_READOUT: ContextVar[Callable[[torch.Tensor], torch.Tensor] | None] = ContextVar("attack_readout", default=None)


def read_out(t: torch.Tensor) -> torch.Tensor:
    """A captured activation as the attack should use it (see `_READOUT`)."""
    fn = _READOUT.get()
    return t if fn is None or not isinstance(t, torch.Tensor) or not t.is_floating_point() else fn(t)


@contextmanager
def readout(fn: Callable[[torch.Tensor], torch.Tensor]):
    """Read captured activations through `fn` inside the block."""
    token = _READOUT.set(fn)
    try:
        yield
    finally:
        _READOUT.reset(token)


def eps_tag(eps: float, norm: str) -> str:
    """A budget in metric names and attack labels: L-inf in 1/255 units (8/255 -> "8"), L2 as is (0.5 -> "0.5").
    (A row's `eps_label` is the budget as configured, "8/255".)"""
    return f"{round(eps * 255, 3):g}" if norm == "linf" else f"{round(eps, 4):g}"


@contextmanager
def attack_mode(model: nn.Module):
    """Put `model` in eval mode with frozen parameters; restore every submodule's mode and flags after."""
    modes = [(m, m.training) for m in model.modules()]
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


def attack_loss(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-batch sum of the loss the attacker maximizes.

    ce: cross-entropy with labels y. margin: the CW margin max_{j!=y} z_j - z_y. kl: KL(y || softmax(logits))
    with y a probability matrix (TRADES's inner maximization, where y is the clean prediction).
    """
    if kind == "ce":
        return F.cross_entropy(logits, y, reduction="sum")
    if kind == "kl":
        return F.kl_div(F.log_softmax(logits, dim=1), y, reduction="sum")
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return (others.amax(1) - z_y).sum()


def lp_norm(t: torch.Tensor, norm: str) -> torch.Tensor:
    """Per-example norm of a batch of perturbations."""
    flat = t.flatten(1)
    return flat.abs().amax(1) if norm == "linf" else flat.norm(dim=1)


#: Budgets `check_adversarial` knows besides the L-p balls: `dssim`, the structural dissimilarity (1 - MS-SSIM) / 2
#: of the mimicry attack (Wang et al. 2018), eps being its threshold P; `patch`, one square patch (AdvEncoder-PAT),
#: eps being its area as a fraction of the image: every changed pixel lies in a square of side
#: `patch_side(eps, H, W)` (`patch_extent`).
BUDGETS = (*NORMS, "dssim", "patch")
#: Absolute slack of the DSSIM check: the attack keeps iterates with D < P computed in float32, the check recomputes
#: D in float64; the two differ by about 1e-7 on [0, 1] images.
DSSIM_ATOL = 1e-5


def patch_side(area: float, h: int, w: int) -> int:
    """The side of a square patch of `area` (a fraction of the H x W image): floor(sqrt(area * H * W)), as
    AdvEncoder sizes it (11 px at 3 % of 64 x 64)."""
    return math.floor(math.sqrt(area * h * w) + 1e-9)


def patch_extent(x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """Per example, the side of the smallest square holding every changed pixel (any channel; 0 if none)."""
    changed = (x_adv != x).any(1)  # (N, H, W)
    sides = []
    for axis in (2, 1):  # rows: any change along the columns; then columns
        hit = changed.any(axis)
        idx = torch.arange(hit.shape[1], device=x.device).expand_as(hit)
        first = torch.where(hit, idx, hit.shape[1]).amin(1)
        last = torch.where(hit, idx, -1).amax(1)
        sides.append((last - first + 1).clamp_min(0))
    return torch.maximum(*sides)


def check_adversarial(x: torch.Tensor, x_adv: torch.Tensor, norm: str, eps: float, atol: float = 1e-6) -> None:
    """Raise `AttackConstraintError` unless x_adv is finite, in [0, 1] and within eps of x (float round-off allowed).

    `norm` is linf, l2, dssim (eps is then the DSSIM threshold P; `attacks.ms_ssim.dssim`, per example) or patch
    (eps is the patch's area fraction; see `BUDGETS`).
    """
    if norm not in BUDGETS:
        choose("budget", norm, BUDGETS)
    if x_adv.shape != x.shape:
        raise AttackConstraintError(f"x_adv has shape {tuple(x_adv.shape)}, expected {tuple(x.shape)}")
    if not torch.isfinite(x_adv).all():
        raise AttackConstraintError(f"{int((~torch.isfinite(x_adv)).sum())} non-finite values in x_adv")
    lo, hi = float(x_adv.min()), float(x_adv.max())  # an empty batch raises here: no attack makes one
    if lo < -atol or hi > 1 + atol:
        raise AttackConstraintError(f"x_adv leaves [0, 1]: min {lo:.3g}, max {hi:.3g}")
    if norm == "patch":
        side = patch_side(eps, *x.shape[-2:])
        extent = int(patch_extent(x, x_adv).max())
        if extent > side:
            raise AttackConstraintError(f"x_adv leaves the patch budget: changes span {extent} px > side {side} px")
        return
    if norm == "dssim":
        dist = float(dssim(x_adv.double(), x.double()).max())
        if not dist <= eps + DSSIM_ATOL:  # `not <=`: a NaN distance fails too
            raise AttackConstraintError(f"x_adv leaves the DSSIM budget: DSSIM {dist:.6g} > P {eps:.6g}")
        return
    dist = float(lp_norm((x_adv - x).double(), norm).max())
    if dist > eps * (1 + 1e-5) + atol:
        raise AttackConstraintError(f"x_adv leaves the {norm} ball: distance {dist:.6g} > eps {eps:.6g}")


@functools.cache
def _signature(cls: type) -> inspect.Signature:
    """The constructor's signature without `self`."""
    sig = inspect.signature(cls.__init__)
    return sig.replace(parameters=list(sig.parameters.values())[1:])


@functools.cache
def _parsers(cls: type) -> dict[str, list]:
    """Per constructor argument, the parsers its annotation carries (`Eps`, `Norm`, also inside `X | None`)."""

    def found(hint) -> list:
        if typing.get_origin(hint) is Annotated:
            return [m for m in hint.__metadata__ if callable(m)]
        if typing.get_origin(hint) in (Union, types.UnionType):
            return [p for arg in typing.get_args(hint) for p in found(arg)]
        return []

    hints = typing.get_type_hints(cls.__init__, include_extras=True)
    return {name: found(hint) for name, hint in hints.items()}


def _bind(cls: type, args: tuple, kwargs: dict, partial: bool = False) -> dict:
    """The named arguments of a call of `cls`, defaults applied (`partial`: arguments may be missing)."""
    sig = _signature(cls)
    bound = sig.bind_partial(*args, **kwargs) if partial else sig.bind(*args, **kwargs)
    bound.apply_defaults()
    arguments = {}
    for name, value in bound.arguments.items():
        kind = sig.parameters[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            raise TypeError(f"{cls.__name__}: an attack's arguments need names (they are its cache key), not *{name}")
        if kind is inspect.Parameter.VAR_KEYWORD:
            arguments.update(value)
        else:
            arguments[name] = value
    return arguments


def normalized(cls: type, arguments: Mapping) -> dict:
    """Recorded arguments of `cls` as JSON values, each parsed by its annotation's rule ("8/255" -> 0.0313...)."""
    parsers = _parsers(cls)
    out = {}
    for name, value in arguments.items():
        for parse in parsers.get(name, ()) if value is not None else ():
            value = parse(value)
        out[name] = jsonable(value, name)
    return out


def jsonable(value, name: str = "value"):
    """A config value as JSON: an attack -> its config, an attack factory (`functools.partial` of an attack
    class, a Hydra `_partial_`) -> the config its arguments give (without those the caller adds, e.g. eps),
    mappings and sequences (OmegaConf's included) element-wise. Anything else cannot be a cache key: an error."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, Attack):
        return value.config()
    partial = isinstance(value, functools.partial)
    func, args, kwargs = (value.func, value.args, value.keywords) if partial else (value, (), {})
    if isinstance(func, type) and issubclass(func, Attack):
        return {"name": func.name, **normalized(func, _bind(func, args, kwargs, partial=True))}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, f"{name}.{k}") for k, v in value.items()}
    if isinstance(value, Sequence):
        return [jsonable(v, f"{name}[{i}]") for i, v in enumerate(value)]
    raise ConfigError(
        f"argument {name}={value!r} cannot go into an attack's config; valid: numbers, strings, booleans, None, "
        "lists, mappings, attacks, attack classes and functools.partial of them"
    )


class RecordsArguments(type):
    """Metaclass of `Attack`: records the arguments of every construction, defaults applied, once the constructor
    succeeded, and checks that they can go into the config. Copies (`copy.deepcopy`, pickle) keep the record."""

    @property
    def __signature__(cls) -> inspect.Signature:
        # What `inspect.signature(PGD)` shows: the constructor's, not this metaclass's `__call__(*args, **kwargs)`.
        return _signature(cls)

    def __call__(cls, *args, **kwargs):
        attack = super().__call__(*args, **kwargs)
        attack._arguments = _bind(cls, args, kwargs)
        attack.config()  # a value that cannot be a cache key fails at construction, not when the cell is cached
        return attack


class Attack(metaclass=RecordsArguments):
    """Base of every attack: validation of the threat model, the call contract, pass counting, the config.

    Args:
        eps: the perturbation budget (>= 0; a number or a fraction string such as "8/255").
        norm: linf or l2 (any case).
        eot: gradient samples per step (expectation over transformation); see `loss_and_grad`.
        bpda: take gradients through the model's BPDA view; see `gradient_model`.
    """

    name: ClassVar[str] = "attack"
    #: Crafted once on a surrogate the attacker holds (the public teacher or encoder) and scored on every student:
    #: the runner sets `surrogate` (and `attacker_data`, the (x, y) the attacker may fit on: never the test split),
    #: then calls the attack with the surrogate as its model. Transfer, mimicry, universal perturbations.
    crafted: ClassVar[bool] = False
    #: The threat model a crafted attack's rows report (white-box attacks: "white-box").
    threat_model: ClassVar[str] = "white-box"

    def __init__(self, eps: Eps, norm: Norm = "linf", eot: int = 1, bpda: bool = False):
        norm = parse_norm(norm)
        if int(eot) != eot or eot < 1:
            raise ConfigError(f"eot must be an integer >= 1, got {eot}")
        self.eps = parse_eps(eps)
        self.norm = norm
        self.eot = int(eot)
        self.bpda = bool(bpda)
        self.forward_passes = 0  # examples x forward passes, for cost accounting
        self.backward_passes = 0

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, y = x.detach(), y.detach()
        # enable_grad: the attack needs input gradients even when the caller evaluates under torch.no_grad().
        with attack_mode(model), torch.enable_grad():
            x_adv = self.perturb(model, x, y)
        return x_adv.detach()

    def perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def arguments(self) -> dict:
        """The arguments the attack was constructed with, defaults included, as given."""
        return dict(self._arguments)

    def config(self) -> dict:
        """Everything that determines the attack's result, for cache keys and the results: `name`, then the
        constructor's arguments (defaults included, JSON values, see `jsonable`), then
        `derived_config()`."""
        return {"name": self.name, **normalized(type(self), self._arguments), **jsonable(self.derived_config())}

    def derived_config(self) -> dict:
        """Values the constructor derives from its arguments, recorded in `config()` over them. A subclass lists
        a `None` default resolved to the value it stands for (PGD's step size), so that two spellings of the same
        attack share a cache key; never anything that is not a function of the arguments."""
        return {}

    def replace(self, **changes) -> Attack:
        """A new attack built from this one's constructor arguments with `changes` applied (this one is untouched).

        Derived values follow the new arguments (PGD's default step size follows a new eps). Run-time state
        (pass counts, a transfer attack's surrogate) is not carried over.
        """
        unknown = sorted(set(changes) - set(self._arguments))
        if unknown:
            valid = ", ".join(self._arguments)
            raise ConfigError(f"{type(self).__name__} has no argument '{unknown[0]}'; valid: {valid}")
        return type(self)(**{**self._arguments, **changes})

    @property
    def label(self) -> str:
        prefix = ("bpda_" if self.bpda else "") + ("eot_" if self.eot > 1 else "")
        return f"{prefix}{self.name}_{self.norm}_{eps_tag(self.eps, self.norm)}"

    def gradient_model(self, model: nn.Module) -> nn.Module:
        """The model whose gradients guide the attack: the model, or its BPDA view (identity backward through
        its preprocessing, Athalye et al. 2018) when `bpda`."""
        if not self.bpda:
            return model
        if not hasattr(model, "bpda"):
            raise AttackConstraintError(
                f"BPDA needs a deployed model with a preprocessing step; {type(model).__name__} has none"
            )
        return model.bpda()

    def loss_and_grad(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "ce"):
        """Logits at x and the gradient of the attack loss with respect to x.

        With `eot` > 1 (expectation over transformation, Athalye et al. 2018) the gradient is the mean over
        `eot` forward passes, each drawing the model's randomness afresh (one pass at a time, so any kind of
        randomness works and memory stays that of one pass); the logits are their mean.
        """
        grad_model = self.gradient_model(model)
        x = x.detach().requires_grad_(True)
        logits_sum, grad_sum = None, None
        for _ in range(self.eot):
            logits = grad_model(x)
            (grad,) = torch.autograd.grad(attack_loss(logits, y, loss), x)
            logits_sum = logits.detach() if logits_sum is None else logits_sum + logits.detach()
            grad_sum = grad if grad_sum is None else grad_sum + grad
        self.forward_passes += len(x) * self.eot
        self.backward_passes += len(x) * self.eot
        return logits_sum / self.eot, grad_sum / self.eot

    def step(self, x: torch.Tensor, grad: torch.Tensor, size: float) -> torch.Tensor:
        """One steepest-ascent step of the given size under the attack's norm."""
        if self.norm == "linf":
            return x + size * grad.sign()
        g = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (grad.ndim - 1)))
        return x + size * grad / g

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Project onto the eps ball around x, then onto [0, 1]."""
        if self.norm == "linf":
            return torch.minimum(torch.maximum(x_adv, x - self.eps), x + self.eps).clamp_(0, 1)
        delta = x_adv - x
        n = delta.flatten(1).norm(dim=1).view(-1, *([1] * (x.ndim - 1)))
        factor = (self.eps / n.clamp_min(1e-12)).clamp(max=1.0)
        return (x + delta * factor).clamp_(0, 1)
