"""Hand-made cells for the tests of the runner's rules: a `CellSpec` with every field set to a plain default."""

from __future__ import annotations

from benchmark.records import Budget, CellSpec


def cell(norm: str = "linf", eps: float = 0.1, label: str = "x", **changes) -> CellSpec:
    """A white-box PGD cell on model `p/d/seed0` at (norm, eps); `changes` replace any other field."""
    fields = {
        "id": f"p/d/seed0/pgd/{norm}/{label}",
        "pair": "p",
        "model": "p/d/seed0",
        "defense": "d",
        "seed": 0,
        "entry": "pgd",
        "role": "attack",
        "attack": {"cfg": {}, "eps": label, "changes": {}},
        "name": "pgd",
        "budget": Budget(norm, eps, label),
        "threat_model": "white-box",
        "surrogate": "",
        "steps": 20,
        "crafted": False,
        "transfer": False,
        "targeted": False,
        "reject_aware": False,
        "n": 8,
        "randomized": False,
        "draws": 1,
    }
    return CellSpec(**{**fields, **changes})
