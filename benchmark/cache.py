"""A content-addressed cache of finished stages.

A stage's key is a hash of everything that determines its result: its full configuration, the keys of
the stages it consumes (a student's key contains its teacher's key, an attack's key its student's), the
data fingerprint, and the library versions. An entry is written to a temporary folder and renamed into
place when complete, so an interrupted run leaves either a whole entry or none, and a rerun continues.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

#: Bump when a change of the suite's code changes what a cached stage would contain.
CACHE_VERSION = 3


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


def stage_key(kind: str, spec: dict) -> str:
    """The content hash of a stage: its kind, its spec, the cache and torch versions."""
    payload = {"kind": kind, "spec": _plain(spec), "cache_version": CACHE_VERSION, "torch": torch.__version__}
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
