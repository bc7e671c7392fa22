"""A content-addressed cache of finished stages.

A stage's key is a hash of everything that determines its result (`stage_key`):
- its spec: every config value the stage reads, and the keys of the stages it consumes (a student's key
  contains its teacher's key, an attack cell's key its model's key and, for transfer, its crafted set's key);
- the versions of the libraries that compute it (`LIBRARIES`);
- a fingerprint of the suite's own source that it runs (`code_fingerprint`): the files of the modules it names
  and, transitively, of every suite module they import. Editing a line of `attacks/pgd.py` changes the key of
  every stage that runs PGD (cells, crafted sets, PGD-AT's training), and of nothing else.
`CACHE_VERSION` is bumped only for changes of the entry format.

An entry is written to a temporary folder and renamed into place when complete, so an interrupted run leaves
either a whole entry or none, and a rerun continues.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

#: Bump when the format of a cache entry changes (not for code changes: the code fingerprint covers those).
CACHE_VERSION = 4
#: The suite's packages: their source is fingerprinted into the keys of the stages that run it.
ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("attacks", "benchmark", "datamodules", "defenses", "lightning_modules")
#: Suite modules that cannot change a stage's result (messages, tracking, the cache itself): not fingerprinted.
NON_SEMANTIC_MODULES = frozenset({"attacks.errors", "benchmark.cache", "benchmark.tracking"})
#: The libraries whose versions enter every key (a missing one enters as None).
LIBRARIES = ("torch", "torchvision", "lightning", "torchmetrics", "timm", "scikit-learn", "pyautoattack", "lightly")


def _plain(obj: Any) -> Any:
    """JSON-ready, order-independent form of configs (OmegaConf nodes included)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            obj = OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float):
        return float(repr(obj))
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


@functools.cache
def library_versions() -> dict[str, str | None]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    out["torch"] = torch.__version__
    return out


def _module_file(name: str, root: Path) -> Path | None:
    parts = name.split(".")
    if parts[0] not in PACKAGES:
        return None
    for f in (root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")):
        if f.is_file():
            return f
    return None


def _imports(file: Path, root: Path) -> set[str]:
    """The suite modules a file imports (`from a.b import c` names a.b, and a.b.c when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(file.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        found.update(n for n in names if _module_file(n, root) is not None)
    return found


def module_closure(modules: tuple[str, ...] | list[str], root: Path | None = None) -> list[str]:
    """The suite modules that `modules` run: themselves and every suite module they import, transitively."""
    root = root or ROOT
    seen: set[str] = set()
    todo = [m for m in modules if _module_file(m, root) is not None]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(_imports(_module_file(name, root), root) - seen)
    return sorted(seen - NON_SEMANTIC_MODULES)


def code_fingerprint(modules: tuple[str, ...] | list[str], root: Path | None = None) -> str:
    """A hash of the source of `modules` and of every suite module they import (see `module_closure`)."""
    root = root or ROOT
    h = hashlib.sha256()
    for name in module_closure(tuple(modules), root):
        h.update(name.encode() + b"\0" + _module_file(name, root).read_bytes() + b"\0")
    return h.hexdigest()[:16]


def stage_key(kind: str, spec: dict, modules: tuple[str, ...] | list[str] = ()) -> str:
    """The content hash of a stage: its kind, its spec, the code it runs, the library and cache versions."""
    payload = {
        "kind": kind,
        "spec": _plain(spec),
        "code": code_fingerprint(tuple(modules)) if modules else None,
        "libraries": library_versions(),
        "cache_version": CACHE_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:20]


class Cache:
    """Stage results on disk: `<root>/<kind>/<key>/{meta.json, *.pt}`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def meta(self, kind: str, key: str) -> dict | None:
        """The entry's metadata, or None if the stage has not finished."""
        f = self.path(kind, key) / "meta.json"
        return json.loads(f.read_text()) if f.exists() else None

    def tensors(self, kind: str, key: str, name: str) -> Any:
        return torch.load(self.path(kind, key) / f"{name}.pt", map_location="cpu", weights_only=True)

    def put(self, kind: str, key: str, meta: dict, tensors: dict[str, Any] | None = None) -> Path:
        """Write an entry atomically (temporary folder, then rename)."""
        final = self.path(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
        try:
            for name, value in (tensors or {}).items():
                torch.save(value, tmp / f"{name}.pt")
            (tmp / "meta.json").write_text(json.dumps(_plain(meta), indent=1))
            if final.exists():  # a concurrent writer finished first; both computed the same thing
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final
