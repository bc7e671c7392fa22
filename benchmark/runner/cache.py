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
either a whole entry or none, and a rerun continues. Its meta.json keeps the sha256 of every file and of the meta
itself (`_checksums`): an entry damaged later (a truncated or altered file, a hand-edited meta.json) is reported in
one line, removed and computed again. A stage is claimed (`Cache.claim`, a kernel lock on a file beside the entry)
while it is computed, so processes sharing the cache compute each stage once; a dead process's claim is released
with it, and the next run computes its stage.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from omegaconf import DictConfig, ListConfig, OmegaConf

#: Bump when the format of a cache entry changes (not for code changes: the code fingerprint covers those).
CACHE_VERSION = 5
#: The suite's packages: their source is fingerprinted into the keys of the stages that run it.
ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("attacks", "benchmark", "datamodules", "defenses", "lightning_modules")
#: Suite modules that cannot change a stage's result, so not fingerprinted (their own imports still are): the error
#: messages, the cache itself, and a training stage's W&B logger. The logger only records what the stage computes:
#: whether it is on is no part of a stage's key either (`job_key_spec` leaves the `wandb` config out), so an edit of
#: it must not retrain every model. W&B tracking (`benchmark.tracking.runs`) is the top floor: no stage imports it.
NON_SEMANTIC_MODULES = frozenset({"attacks.errors", "benchmark.runner.cache", "lightning_modules.loggers"})
#: The libraries whose versions enter every key (a missing one enters as None).
LIBRARIES = ("torch", "torchvision", "lightning", "torchmetrics", "timm", "scikit-learn", "pyautoattack", "lightly")


def _plain(obj: Any) -> Any:
    """JSON-ready, order-independent form of configs (OmegaConf nodes included)."""
    try:
        if isinstance(obj, (DictConfig, ListConfig)):
            obj = OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, float):
        return float(obj)
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


#: `_imports` per (file, its mtime and size, root): a plan computes hundreds of stage keys over the same files.
_IMPORTS: dict[tuple, set[str]] = {}


def _imports(file: Path, root: Path) -> set[str]:
    """The suite modules a file imports (`from a.b import c` names a.b, and a.b.c when that is a module); parsed
    once per version of the file (a file changed since, in mtime or size, is parsed again)."""
    st = file.stat()
    key = (str(file), st.st_mtime_ns, st.st_size, str(root))
    if key not in _IMPORTS:
        _IMPORTS[key] = _parse_imports(file, root)
    return set(_IMPORTS[key])


def _parse_imports(file: Path, root: Path) -> set[str]:
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


#: `code_fingerprint` per version of its files (each file's name, mtime and size), as `_IMPORTS`: a plan asks for
#: the same closures hundreds of times, and hashing their sources each time was a tenth of a warm rerun.
_FINGERPRINTS: dict[tuple, str] = {}


#: Inside `frozen_code()`: fingerprints by (root, modules), each computed once.
_FROZEN: dict[tuple, str] | None = None


@contextmanager
def frozen_code():
    """Within the block, each module set's fingerprint is computed once and then reused without looking at the files
    again (a plan asks for the same few sets hundreds of times, and their stat calls were seconds of a warm rerun):
    for a span in which the code cannot change, such as making a plan. Outside it, every call looks at the files."""
    global _FROZEN
    outer = _FROZEN
    _FROZEN = {} if outer is None else outer
    try:
        yield
    finally:
        _FROZEN = outer


def code_fingerprint(modules: tuple[str, ...] | list[str], root: Path | None = None) -> str:
    """A hash of the source of `modules` and of every suite module they import (see `module_closure`)."""
    root = root or ROOT
    if _FROZEN is None:
        return _code_fingerprint(tuple(modules), root)
    key = (str(root), tuple(modules))
    if key not in _FROZEN:
        _FROZEN[key] = _code_fingerprint(tuple(modules), root)
    return _FROZEN[key]


def _code_fingerprint(modules: tuple[str, ...], root: Path) -> str:
    files = [(name, _module_file(name, root)) for name in module_closure(tuple(modules), root)]
    stamp = (str(root), *((name, st.st_mtime_ns, st.st_size) for name, st in ((n, f.stat()) for n, f in files)))
    if stamp not in _FINGERPRINTS:
        h = hashlib.sha256()
        for name, f in files:
            h.update(name.encode() + b"\0" + f.read_bytes() + b"\0")
        _FINGERPRINTS[stamp] = h.hexdigest()[:16]
    return _FINGERPRINTS[stamp]


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


#: The key in meta.json that holds the entry's checksums (left out of what `Cache.meta` returns).
CHECKSUMS = "_checksums"
log = logging.getLogger(__name__)


class DamagedEntry(RuntimeError):
    """A cache entry that fails its checksums (it has been removed; the stage is computed again)."""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _meta_sha256(meta: dict) -> str:
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


#: Entries verified by this process, with the (size, mtime) of their files then: a file is hashed again only
#: when it changed, so repeated lookups of a large model state cost a stat, not a read.
_VERIFIED: dict[Path, tuple] = {}


def _signature(folder: Path) -> tuple:
    return tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in folder.iterdir()))


class Cache:
    """Stage results on disk: `<root>/<kind>/<key>/{meta.json, *.pt, *.npy}` (a crafted set: `x_adv.npy`); claims in
    `<root>/<kind>/.<key>.claim`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def exists(self, kind: str, key: str) -> bool:
        """Whether the entry is there, without verifying it (cheap: for progress counts)."""
        return (self.path(kind, key) / "meta.json").exists()

    def meta(self, kind: str, key: str) -> dict | None:
        """The entry's metadata, or None if the stage has not finished or its entry was damaged (then removed)."""
        try:
            return self._verified(kind, key)
        except DamagedEntry:
            return None

    def file(self, kind: str, key: str, name: str) -> Path:
        """The path of a file of the entry (verified), for files read in parts (a crafted set, `put(files=...)`)."""
        if self._verified(kind, key) is None:
            raise FileNotFoundError(f"cache entry {kind}/{key} is missing: its stage has not finished")
        return self.path(kind, key) / name

    @contextmanager
    def staging(self, kind: str, key: str) -> Iterator[Path]:
        """A temporary folder beside the entries (removed after), to write a file a batch at a time before `put`
        moves it into the entry (`files`)."""
        parent = self.root / kind
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{key}.staging.", dir=parent) as tmp:
            yield Path(tmp)

    def tensors(self, kind: str, key: str, name: str) -> Any:
        if self._verified(kind, key) is None:
            raise FileNotFoundError(f"cache entry {kind}/{key} is missing: its stage has not finished")
        return torch.load(self.path(kind, key) / f"{name}.pt", map_location="cpu", weights_only=True)

    def _verified(self, kind: str, key: str) -> dict | None:
        """The meta of an entry whose checksums hold; None if absent. A damaged entry is reported in one line,
        removed (so that the stage is computed again) and raised as `DamagedEntry`."""
        folder = self.path(kind, key)
        try:
            record = json.loads((folder / "meta.json").read_text())
            signature = _signature(folder)
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            self._damaged(kind, key, "meta.json is not valid JSON")
        sums = record.pop(CHECKSUMS, None) if isinstance(record, dict) else None
        if not isinstance(sums, dict) or sums.get("meta") != _meta_sha256(record):
            self._damaged(kind, key, "meta.json was altered (its checksum does not match)")
        if _VERIFIED.get(folder) != signature:
            for name, expected in sorted(sums.get("files", {}).items()):
                f = folder / name
                if not f.exists():
                    self._damaged(kind, key, f"{name} is missing")
                if file_sha256(f) != expected:
                    size = f.stat().st_size
                    self._damaged(kind, key, f"{name} is truncated or altered (sha256 mismatch, {size} bytes)")
            _VERIFIED[folder] = signature
        return record

    def _damaged(self, kind: str, key: str, why: str):
        folder = self.path(kind, key)
        _VERIFIED.pop(folder, None)
        aside = folder.parent / f".{key}.damaged.{uuid.uuid4().hex[:8]}"
        try:  # rename first: atomic, so two processes that find it damaged do not delete each other's new entry
            os.replace(folder, aside)
            shutil.rmtree(aside, ignore_errors=True)
        except FileNotFoundError:  # another process removed it first
            pass
        log.warning("cache: damaged entry %s/%s removed (%s); its stage is computed again", kind, key, why)
        raise DamagedEntry(f"cache entry {kind}/{key}: {why}")

    def put(self, kind: str, key: str, meta: dict, tensors: dict | None = None, files: dict | None = None) -> Path:
        """Write an entry atomically (temporary folder, then rename), with the sha256 of each file and of the meta.
        `tensors` are saved as `<name>.pt`; `files` (name -> path: a file already written, e.g. a batch at a time in
        `staging`) are moved in under their name."""
        final = self.path(kind, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
        try:
            sums = {}
            for name, value in (tensors or {}).items():
                torch.save(value, tmp / f"{name}.pt")
                sums[f"{name}.pt"] = file_sha256(tmp / f"{name}.pt")
            for name, path in (files or {}).items():
                shutil.move(path, tmp / name)
                sums[name] = file_sha256(tmp / name)
            plain = _plain(meta)
            record = {**plain, CHECKSUMS: {"meta": _meta_sha256(plain), "files": sums}}
            (tmp / "meta.json").write_text(json.dumps(record, indent=1))
            if final.exists():  # a concurrent writer finished first; both computed the same thing
                shutil.rmtree(tmp)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def claim_path(self, kind: str, key: str) -> Path:
        return self.root / kind / f".{key}.claim"

    @contextmanager
    def claim(self, kind: str, key: str, wait: bool = True, on_wait=None) -> Iterator[bool]:
        """Hold the claim on a stage while computing it: yields True once held, or False at once when another
        process holds it and `wait` is False. `on_wait()` is called once if the claim has to be waited for.

        The claim is a kernel lock (`filelock.FileLock`, flock) on a file beside the entry: it is released when its
        holder ends, even by SIGKILL, so a dead worker's stage is free for the next one. On a filesystem without
        flock, filelock falls back to a marker file whose holder is checked by pid. The caller checks the cache
        again once it holds the claim: the stage may have finished while it waited.
        """
        path = self.claim_path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path), timeout=0, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            if not wait:
                yield False
                return
            if on_wait is not None:
                on_wait()
            while True:
                time.sleep(0.2)
                try:
                    lock.acquire()
                    break
                except Timeout:
                    continue
        try:
            yield True
        finally:
            lock.release()
