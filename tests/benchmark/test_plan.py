"""The plan (no training needed), the cache keys it carries, and the one-way shape of the imports."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest

from benchmark import cache as cache_mod
from benchmark.config import compose
from benchmark.planner import make_plan

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("attacks", "benchmark", "datamodules", "defenses", "lightning_modules")
SMALL = [
    "logger=none",
    "defense=[finetune,purifier]",
    "attack=[fgsm,pgd_linf,transfer_pgd_linf,eot_pgd_linf]",
    "eval.n_examples=32",
]


def plan_of(tmp: Path, *extra: str):
    return make_plan(compose([*SMALL, f"cache_dir={tmp / 'cache'}", f"results_dir={tmp / 'r'}", *extra]))


def test_plan_is_json_in_dependency_order(tmp_path):
    plan, notes, _ = plan_of(tmp_path)
    data = json.loads(plan.to_json())
    seen = set()
    for stage in data["stages"]:
        assert set(stage["deps"]) <= seen, f"{stage['id']} comes before what it needs"
        seen.add(stage["id"])
    kinds = [s["kind"] for s in plan.stages]
    assert kinds.count("teacher") == 1 and kinds.count("craft") == 4, "transfer examples crafted once per eps"
    ids = [s["id"] for s in plan.stages]
    assert len(ids) == len(set(ids)) and len({s["key"] for s in plan.stages}) == len(ids)
    roles = {c.role for c in plan.cells() if c.defense == "purifier"}
    assert {"attack", "frozen", "x2", "unbounded"} <= roles
    assert any("not run on the randomized models " in n and "(by design): fgsm, pgd_linf" in n for n in notes)


def test_transfer_reference_is_the_sweeps_own_whitebox_cell(tmp_path):
    plan, _, _ = plan_of(tmp_path, "attack.pgd_linf.attack.steps=20", "attack.transfer_pgd_linf.attack.attack.steps=20")
    transfer = [c for c in plan.cells() if c.entry == "transfer_pgd_linf"]
    for cell in (c for c in transfer if c.defense == "finetune"):
        ref = plan.cell(cell.reference)
        assert ref.entry == "pgd_linf" and ref.role == "attack", "the same attack is computed once"
    assert all(c.reference is None for c in transfer if c.defense == "purifier")


@pytest.mark.parametrize("order", ["eot_pgd_linf,autoattack_rand", "autoattack_rand,eot_pgd_linf"])
def test_sanity_cells_come_from_eot_pgd_whatever_the_attack_order(tmp_path, order):
    plan, _, _ = plan_of(tmp_path, f"attack=[{order}]")
    sanity = [c for c in plan.cells() if c.role in ("frozen", "x2", "unbounded")]
    assert len(sanity) == 3 and {c.entry for c in sanity} == {"eot_pgd_linf"}


def test_cell_keys_cover_every_value_the_cell_reads(tmp_path):
    def keys(*extra):
        plan, _, _ = plan_of(tmp_path, *extra)
        return {s["id"]: s["key"] for s in plan.stages}

    base = keys()
    for override in ("eval.detection=false", "eval.detection_reference=100", "eval.draws=4", "eval.seed=1"):
        changed = keys(override)
        cells = [i for i in base if "/pgd_linf/" in i or "/eot_pgd_linf/" in i]
        assert any(base[i] != changed[i] for i in cells), override
    teacher = [i for i in base if i == "digits/teacher"]
    assert keys("eval.detection=false")[teacher[0]] == base[teacher[0]], "evaluation settings do not retrain"


def test_keys_change_with_library_versions(tmp_path, monkeypatch):
    base = {s["id"]: s["key"] for s in plan_of(tmp_path)[0].stages}
    versions = {**cache_mod.library_versions(), "pyautoattack": "9.9"}
    monkeypatch.setattr(cache_mod, "library_versions", lambda: versions)
    changed = {s["id"]: s["key"] for s in plan_of(tmp_path)[0].stages}
    assert all(base[i] != changed[i] for i in base)


def _copy_tree(dst: Path) -> Path:
    for p in PACKAGES:
        shutil.copytree(ROOT / p, dst / p, ignore=shutil.ignore_patterns("__pycache__", "configs"))
    return dst


def test_editing_a_line_invalidates_exactly_the_stages_it_can_change(tmp_path, monkeypatch):
    base = {s["id"]: s["key"] for s in plan_of(tmp_path)[0].stages}
    copy = _copy_tree(tmp_path / "src")
    pgd = copy / "attacks" / "pgd.py"
    pgd.write_text(pgd.read_text().replace("return x_adv\n", "return x  # broken\n", 1))
    monkeypatch.setattr(cache_mod, "ROOT", copy)
    changed = {s["id"]: s["key"] for s in plan_of(tmp_path)[0].stages}
    moved = {i for i in base if base[i] != changed[i]}
    assert any("/pgd_linf/" in i for i in moved) and any("/craft/transfer_pgd_linf/" in i for i in moved)
    assert not any("/fgsm/" in i for i in moved), "FGSM does not run pgd.py"
    assert "digits/teacher" not in moved and "digits/finetune/seed0" not in moved
    assert "digits/purifier/seed0" in moved, "AToP's purifier trains with PGD code (its validation attack)"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from a.b import c` names a.b, and a.b.c when c is a module (`from benchmark import tracking`)
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return {m for m in found if m.split(".")[0] in PACKAGES}


def _import_graph() -> dict[str, set[str]]:
    """Each suite module and the suite names it imports (at the top or inside a function)."""
    graph = {}
    for package in PACKAGES:
        for f in (ROOT / package).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            graph[name] = _imports(f)
    return graph


#: The top floor and the only modules that may import it: W&B tracking logs what the runner produced, so only the
#: entry point calls it (a training stage's logger comes from the training floor, `lightning_modules.loggers`).
TOP_FLOOR = {"benchmark.tracking": {"benchmark.run"}}


def test_wandb_tracking_is_the_top_floor():
    graph = _import_graph()
    for top, allowed in TOP_FLOOR.items():
        assert top in graph, f"{top} moved: update TOP_FLOOR"
        importers = {name for name, deps in graph.items() if top in deps and name != top}
        assert importers <= allowed, f"{sorted(importers - allowed)} import {top}, the top floor"


def test_imports_only_point_downward_and_have_no_cycle():
    graph = _import_graph()
    for name, deps in graph.items():
        if name.split(".")[0] != "benchmark":
            assert not any(d.split(".")[0] == "benchmark" for d in deps), f"{name} imports the runner"
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for dep in graph.get(node, ()):
            dep = dep if dep in graph else dep.rsplit(".", 1)[0]
            if state.get(dep) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*path, dep])}")
            if dep in graph and state.get(dep) is None:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in graph:
        if state.get(node) is None:
            visit(node, [node])


def test_no_file_over_400_lines():
    for package in PACKAGES:
        for f in (ROOT / package).rglob("*.py"):
            assert len(f.read_text().splitlines()) <= 450, f"{f} is too long to read in one go"
