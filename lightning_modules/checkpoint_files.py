"""Checkpoint files as tensors: read weights-only (torch's zip or legacy pickle, safetensors), their wrappers
opened, a digest of their content, and a re-save of a file that needs unpickling.

`read_state` sniffs a file's first bytes before reading it: torch.save's archive and legacy pickle are read with
`torch.load(weights_only=True)`, safetensors with safetensors; anything else (random bytes, a plain pickle) is one
line and no re-save is offered. A torch file that needs arbitrary unpickling names the class it pickles and the
command that re-saves its tensors: `python -m lightning_modules.checkpoints FILE weights.pt` (`resave`: it unpickles
the file once, opens its wrappers, keeps its tensors only, e.g. not a DeiT/MAE file's `argparse.Namespace`, and reads a
class that no longer exists as a plain record). `content_digest` hashes tensors by name, dtype, shape and bytes: what
a cache key of loaded weights follows (not a file's bytes on disk, nor the name torch writes into its archive).
"""

from __future__ import annotations

import functools
import hashlib
import pickle
import re
import shlex
import sys
import types
from pathlib import Path

import torch
import torch.nn as nn

from attacks.errors import ConfigError

WRAPPERS = ("state_dict", "model", "module")
#: The first bytes of the files torch.save writes: a zip archive, or (before torch 1.6) a pickled magic number.
TORCH_MAGIC = (b"PK\x03\x04", b"\x80\x02\x8a\x0a")


def read_state(path: str, where: str) -> dict[str, torch.Tensor]:
    """The flat tensor dict of a file: wrappers opened, DDP's `module.` prefix dropped, weights-only."""
    kind = file_kind(path)
    if kind == "safetensors":
        obj = _read_safetensors(path, where)
    elif kind == "torch":
        obj = _read_torch(path, where)
    else:
        raise ConfigError(
            f"{where}: '{path}' is not a checkpoint file: neither torch.save's (a zip archive, or its legacy pickle) "
            f"nor safetensors' (it starts with bytes {kind}); give a state dict saved with torch.save or safetensors"
        )
    state = _unwrap(obj)
    if not state:
        raise ConfigError(f"{where}: '{path}' holds no state dict of tensors (opened: {', '.join(WRAPPERS)})")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def file_kind(path: str) -> str:
    """`torch` (torch.save's zip archive or legacy pickle), `safetensors`, or else the file's first bytes (hex)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(TORCH_MAGIC):
        return "torch"
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 30:
        return "safetensors"  # an 8-byte little-endian header size, then the JSON header
    return head[:8].hex(" ") or "(empty)"


def _read_safetensors(path: str, where: str) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except Exception as e:  # noqa: BLE001 - a damaged file: one line
        raise ConfigError(f"{where}: '{path}' is not a file safetensors reads ({type(e).__name__}: {e})") from None


def _read_torch(path: str, where: str):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure of a user's file is one line
        text = str(e)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if not found and "Weights only load failed" not in text:
            first = (text.strip().splitlines() or [""])[0][:120]
            raise ConfigError(
                f"{where}: '{path}' is not a file torch.load reads ({type(e).__name__}: {first})"
            ) from None
        what = f"it pickles {found.group(1)}" if found else "it needs arbitrary unpickling"
        raise ConfigError(
            f"{where}: '{path}' is not a weights-only state dict: {what}, and files are only read with "
            "weights_only=True (no code in them runs); if you trust it, re-save its tensors (this unpickles it once, "
            f"weights_only=False): python -m lightning_modules.checkpoints {shlex.quote(str(path))} weights.pt, and "
            "give weights.pt"
        ) from None


def _unwrap(obj) -> dict[str, torch.Tensor]:
    """The flat tensor dict inside a loaded object: {"state_dict": ...}, {"model": ...}, {"module": ...} opened
    (nested), a pickled module's state dict taken (`resave`)."""
    for _ in range(4):
        obj = _as_state(obj)
        if not isinstance(obj, dict) or _tensors(obj):
            break
        inner = next((obj[k] for k in WRAPPERS if isinstance(_as_state(obj.get(k)), dict)), None)
        if inner is None:
            break
        obj = inner
    obj = _as_state(obj)
    return _tensors(obj) if isinstance(obj, dict) else {}


def _as_state(obj):
    """A module (or a module whose class no longer exists, `_Missing`) as its state dict; anything else as it is."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, _Missing):
        fields = obj.fields()
        return _module_state(fields) if "_parameters" in fields else fields
    return obj


def _module_state(fields: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    """The state dict of a pickled `nn.Module` whose class is gone, from its `_parameters`, `_buffers`, `_modules`."""
    out = {}
    for group in ("_parameters", "_buffers"):
        out.update({prefix + n: v.detach() for n, v in (fields.get(group) or {}).items() if v is not None})
    for name, child in (fields.get("_modules") or {}).items():
        if isinstance(child, nn.Module):
            out.update({f"{prefix}{name}.{k}": v for k, v in child.state_dict().items()})
        elif isinstance(child, _Missing):
            out.update(_module_state(child.fields(), f"{prefix}{name}."))
    return out


def content_digest(state: dict[str, torch.Tensor]) -> str:
    """A hash of tensors by name: each name, dtype, shape and bytes, in sorted name order (not the file's bytes, its
    name inside the archive, nor the order of its keys)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


@functools.lru_cache(maxsize=16)
def _file_digest(path: str, size: int, mtime_ns: int, where: str) -> str:
    return content_digest(read_state(path, where))


def file_digest(path: str, where: str) -> str:
    """`content_digest` of a file's tensors as `read_state` reads them (kept per path, size and modification time)."""
    stat = Path(path).stat()
    return _file_digest(str(path), stat.st_size, stat.st_mtime_ns, where)


# ---- re-saving a file that needs unpickling ----------------------------------------------------------------------
class _Missing:
    """An object of a pickled class that cannot be imported any more: its pickled state kept as read."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__["_pickled_state"] = state

    def fields(self) -> dict:
        state = self.__dict__.get("_pickled_state")
        if isinstance(state, tuple) and state and isinstance(state[0], dict):  # (__dict__, __slots__ values)
            state = state[0]
        return state if isinstance(state, dict) else {}


class _LenientUnpickler(pickle.Unpickler):
    """Unpickles everything; a class that cannot be imported becomes a `_Missing` subclass of its name."""

    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Missing,), {"__module__": module})


_LENIENT = types.SimpleNamespace(__name__="pickle", Unpickler=_LenientUnpickler, load=pickle.load)


def resave(src: str, dst: str) -> int:
    """Write the tensors of a file that needs unpickling as a plain state dict (`torch.save`, read weights-only).

    This runs the file's pickled code (`weights_only=False`): only for a file you trust. Classes that no longer
    exist are read as plain records; wrappers are opened as `read_state` opens them. Returns the number of tensors.
    """
    obj = torch.load(src, map_location="cpu", weights_only=False, pickle_module=_LENIENT)
    state = _unwrap(obj)
    if not state:
        raise ConfigError(f"'{src}' holds no state dict of tensors (opened: {', '.join(WRAPPERS)})")
    torch.save(state, dst)
    return len(state)


def _tensors(d: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in d.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def main(argv: list[str]) -> int:
    """`python -m lightning_modules.checkpoints FILE OUT`: `resave` FILE's tensors into OUT."""
    if len(argv) != 2:
        print("usage: python -m lightning_modules.checkpoints FILE OUT  (re-save FILE's tensors, weights-only, as OUT;"
              " this unpickles FILE: only for a file you trust)", file=sys.stderr)  # fmt: skip
        return 2
    try:
        n = resave(*argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{argv[1]}: {n} tensors from {argv[0]} (read with weights_only=True from now on)")
    return 0
