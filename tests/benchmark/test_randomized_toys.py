"""The runner on randomized toy models whose right answers are known (tests/benchmark/toy_defenses.py).

A healthy randomized model (input noise) and a masked one (the same, with zero input gradients): K-draw scoring
must see the draws disagree, the worst of K must be below the mean, and the sanity flags must fire on the masked
model and stay quiet on the healthy one.
"""

from __future__ import annotations

import json

import pytest

from benchmark import run as runner
from benchmark.runner.config import compose

TOYS = [
    "logger=none",
    "progress=false",
    "teacher.trainer.max_epochs=4",
    "defense=[finetune]",
    "defense.finetune.trainer.max_epochs=2",
    "+defense.noisy={module: {_target_: tests.benchmark.toy_defenses.NoisyInput, mode: finetune, sigma: 0.1, "
    "lr: 0.01}, trainer: {max_epochs: 3}}",
    "+defense.masked={module: {_target_: tests.benchmark.toy_defenses.MaskedNoisyInput, mode: finetune, "
    "sigma: 0.1, lr: 0.01}, trainer: {max_epochs: 3}}",
    "attack=[eot_pgd_linf,transfer_pgd_linf]",
    "attack.eot_pgd_linf.epsilons=[32/255]",
    "attack.eot_pgd_linf.attack.steps=10",
    "attack.eot_pgd_linf.attack.eot=2",
    "attack.transfer_pgd_linf.epsilons=[32/255]",
    "attack.transfer_pgd_linf.attack.attack.steps=10",
    "report.headline.linf=32/255",
    "eval.n_examples=48",
    "eval.draws=6",
    "eval.sanity_examples=48",
    "eval.detection=false",
]


@pytest.fixture(scope="module")
def toys(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("toys")
    out = runner.run(compose([*TOYS, f"cache_dir={tmp / 'cache'}", f"results_dir={tmp / 'r'}"]))
    return tmp, out


def _rows(out, defense):
    return {r.attack: r for r in out["rows"] if r.defense == defense}


@pytest.mark.slow
def test_draws_disagree_and_worst_of_k_is_below_the_mean(toys):
    tmp, out = toys
    examples = json.loads((tmp / "r" / "per_example.json").read_text())
    rows = _rows(out, "noisy")
    clean = examples[rows["transfer_pgd_linf"].row_id]["clean"]
    assert any(0 < c < 1 for c in clean), "some example is right in some draws only"
    transfer = rows["transfer_pgd_linf"]
    assert transfer.draws == 6
    assert transfer.robust_acc_worst_of_k < transfer.robust_acc, "the worst of K counts every draw"
    for r in rows.values():
        assert r.robust_acc <= r.clean_acc + 1e-9


@pytest.mark.slow
def test_sanity_flags_fire_on_the_masked_model_and_not_on_the_healthy_one(toys):
    _, out = toys
    healthy, masked = _rows(out, "noisy"), _rows(out, "masked")
    assert "frozen_randomness_attack_fails" in masked["sanity_frozen_randomness"].flags
    for name in ("sanity_frozen_randomness", "sanity_unbounded", "eot_pgd_linf_x2"):
        assert healthy[name].flags == "", (name, healthy[name])
    assert masked["eot_pgd_linf"].robust_acc > healthy["eot_pgd_linf"].robust_acc + 0.2, "masking looks robust"
    assert "transfer_stronger_than_whitebox" in masked["transfer_pgd_linf"].flags
    assert "unbounded_attack_not_chance" in masked["sanity_unbounded"].flags


@pytest.mark.slow
def test_worst_case_takes_the_strongest_attack_per_example(toys):
    tmp, out = toys
    examples = json.loads((tmp / "r" / "per_example.json").read_text())
    rows = _rows(out, "masked")
    members = [rows[a] for a in ("eot_pgd_linf", "transfer_pgd_linf", "eot_pgd_linf_x2")]
    worst = examples[rows["worst_case"].row_id]["robust"]
    for i, w in enumerate(worst):
        assert w == pytest.approx(min(examples[m.row_id]["robust"][i] for m in members))
    assert rows["worst_case"].robust_acc <= min(m.robust_acc for m in members) + 1e-9
