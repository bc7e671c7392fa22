"""The content-addressed stage cache (benchmark/runner/cache.py): the keys and what enters them (equal specs in other
forms, the code closure of a stage, the library versions), atomic entries, checksums, claims. Some tests pin exact
values found by mutation testing (`make mutate`, tests/mutation/mutate.py).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmark.runner.cache import Cache, DamagedEntry, stage_key

ROOT = Path(__file__).resolve().parents[2]


def test_key_is_stable_and_order_independent():
    a = stage_key("student", {"lr": 0.1, "mode": "finetune", "layers": ["a", "b"]})
    assert a == stage_key("student", {"mode": "finetune", "layers": ["a", "b"], "lr": 0.1})
    assert a != stage_key("student", {"mode": "finetune", "layers": ["a", "b"], "lr": 0.01})
    assert a != stage_key("teacher", {"mode": "finetune", "layers": ["a", "b"], "lr": 0.1})
    assert a != stage_key("student", {"mode": "finetune", "layers": ["b", "a"], "lr": 0.1})


def test_put_then_read(tmp_path):
    cache = Cache(tmp_path)
    assert cache.meta("attack", "k") is None
    flags = {"clean_correct": torch.tensor([True, False])}
    cache.put("attack", "k", {"seconds": 1.5}, {"flags": flags})
    assert cache.meta("attack", "k") == {"seconds": 1.5}
    assert torch.equal(cache.tensors("attack", "k", "flags")["clean_correct"], flags["clean_correct"])
    assert not [p for p in (tmp_path / "attack").iterdir() if p.name.startswith(".")], "temporary folder left behind"


def test_an_interrupted_write_leaves_no_entry(tmp_path, monkeypatch):
    cache = Cache(tmp_path)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with contextlib.suppress(KeyboardInterrupt):
        cache.put("attack", "k", {"x": 1}, {"flags": {}})
    assert cache.meta("attack", "k") is None
    assert list((tmp_path / "attack").iterdir()) == []


# ---- damaged entries: detected by their checksums, reported in one line, computed again -----------------------
def _entry(tmp_path) -> tuple[Cache, object]:
    cache = Cache(tmp_path)
    folder = cache.put("attack", "k", {"seconds": 1.5}, {"outcome": {"adv": torch.arange(1000) % 3 == 0}})
    assert cache.meta("attack", "k") == {"seconds": 1.5}
    return cache, folder


def _truncate(folder):
    f = folder / "outcome.pt"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _flip_a_byte(folder):
    f = folder / "outcome.pt"
    data = bytearray(f.read_bytes())
    data[-40] ^= 0xFF  # same size, one byte changed
    f.write_bytes(bytes(data))


def _garble_meta(folder):
    (folder / "meta.json").write_text('{"seconds": 1.5, "_checks')


def _edit_meta(folder):
    f = folder / "meta.json"
    f.write_text(f.read_text().replace("1.5", "2.5"))


@pytest.mark.parametrize(
    "damage, why",
    [
        (_truncate, "outcome.pt is truncated or altered"),
        (_flip_a_byte, "outcome.pt is truncated or altered"),
        (_garble_meta, "meta.json is not valid JSON"),
        (_edit_meta, "meta.json was altered"),
    ],
)
def test_a_damaged_entry_is_reported_in_one_line_and_removed(tmp_path, caplog, damage, why):
    cache, folder = _entry(tmp_path)
    damage(folder)
    with caplog.at_level(logging.WARNING, logger="benchmark.runner.cache"):
        assert cache.meta("attack", "k") is None, "a damaged entry was taken as finished"
    (record,) = caplog.records
    assert why in record.getMessage() and "\n" not in record.getMessage()
    assert not folder.exists(), "the damaged entry must go, so that the stage is computed again"
    cache.put("attack", "k", {"seconds": 3.0}, {"outcome": {"adv": torch.ones(3, dtype=torch.bool)}})
    assert cache.meta("attack", "k") == {"seconds": 3.0}


def test_a_file_damaged_after_its_entry_was_read_is_caught_when_loaded(tmp_path):
    cache, folder = _entry(tmp_path)
    _truncate(folder)
    with pytest.raises(DamagedEntry, match="outcome.pt is truncated"):
        cache.tensors("attack", "k", "outcome")


# ---- claims: one process computes a stage; a dead holder's claim is free -----------------------------------
HOLD = """
import sys, time
from benchmark.runner.cache import Cache
with Cache(sys.argv[1]).claim("attack", "k") as held:
    print("held", held, flush=True)
    time.sleep(float(sys.argv[2]))
print(time.time(), flush=True)  # when it released the claim
"""


def _holder(tmp_path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path), str(seconds)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert proc.stdout.readline().strip() == "held True"
    return proc


def test_a_claim_held_by_another_process_is_refused_then_free(tmp_path):
    holder = _holder(tmp_path, 60)
    try:
        with Cache(tmp_path).claim("attack", "k", wait=False) as held:
            assert held is False, "two processes hold the same stage's claim"
    finally:
        holder.terminate()
        holder.wait()
    with Cache(tmp_path).claim("attack", "k", wait=False) as held:
        assert held is True


def test_the_claim_of_a_killed_process_is_taken_over(tmp_path):
    holder = _holder(tmp_path, 60)
    holder.send_signal(signal.SIGKILL)  # no cleanup runs: the kernel releases its lock
    holder.wait()
    start = time.perf_counter()
    with Cache(tmp_path).claim("attack", "k", wait=True) as held:
        assert held is True
    assert time.perf_counter() - start < 5


def test_waiting_for_a_claim_ends_when_its_holder_finishes(tmp_path):
    holder = _holder(tmp_path, 1.0)
    waited = []
    with Cache(tmp_path).claim("attack", "k", wait=True, on_wait=lambda: waited.append(1)) as held:
        taken = time.time()
        assert held is True
    released = float(holder.stdout.readline())
    holder.wait()
    assert taken >= released, "the claim was taken while its holder still held it"
    assert waited == [1]


@pytest.mark.slow
def test_a_truncated_cell_in_a_finished_sweep_is_reported_and_recomputed(tmp_path, caplog, one_thread):
    """Before checksums, a truncated outcome file stopped the whole sweep with a traceback from torch.load."""
    from sweeps import read_rows, run, tiny

    overrides = tiny(tmp_path, "defense=finetune", "attack=fgsm")
    first = run(overrides)
    rows = read_rows(tmp_path)
    (victim,) = [p for p in (tmp_path / "cache" / "attack").glob("*/outcome.pt")][:1]
    victim.write_bytes(victim.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="benchmark.runner.cache"):
        again = run(overrides)
    (record,) = [r for r in caplog.records if r.name == "benchmark.runner.cache"]
    assert "outcome.pt is truncated or altered" in record.getMessage()
    assert again["stats"]["attacks_run"] == 1 and first["stats"]["attacks_run"] == 4
    timing = {"attack_seconds", "wall_seconds", "cached"}
    assert [{k: v for k, v in r.items() if k not in timing} for r in read_rows(tmp_path)] == [
        {k: v for k, v in r.items() if k not in timing} for r in rows
    ]


# ---- checksums ---------------------------------------------------------------------------------------------
class _Opaque:
    """Not a tensor nor a container of them: an entry holding it is not loaded (weights_only)."""


def test_file_sha256_over_several_blocks(tmp_path):
    import hashlib

    from benchmark.runner.cache import file_sha256

    data = bytes(range(256)) * (10 * 1024 + 3)  # 2.5 MiB: three blocks, the last short
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()


def test_put_writes_a_plain_meta_once_in_place(tmp_path):
    cache = Cache(tmp_path / "deep" / "cache")
    assert not cache.exists("attack", "k")
    path = cache.put("attack", "k", {"b": (1, 2), "a": Path("x")})
    assert path == cache.path("attack", "k") == tmp_path / "deep" / "cache" / "attack" / "k"
    assert cache.exists("attack", "k") and cache.meta("attack", "k") == {"a": "x", "b": [1, 2]}
    cache.put("attack", "j", {"c": 1})
    cache.put("attack", "k", {"b": 3}, {"t": torch.zeros(2)})  # a concurrent writer finished first: its entry stays
    assert cache.meta("attack", "k") == {"a": "x", "b": [1, 2]} and cache.meta("attack", "j") == {"c": 1}
    assert sorted(p.name for p in (cache.root / "attack").iterdir()) == ["j", "k"]
    assert cache.claim_path("attack", "k") == cache.root / "attack" / ".k.claim"


def _rewrite_meta(folder, edit):
    import json

    f = folder / "meta.json"
    f.write_text(json.dumps(edit(json.loads(f.read_text()))))


def test_a_reformatted_meta_is_still_valid_and_files_are_hashed_once(tmp_path, monkeypatch):
    from benchmark.runner import cache as cache_mod

    cache = Cache(tmp_path)
    folder = cache.put("attack", "k", {"seconds": 1.5, "attack": "pgd"}, {"outcome": torch.zeros(3)})
    _rewrite_meta(folder, lambda m: dict(reversed(list(m.items()))))
    hashed = []
    monkeypatch.setattr(cache_mod, "file_sha256", lambda p: hashed.append(p) or cache_mod.hashlib.sha256(
        p.read_bytes()).hexdigest())  # fmt: skip
    assert cache.meta("attack", "k") == {"seconds": 1.5, "attack": "pgd"}, "another key order is not damage"
    assert cache.meta("attack", "k") is not None and len(hashed) == 1, "an unchanged entry is hashed once"
    f = folder / "outcome.pt"
    stat = f.stat()
    _truncate(folder)
    import os

    os.utime(f, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime, other size: still checked
    assert cache.meta("attack", "k") is None


def test_an_entry_is_written_beside_its_place_under_a_hidden_name_and_reads_the_same_in_any_order(
    tmp_path, monkeypatch
):
    cache, save = Cache(tmp_path), torch.save
    during = []

    def spy(value, path):
        during.append((Path(path).parent, sorted(p.name for p in (tmp_path / "attack").iterdir())))
        save(value, path)

    monkeypatch.setattr(torch, "save", spy)
    cache.put("attack", "k", {"b": 1, "a": 1, "c": 0}, {"t": torch.zeros(1)})
    ((tmp, listed),) = during
    assert tmp.parent == tmp_path / "attack", "renamed into place on one filesystem"
    assert listed == [tmp.name] and tmp.name.startswith(".k."), "a half-written entry must not look like one"
    cache.put("attack", "j", {"c": 0, "a": 1, "b": 1}, {"t": torch.zeros(1)})
    k, j = (cache.path("attack", key) / "meta.json" for key in "kj")
    assert k.read_bytes() == j.read_bytes(), "the same meta in another order is the same file"


def test_an_entry_damaged_before_this_process_read_it(tmp_path):
    cache = Cache(tmp_path)
    folder = cache.put("attack", "k", {"seconds": 1.5}, {"outcome": torch.zeros(1000)})
    _truncate(folder)  # e.g. by an earlier run killed while the disk was full: never verified by this process
    assert cache.meta("attack", "k") is None and not folder.exists()


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda folder: (folder / "outcome.pt").unlink(), "outcome.pt is missing"),
        (lambda folder: (folder / "meta.json").write_bytes(b"\xff\xfe{"), "meta.json is not valid JSON"),
        (lambda folder: (folder / "meta.json").write_text("[1, 2]"), "meta.json was altered"),
        (lambda folder: (folder / "meta.json").write_text('{"seconds": 1.5}'), "meta.json was altered"),
    ],
)
def test_more_damage_is_named_and_raised_by_tensors(tmp_path, damage, why):
    cache, folder = _entry(tmp_path)
    damage(folder)
    with pytest.raises(DamagedEntry, match=f"cache entry attack/k: {why}"):
        cache.tensors("attack", "k", "outcome")
    assert [p.name for p in (tmp_path / "attack").iterdir()] == [], "the damaged entry is removed, not kept aside"
    with pytest.raises(FileNotFoundError, match="cache entry attack/k is missing"):
        cache.tensors("attack", "k", "outcome")


def test_the_size_of_a_damaged_file_is_reported(tmp_path, caplog):
    cache, folder = _entry(tmp_path)
    _truncate(folder)
    size = (folder / "outcome.pt").stat().st_size
    with caplog.at_level(logging.WARNING, logger="benchmark.runner.cache"):
        assert cache.meta("attack", "k") is None
    assert caplog.records[0].getMessage() == (
        f"cache: damaged entry attack/k removed (outcome.pt is truncated or altered (sha256 mismatch, {size} bytes)); "
        "its stage is computed again"
    )


def test_an_entry_without_files_and_one_with_objects(tmp_path):
    import pickle

    from benchmark.runner.cache import CHECKSUMS, _meta_sha256

    cache = Cache(tmp_path)
    cache.put("attack", "k", {"a": 1})
    _rewrite_meta(cache.path("attack", "k"), lambda m: {"a": 1, CHECKSUMS: {"meta": _meta_sha256({"a": 1})}})
    assert cache.meta("attack", "k") == {"a": 1}, "checksums without a file list: nothing to check"
    cache.put("attack", "o", {}, {"x": {"thing": _Opaque()}})
    with pytest.raises(pickle.UnpicklingError):
        cache.tensors("attack", "o", "x")


def test_a_claim_is_released_and_waited_for_in_one_process(tmp_path):
    import threading

    cache = Cache(tmp_path)
    with cache.claim("attack", "k", wait=False) as held, cache.claim("attack", "k", wait=False) as again:
        assert (held, again) == (True, False)
    got = []

    def take():
        with cache.claim("attack", "k") as h:
            got.append(h)

    with cache.claim("attack", "k", wait=False) as held:
        assert held is True, "the claim was not released"
        waiter = threading.Thread(target=take)
        waiter.start()
        time.sleep(0.5)
        assert got == [], "the claim was taken while held"
    waiter.join(10)
    assert got == [True]


def test_a_file_written_in_staging_moves_into_its_entry_with_its_checksum(tmp_path, caplog):
    cache = Cache(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"^cache entry craft/k is missing: its stage has not finished$"):
        cache.file("craft", "k", "x_adv.npy")
    with cache.staging("craft", "k") as tmp:
        assert tmp.parent == tmp_path / "craft" and tmp.name.startswith(".k.staging.")
        (tmp / "x_adv.npy").write_bytes(b"rows" * 1000)
        folder = cache.put("craft", "k", {"n": 1}, files={"x_adv.npy": tmp / "x_adv.npy"})
        assert not (tmp / "x_adv.npy").exists(), "moved, not copied"
    assert not tmp.exists(), "the staging folder is removed after"
    path = cache.file("craft", "k", "x_adv.npy")
    assert path == folder / "x_adv.npy" and path.read_bytes() == b"rows" * 1000
    assert cache.meta("craft", "k") == {"n": 1}
    path.write_bytes(b"ROWS" * 1000)  # same size, other bytes: the checksum catches it
    from benchmark.runner import cache as cache_mod

    cache_mod._VERIFIED.clear()  # a new process: the entry is verified afresh
    with caplog.at_level(logging.WARNING), pytest.raises(DamagedEntry, match="x_adv.npy is truncated or altered"):
        cache.file("craft", "k", "x_adv.npy")
    assert not folder.exists(), "a damaged entry is moved aside, to be computed again"


# ---- the key: what enters it and what does not (pinned against the mutants of `make mutate`) -------------------
def test_equal_specs_in_other_forms_give_one_key():
    from omegaconf import OmegaConf

    spec = {"a": {"b": [1, 2]}, "lr": 0.1, "path": "x", "1": None, "on": True}
    key = stage_key("cell", spec)
    assert key == stage_key("cell", {"on": True, 1: None, "path": Path("x"), "lr": 0.1, "a": {"b": (1, 2)}})
    conf = OmegaConf.create({"base": 0.1, "a": {"b": [1, 2]}, "lr": "${base}", "path": "x", "1": None, "on": True})
    assert stage_key("cell", conf) == stage_key("cell", {**spec, "base": 0.1}), "interpolations are resolved"
    assert stage_key("cell", {1: "a", "b": 2}) == stage_key("cell", {"1": "a", "b": 2}), "mixed key types sort"
    assert len(key) == 20 and int(key, 16) >= 0


@pytest.mark.parametrize("value, text", [(None, "None"), (1, "1"), (True, "True"), (0.1, "0.1")])
def test_a_value_and_its_text_give_different_keys(value, text):
    assert stage_key("cell", {"v": value}) != stage_key("cell", {"v": text})


def test_key_covers_the_code_the_library_versions_and_the_cache_version(monkeypatch):
    from benchmark.runner import cache as cache_mod

    key = stage_key("cell", {"a": 1})
    assert key == stage_key("cell", {"a": 1}, ())
    keys = {key, stage_key("cell", {"a": 1}, ["attacks.fgsm"]), stage_key("cell", {"a": 1}, ["attacks.pgd"])}
    with monkeypatch.context() as m:
        m.setattr(cache_mod, "CACHE_VERSION", cache_mod.CACHE_VERSION + 1)
        keys.add(stage_key("cell", {"a": 1}))
    versions = cache_mod.library_versions()
    monkeypatch.setattr(cache_mod, "library_versions", lambda: {**versions, "torch": "0.0"})
    keys.add(stage_key("cell", {"a": 1}))
    assert len(keys) == 5


def test_library_versions_name_every_library_and_none_for_a_missing_one(monkeypatch):
    from benchmark.runner import cache as cache_mod

    cache_mod.library_versions.cache_clear()
    monkeypatch.setattr(cache_mod, "LIBRARIES", ("torch", "no-such-distribution-xyz"))
    try:
        assert cache_mod.library_versions() == {"torch": torch.__version__, "no-such-distribution-xyz": None}
    finally:
        cache_mod.library_versions.cache_clear()
    assert set(cache_mod.library_versions()) == set(cache_mod.LIBRARIES)


# A fake suite: attacks.a imports b (which imports a back), c (by `from attacks import c`), d (by `from attacks.d
# import thing`), f; d imports attacks.errors, which is not semantic but imports g. e only by a relative import.
TREE = {
    "attacks/__init__.py": "",
    "attacks/a.py": "import os, attacks.f\nimport attacks.b\nfrom attacks import c\nfrom attacks.d import thing\n"
    "from . import e\nfrom .e import y\nimport other.x\nfrom benchmark import sub\n",
    "attacks/b.py": "import attacks.a\n",
    "attacks/c.py": "",
    "attacks/d.py": "from attacks.errors import X\nthing = 1\n",
    "attacks/e.py": "y = 1\n",
    "attacks/f.py": "",
    "attacks/errors.py": "import attacks.g\nX = 1\n",
    "attacks/g.py": "",
    "benchmark/sub/__init__.py": "",
    "other/x.py": "",
    # p imports z, which is on the stack already: it is met twice; w is still to visit then
    "attacks/p.py": "import attacks.z\n",
    "attacks/z.py": "",
    "attacks/w.py": "",
}
CLOSURE_A = ["attacks", "attacks.a", "attacks.b", "attacks.c", "attacks.d", "attacks.f", "attacks.g", "benchmark.sub"]


@pytest.fixture
def tree(tmp_path) -> Path:
    for name, text in TREE.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_module_closure_follows_suite_imports_only(tree):
    from benchmark.runner.cache import module_closure

    assert module_closure(["attacks.a"], tree) == CLOSURE_A
    assert module_closure(("nope.x", "attacks.nope", "attacks.c"), tree) == ["attacks.c"]
    assert module_closure(["attacks.w", "attacks.z", "attacks.p"], tree) == ["attacks.p", "attacks.w", "attacks.z"]
    real = module_closure(["attacks.fgsm"])
    assert {"attacks.fgsm", "attacks.base"} <= set(real) and "attacks.errors" not in real
    # its W&B logger is on the training floor, non-semantic
    training = module_closure(["benchmark.runner.stages.train"])
    assert "benchmark.components" in training and "lightning_modules.training" in training
    outside = {"benchmark.tracking.runs", "benchmark.results.report", "benchmark.tracking.charts"}
    assert not (outside | {"lightning_modules.loggers"}) & set(training)


def test_code_fingerprint_changes_with_the_closure_only(tree):
    from benchmark.runner.cache import code_fingerprint

    before = code_fingerprint(["attacks.a"], tree)
    assert len(before) == 16 and int(before, 16) >= 0
    for outside in ("attacks/e.py", "attacks/errors.py", "other/x.py", "attacks/w.py"):
        (tree / outside).write_text((tree / outside).read_text() + "# edited\n")
        assert code_fingerprint(["attacks.a"], tree) == before, f"{outside} cannot change attacks.a's results"
    (tree / "attacks/g.py").write_text("# edited\n")
    assert code_fingerprint(["attacks.a"], tree) != before, "attacks.g is imported through attacks.errors"
    assert code_fingerprint(["attacks.c"], tree) != code_fingerprint(["attacks.f"], tree), "same text, other module"
    assert code_fingerprint(["attacks.fgsm"]) == code_fingerprint(["attacks.fgsm"], ROOT)


def test_the_parsed_imports_are_reused_only_for_the_same_version_of_a_file(tree):
    """The speed trick of `_imports` (parse a file once per mtime and size) gives what parsing afresh gives."""
    from benchmark.runner import cache as cache_mod

    assert cache_mod.module_closure(["attacks.c"], tree) == ["attacks.c"]
    (tree / "attacks/c.py").write_text("import attacks.f\n")  # an edit in place adds an import
    assert cache_mod.module_closure(["attacks.c"], tree) == ["attacks.c", "attacks.f"]
    memo = cache_mod.module_closure(["attacks.a"], tree)
    cache_mod._IMPORTS.clear()
    assert cache_mod.module_closure(["attacks.a"], tree) == memo == CLOSURE_A


def test_the_code_fingerprint_is_reused_only_for_the_same_version_of_its_files(tree):
    """The speed trick of `code_fingerprint` (hash a closure once per version of its files) gives what hashing
    afresh gives: an edit in place is seen, and a cleared memo computes the same value."""
    from benchmark.runner import cache as cache_mod

    before = cache_mod.code_fingerprint(["attacks.a"], tree)
    assert cache_mod.code_fingerprint(["attacks.a"], tree) == before
    (tree / "attacks/b.py").write_text((tree / "attacks/b.py").read_text() + "x = 3\n")
    edited = cache_mod.code_fingerprint(["attacks.a"], tree)
    assert edited != before
    cache_mod._FINGERPRINTS.clear()
    assert cache_mod.code_fingerprint(["attacks.a"], tree) == edited


def test_the_code_fingerprint_of_another_tree_is_not_reused(tree, tmp_path_factory):
    """Two checkouts whose files have the same names, sizes and mtimes but other source get other fingerprints
    (the memo's stamp holds the root)."""
    import os

    from benchmark.runner import cache as cache_mod

    other = tmp_path_factory.mktemp("other")
    for name in TREE:
        (other / name).parent.mkdir(parents=True, exist_ok=True)
        text = (tree / name).read_text()
        same_size = text.replace("attacks.a", "attacks.c") if name == "attacks/b.py" else text
        (other / name).write_text(same_size)
        st = (tree / name).stat()
        os.utime(other / name, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (other / "attacks/b.py").read_text() != (tree / "attacks/b.py").read_text()
    first = cache_mod.code_fingerprint(["attacks.a"], tree)
    assert cache_mod.code_fingerprint(["attacks.a"], other) != first
    with cache_mod.frozen_code():  # the frozen memo keeps the root too
        assert cache_mod.code_fingerprint(["attacks.a"], tree) == first
        assert cache_mod.code_fingerprint(["attacks.a"], other) != first


def test_inside_frozen_code_a_fingerprint_is_computed_once_and_outside_it_follows_the_files(tree, monkeypatch):
    from benchmark.runner import cache as cache_mod

    plain = cache_mod.code_fingerprint(["attacks.a"], tree)
    computed = []
    real = cache_mod._code_fingerprint
    monkeypatch.setattr(cache_mod, "_code_fingerprint", lambda *a: computed.append(a) or real(*a))
    with cache_mod.frozen_code():
        assert cache_mod.code_fingerprint(["attacks.a"], tree) == plain
        (tree / "attacks/b.py").write_text("import attacks.a\nx = 3  # edited inside the block\n")
        with cache_mod.frozen_code():  # nested: the same memo
            assert cache_mod.code_fingerprint(("attacks.a",), tree) == plain
        assert cache_mod.code_fingerprint(["attacks.b"], tree) != plain  # another module set: its own entry
    assert len(computed) == 2, "once per module set inside the block"
    assert cache_mod.code_fingerprint(["attacks.a"], tree) != plain, "after the block the edit is seen"


def test_a_plan_s_keys_are_those_of_unfrozen_fingerprints(monkeypatch):
    """make_plan fingerprints inside `frozen_code`; the keys are what the plain fingerprints give."""
    from contextlib import nullcontext

    import benchmark.runner.planner as planner_mod
    from benchmark.runner.config import compose

    cfg = compose(["logger=none", "defense=[finetune,dropout]", "attack=[fgsm,transfer_pgd_linf]", "eval.n_examples=4",
                   "cache_dir=never-written", "results_dir=never-written"])  # fmt: skip
    frozen = [s.key for s in planner_mod.make_plan(cfg)[0].stages]
    monkeypatch.setattr(planner_mod, "frozen_code", nullcontext)
    assert [s.key for s in planner_mod.make_plan(cfg)[0].stages] == frozen


def test_a_stage_key_follows_the_suite_source(tree, monkeypatch):
    from benchmark.runner import cache as cache_mod

    monkeypatch.setattr(cache_mod, "ROOT", tree)
    key = stage_key("cell", {}, ["attacks.a"])
    (tree / "attacks/b.py").write_text("import attacks.a\nx = 2\n")
    assert stage_key("cell", {}, ["attacks.a"]) != key


def test_two_files_of_the_same_size_and_time_are_parsed_each(tree):
    """`_imports` reuses a parse per (file, mtime, size): the file's name is part of what it reuses it for."""
    import os

    from benchmark.runner import cache as cache_mod

    (tree / "attacks/c.py").write_text("import attacks.f\n")
    (tree / "attacks/w.py").write_text("import attacks.g\n")  # the same size
    for name in ("attacks/c.py", "attacks/w.py"):
        os.utime(tree / name, ns=(1_000_000_000, 1_000_000_000))  # and the same time
    assert cache_mod.module_closure(["attacks.c"], tree) == ["attacks.c", "attacks.f"]
    assert cache_mod.module_closure(["attacks.w"], tree) == ["attacks.g", "attacks.w"]
