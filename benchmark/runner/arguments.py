"""A config's arguments against its `_target_`'s constructor: one line, before anything is built.

`check_arguments(cfg, where, runtime)` looks the target up (it builds nothing) and matches the config's keys with
the arguments the target accepts: its own and, through `**kwargs`, those of the base classes it hands them to
(PGD-AT's `lr` is `ClassifierModule`'s). A key that no constructor of the chain takes is one line that names the
config entry, the class, the closest valid name (difflib) and every valid one; so is a required argument that
neither the config nor the runner (`runtime`: the model, the teacher's weights, an attack's budget) gives. Nested
`_target_` configs (a transfer attack's inner attack, AToP's generator) are checked the same way.

The values are the constructors' own business: `benchmark.runner.config.validate` runs them on the meta device.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable
from typing import Any

from hydra.utils import get_object

from attacks.errors import ConfigError
from defenses.base import TRAIN_ATTACK_KEYS

#: Hydra's instantiation keys: no argument of the target.
HYDRA_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})
NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def accepted(target: Any) -> tuple[dict[str, inspect.Parameter], bool]:
    """The named arguments that `target` (a class or a function) accepts, and whether it takes any other name too.

    A class's `__init__` that has `**kwargs` is read as passing them on to the next `__init__` of its MRO (the
    suite's convention: a defense passes its base's arguments through); the chain ends at the first `__init__`
    without `**kwargs`. A subclass's parameter shadows its base's (its default, its being required)."""
    if not inspect.isclass(target):
        params = list(inspect.signature(target).parameters.values())
        open_ = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
        return {p.name: p for p in params if p.kind in NAMED}, open_
    named: dict[str, inspect.Parameter] = {}
    for klass in target.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or klass is object:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]  # without self
        for p in params:
            if p.kind in NAMED:
                named.setdefault(p.name, p)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return named, False
    return named, True


def _locate(path: str) -> Any | None:
    try:
        return get_object(path)
    except Exception:  # noqa: BLE001 - an unknown target is reported, in one line, by `build`
        return None


def _train_attack_keys() -> tuple[str, ...]:
    return TRAIN_ATTACK_KEYS


def check_arguments(cfg: dict, where: str, runtime: Iterable[str] = ()) -> None:
    """Raise a one-line `ConfigError` for a key of `cfg` that its `_target_` does not take, or for a required
    argument that neither `cfg` nor the runner (`runtime`) gives; recurse into nested `_target_` configs."""
    for key, value in cfg.items():
        if isinstance(value, dict) and "_target_" in value:
            check_arguments(value, f"{where}.{key}")
    target = _locate(str(cfg.get("_target_")))
    if target is None:
        return
    named, open_ = accepted(target)
    runtime = set(runtime)
    valid = sorted(n for n in named if n not in runtime)
    name = getattr(target, "__name__", str(target))
    for key in cfg:
        if key in HYDRA_KEYS:
            continue
        if key in runtime:
            raise ConfigError(f"{where}: '{key}' is given by the runner, not by the config; valid: {', '.join(valid)}")
        if key in named or open_:
            continue
        close = difflib.get_close_matches(key, valid, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        if "train_attack" in named and key in _train_attack_keys():
            hint = f" (a setting of the training attack: give train_attack.{key})"
        raise ConfigError(f"{where}: {name} has no argument '{key}'{hint}; valid: {', '.join(valid)}")
    if cfg.get("_partial_"):  # the rest comes later (a transfer attack's inner attack gets its budget)
        return
    missing = [
        n for n, p in named.items() if p.default is inspect.Parameter.empty and n not in cfg and n not in runtime
    ]
    if missing:
        raise ConfigError(f"{where}: {name} needs {', '.join(repr(m) for m in missing)}; valid: {', '.join(valid)}")
