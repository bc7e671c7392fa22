"""The floors of the suite, as import rules: the packages below `benchmark` never import it, and inside `benchmark`
each package imports only its own floor and the floors beneath it (docs/architecture.md draws them):

    run (the entry point)
    devtools | tracking
    results
    runner
    ground: records, numerics, metrics, components

Imports inside functions count like the others, and no import cycle runs through any module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("attacks", "benchmark", "datamodules", "defenses", "lightning_modules")

#: The modules that every floor shares: the typed records, the numerics of a stage, the count statistics and the
#: component factory (configs -> objects).
GROUND = {"benchmark.records", "benchmark.numerics", "benchmark.metrics", "benchmark.components"}

#: Each floor of `benchmark` and the floors it may import (its own included).
MAY_IMPORT = {
    "ground": {"ground"},
    "benchmark.runner": {"ground", "benchmark.runner"},
    "benchmark.results": {"ground", "benchmark.runner", "benchmark.results"},
    "benchmark.tracking": {"ground", "benchmark.runner", "benchmark.results", "benchmark.tracking"},
    "benchmark.devtools": {"ground", "benchmark.runner", "benchmark.results", "benchmark.devtools"},
    "benchmark.run": {"ground", "benchmark.runner", "benchmark.results", "benchmark.tracking"},
}


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from a.b import c` names a.b, and a.b.c when c is a module (`from benchmark.tracking import runs`)
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return {m for m in found if m.split(".")[0] in PACKAGES}


def import_graph() -> dict[str, set[str]]:
    """Each suite module and the suite modules it imports (at the top or inside a function)."""
    names = {}
    for package in PACKAGES:
        for f in (ROOT / package).rglob("*.py"):
            names[".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")] = f
    return {name: {m for m in imports_of(f) if m in names} for name, f in names.items()}


def floor_of(module: str) -> str | None:
    """The floor of a `benchmark` module (None for the package's own `__init__`)."""
    if module in GROUND:
        return "ground"
    for floor in MAY_IMPORT:
        if module == floor or module.startswith(floor + "."):
            return floor
    return None


def test_every_benchmark_module_is_on_a_floor():
    strays = [m for m in import_graph() if m.startswith("benchmark.") and floor_of(m) is None]
    assert not strays, f"{strays}: put each in a package of MAY_IMPORT, or in GROUND if every floor needs it"


@pytest.mark.parametrize("floor", list(MAY_IMPORT))
def test_a_floor_imports_only_itself_and_the_floors_beneath(floor):
    graph = import_graph()
    members = [m for m in graph if floor_of(m) == floor]
    assert members, f"no module on the floor {floor}"
    for module in members:
        for dep in graph[module]:
            if dep.startswith("benchmark.") and floor_of(dep) is not None:
                assert floor_of(dep) in MAY_IMPORT[floor], f"{module} ({floor}) imports {dep} ({floor_of(dep)})"


def test_the_packages_below_the_benchmark_never_import_it():
    for name, deps in import_graph().items():
        if name.split(".")[0] != "benchmark":
            assert not any(d.split(".")[0] == "benchmark" for d in deps), f"{name} imports the runner"


def test_imports_have_no_cycle():
    graph = import_graph()
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for dep in graph[node]:
            if state.get(dep) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*path, dep])}")
            if state.get(dep) is None:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in graph:
        if state.get(node) is None:
            visit(node, [node])
