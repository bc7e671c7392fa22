"""The findings' claims of other shapes (`benchmark.claims`): paper 2's rate at a clean-accuracy cost, and "attack X
is the strongest on every model", tested per example and entered into the findings' Holm family and table."""

from __future__ import annotations

import pytest

from benchmark import findings as fnd
from benchmark.claims import RateClaim, StrongestAttackClaim
from benchmark.records import Row

EPS = 16 / 255
HEADLINE = {"linf": EPS}


def _row(defense: str, attack: str, row_id: str, seed: int = 0) -> Row:
    return Row(pair="p", defense=defense, seed=seed, attack=attack, threat_model="white-box", norm="linf", eps=EPS,
               row_id=row_id)  # fmt: skip


def _outcomes(clean: int, robust: int, n: int = 200) -> dict:
    return {"clean": [1.0] * clean + [0.0] * (n - clean), "robust": [1.0] * robust + [0.0] * (n - robust)}


RATE = RateClaim("stops 90 %", "paper 2", defense="diff", base="student", attack="adaptive")


def _rate_run(clean_def: int, robust_def: int, clean_base: int = 180):
    rows = [_row("diff", "adaptive", "d"), _row("student", "pgd", "s")]
    per_example = {"d": _outcomes(clean_def, robust_def), "s": _outcomes(clean_base, 0)}
    return fnd.findings(rows, per_example, HEADLINE, [RATE])[0]


def test_a_high_rate_at_a_small_clean_loss_supports_the_rate_claim():
    f = _rate_run(clean_def=176, robust_def=174)  # 174 of 176 defended (98.9 %); loss 2 points of 200
    assert f["verdict"] == "supported" and f["higher_acc"] == pytest.approx(174 / 176)
    assert "clean loss 2.0 points" in f["higher"]


def test_a_rate_far_below_the_threshold_contradicts_it():
    f = _rate_run(clean_def=176, robust_def=88)  # half defended
    assert f["verdict"] == "contradicted" and f["difference"] == pytest.approx(0.5 - 0.9)


def test_a_large_clean_loss_alone_withholds_support():
    f = _rate_run(clean_def=120, robust_def=120, clean_base=180)  # every input stopped, but 30 points lost
    assert f["verdict"] != "supported" and f["per_seed"][0]["higher_acc"] == 1.0


def _robust(k: int, n: int = 100) -> dict:
    return {"clean": [1.0] * n, "robust": [1.0] * k + [0.0] * (n - k)}


def test_the_strongest_attack_is_computed_per_model_and_must_win_on_every_one():
    claim = StrongestAttackClaim("uap strongest", "readme", attack="uap", attacks=("uap", "ssp", "l4a"))
    rows, per_example = [], {}
    for model, (uap, ssp, l4a) in {"a": (20, 60, 70), "b": (50, 30, 80)}.items():
        for attack, k in (("uap", uap), ("ssp", ssp), ("l4a", l4a)):
            rows.append(_row(model, attack, f"{model}/{attack}"))
            per_example[f"{model}/{attack}"] = _robust(k)
    f = fnd.findings(rows, per_example, HEADLINE, [claim])[0]
    by_model = {t["seed"]: t for t in f["per_seed"]}
    assert set(by_model) == {"a: ssp", "b: ssp"}, "the strongest other attack, named per model"
    assert by_model["a: ssp"]["verdict"] == "supported"  # 20 vs 60 robust: uap is stronger on a
    assert by_model["b: ssp"]["verdict"] == "contradicted"  # 50 vs 30: ssp is stronger on b
    assert f["verdict"] == "not supported"


def test_the_extra_claims_are_in_the_seed_list_and_find_nothing_without_their_rows():
    kinds = {type(c).__name__ for c in fnd.CLAIMS}
    assert {"RateClaim", "StrongestAttackClaim", "Claim"} <= kinds
    f = fnd.findings([_row("x", "pgd", "x")], {"x": _robust(5)}, HEADLINE, [RATE])[0]
    assert f["verdict"] == "not in this run"
