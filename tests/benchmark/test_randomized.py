"""Randomized defenses through the runner: attack selection, K-draw scoring, sanity checks, worst case.

What is checked, and why it matters for an honest number on a randomized (purifying) defense:
- the runner picks the attacks by what the model declares: deterministic-only attacks (plain FGSM/PGD) are not
  run on a randomized model, EOT/BPDA/AutoAttack-rand only on randomized ones, an attack's `defenses` list
  narrows it further, and the progress total counts only the cells that run;
- evaluate after optimizing: rows of a randomized model carry K draws, the mean accuracy and the worst of K
  (never above the mean), every example attacked (no clean-correct filter), and no transferability ratio;
- the sanity checks run and are reported as rows (frozen randomness, doubled steps and EOT, unbounded
  budget), their flags are documented ones, and the doubled attack joins the per-example worst case;
- the per-example worst case covers the examples a white-box attack ran on (not those only a transfer attack
  reached) and takes, for each, every attack that ran on it;
- a transfer attack that beats every white-box attack on the examples both ran on is flagged;
- a second run is served from the cache.
"""

from __future__ import annotations

import pytest

from attacks.errors import ConfigError
from benchmark import run as runner
from benchmark.runner import config
from benchmark.runner.checks import FLAG_DOC
from benchmark.runner.config import AttackEntry
from benchmark.runner.planner import make_plan

#: A digits sweep with the purifier (trained for 2 epochs from a 2-epoch finetune student) and the attacks a
#: randomized model gets, shortened; finetune is the deterministic reference. AutoAttack-rand (4,000 passes per
#: example) is left to tests/attacks/test_adaptive.py.
RANDOMIZED = [
    "logger=none",
    "progress=false",
    "teacher.trainer.max_epochs=2",
    "defense=[finetune,purifier]",
    "defense.finetune.trainer.max_epochs=2",
    "defense.purifier.trainer.max_epochs=2",
    "attack=[pgd_linf,transfer_pgd_linf,eot_pgd_linf,bpda_eot_pgd_linf]",
    "attack.pgd_linf.epsilons=[16/255]",
    "attack.pgd_linf.attack.steps=3",
    "attack.transfer_pgd_linf.epsilons=[16/255]",
    "attack.transfer_pgd_linf.attack.attack.steps=3",
    "attack.eot_pgd_linf.attack.steps=3",
    "attack.eot_pgd_linf.attack.eot=2",
    "attack.eot_pgd_linf.n_examples=24",
    "attack.bpda_eot_pgd_linf.attack.steps=3",
    "attack.bpda_eot_pgd_linf.attack.eot=2",
    "eval.n_examples=32",
    "eval.draws=3",
    "eval.sanity_examples=16",
    "eval.detection_reference=64",
]


def compose(tmp, *extra):
    return config.compose([*RANDOMIZED, f"cache_dir={tmp / 'cache'}", f"results_dir={tmp / 'r'}", *extra])


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("randomized")
    return tmp, runner.run(compose(tmp))


@pytest.mark.slow
def test_attacks_are_picked_by_what_the_model_declares(swept):
    _, out = swept
    attacks = {d: {r.attack for r in out["rows"] if r.defense == d} for d in ("finetune", "purifier")}
    assert {"pgd_linf", "transfer_pgd_linf"} <= attacks["finetune"]
    assert not attacks["finetune"] & {"eot_pgd_linf", "bpda_eot_pgd_linf"}
    assert "pgd_linf" not in attacks["purifier"], "a plain one-pass PGD is not run on a randomized model"
    assert {"transfer_pgd_linf", "eot_pgd_linf", "bpda_eot_pgd_linf"} <= attacks["purifier"]
    assert {"sanity_frozen_randomness", "eot_pgd_linf_x2", "sanity_unbounded", "worst_case"} <= attacks["purifier"]


@pytest.mark.slow
def test_randomized_rows_are_scored_over_k_draws(swept):
    _, out = swept
    rows = [r for r in out["rows"] if r.defense == "purifier" and r.threat_model != "sanity"]
    for r in rows:
        assert r.randomized_defense is True
        assert r.draws == 3
        assert r.robust_acc_worst_of_k <= r.robust_acc + 1e-9, "the worst of K cannot beat the mean"
        assert 0.0 <= r.robust_acc <= 1.0
    n = {r.attack: r.n_examples for r in rows}
    assert n["eot_pgd_linf"] == 24 and n["transfer_pgd_linf"] == 32
    assert n["worst_case"] == 32, "the examples of the white-box attack with the most (bpda: 128, capped at 32)"
    transfer = next(r for r in rows if r.attack == "transfer_pgd_linf")
    assert transfer.transferability is None and transfer.transfer_acc == transfer.robust_acc
    eot = next(r for r in rows if r.attack == "eot_pgd_linf")
    assert eot.forward_passes >= 24 * 3 * 2, "EOT: every step averages eot passes on every example"
    deterministic = [r for r in out["rows"] if r.defense == "finetune"]
    assert all(r.draws == 1 and r.randomized_defense is False for r in deterministic)


@pytest.mark.slow
def test_sanity_checks_are_rows_with_documented_flags(swept):
    tmp, out = swept
    sanity = {r.attack: r for r in out["rows"] if r.defense == "purifier" and r.threat_model == "sanity"}
    assert set(sanity) == {"sanity_frozen_randomness", "sanity_unbounded"}
    assert sanity["sanity_unbounded"].eps == 1.0
    assert sanity["sanity_frozen_randomness"].draws == 1, "frozen randomness: one pass decides"
    doubled = next(r for r in out["rows"] if r.attack == "eot_pgd_linf_x2")
    assert doubled.steps == 6 and doubled.sanity_reference is not None
    assert doubled.n_examples == 16
    for r in out["rows"]:
        for flag in filter(None, (r.flags or "").split(";")):
            assert flag in FLAG_DOC, f"undocumented flag {flag}"
    board = (tmp / "r" / "leaderboard.md").read_text()
    assert "sanity_unbounded" in board or "unbounded" in board


@pytest.mark.slow
def test_rerun_is_cached(swept):
    tmp, out = swept
    again = runner.run(compose(tmp))
    assert again["stats"]["attacks_run"] == 0 and again["stats"]["student_trained"] == 0
    key = lambda r: (r.defense, r.attack, r.eps)  # noqa: E731
    assert {key(r): r.robust_acc for r in again["rows"]} == {key(r): r.robust_acc for r in out["rows"]}


def test_attack_selection_options_are_validated(tmp_path):
    with pytest.raises(
        ConfigError, match="applies_to .sometimes.; valid: adaptive, all, deterministic, nondifferentiable, randomized"
    ):
        make_plan(compose(tmp_path, "attack.eot_pgd_linf.applies_to=sometimes"))
    with pytest.raises(ConfigError, match="n_examples must be an integer >= 1"):
        make_plan(compose(tmp_path, "attack.eot_pgd_linf.n_examples=0"))
    with pytest.raises(ConfigError, match="unknown attack.eot_pgd_linf.defenses entry 'nope'"):
        make_plan(compose(tmp_path, "++attack.eot_pgd_linf.defenses=[nope]"))


def test_attack_entries_match_what_models_declare():
    none, rand, nondiff = frozenset(), frozenset({"randomized"}), frozenset({"nondifferentiable"})
    expected = {
        "all": (True, True, True),
        "deterministic": (True, False, False),
        "randomized": (False, True, False),
        "nondifferentiable": (False, False, True),
        "adaptive": (False, True, True),
    }
    for applies_to, answers in expected.items():
        entry = AttackEntry("a", {}, [], [], applies_to)
        assert tuple(entry.applies(k, "atop") for k in (none, rand, nondiff)) == answers, applies_to
    narrowed = AttackEntry("a", {}, [], [], "all", None, ["finetune"])
    assert narrowed.applies(none, "finetune") and not narrowed.applies(none, "atop")
