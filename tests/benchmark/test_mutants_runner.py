"""The runner's sanity rules (benchmark/checks.py) on hand-made outcomes and rows, and what enters a stage's cache
key (benchmark/cache.py) on hand-made specs and a fake source tree: the boundaries of every tolerance, which rows a
rule compares, which code a key covers. Written against the mutants `make mutate` (tests/mutation/mutate.py) found
alive; the scoring's are in test_score.py, the cache entries' in test_cache.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hand_cells import cell

from benchmark import checks
from benchmark.cache import stage_key
from benchmark.records import Row
from benchmark.stages.score import outcome

ROOT = Path(__file__).resolve().parents[2]

REJECT = 9


def det(adv: list[bool], clean: list[bool] | None = None) -> dict:
    """A deterministic model's outcome (one draw)."""
    a = torch.tensor([adv])
    return {"clean": torch.ones_like(a) if clean is None else torch.tensor([clean]), "adv": a}


def robust(k: int, n: int) -> dict:
    """n examples, the first k robust."""
    return det([True] * k + [False] * (n - k))


def row(attack: str = "pgd", threat: str = "white-box", steps: int = 20, n: int = 8, eps: float = 0.1, **kw) -> Row:
    fields = {"pair": "p", "defense": "d", "seed": 0, "attack": attack, "threat_model": threat, "norm": "linf",
              "eps": eps, "eps_label": "x", "steps": steps, "n_examples": n, "flags": "", **kw}  # fmt: skip
    return Row(**fields)


def read_back(r: Row, **text: str) -> Row:
    """The row as results.csv gives it back (every column a string; `text` replaces some)."""
    return Row.from_csv({**{k: str(v) for k, v in r.csv().items()}, **text})


def flags(rows: list[Row]) -> list[str]:
    return [r.flags for r in rows]


# ---- tolerance and flags -------------------------------------------------------------------------------------
def test_tolerance_is_two_examples_with_a_floor_of_one_point():
    assert [checks.tolerance(n) for n in (0, 1, 100, 200, 400)] == pytest.approx([2.0, 2.0, 0.02, 0.01, 0.01])


def test_a_flag_is_added_once_after_the_others():
    r = Row()
    checks.add_flag(r, "unbounded_attack_not_chance")
    assert r.flags == "unbounded_attack_not_chance"
    checks.add_flag(r, "non_monotone_in_eps")
    checks.add_flag(r, "unbounded_attack_not_chance")
    checks.add_flag(r, "non_monotone_in_eps")
    assert r.flags == "unbounded_attack_not_chance;non_monotone_in_eps"
    none = read_back(Row(), flags="None")  # a results.csv row read back without flags
    checks.add_flag(none, "non_monotone_in_eps")
    assert none.flags == "non_monotone_in_eps"
    with pytest.raises(KeyError, match="documented: iterative_weaker_than_single_step, transfer_stronger"):
        checks.add_flag(r, "made_up")


# ---- per-example rules ---------------------------------------------------------------------------------------
def test_transfer_flag_boundary_is_strict():
    # n = 8: tolerance 0.25. White-box leaves 6/8; transfer at 4/8 is within noise, at 3/8 stronger.
    at, below = row("transfer", "transfer"), row("transfer", "transfer")
    checks.transfer_vs_whitebox(at, robust(4, 8), [(row(steps=2), robust(6, 8))])
    checks.transfer_vs_whitebox(below, robust(3, 8), [(row(steps=2), robust(6, 8))])
    assert flags([at, below]) == ["", "transfer_stronger_than_whitebox"], "an attack with 2 steps is iterative"


def test_transfer_is_compared_only_at_its_norm_and_eps_and_every_matching_row_counts():
    wb = robust(8, 8)
    others = [(row(norm="l2"), wb), (row(eps=0.2), wb)]
    r = row("transfer", "transfer")
    checks.transfer_vs_whitebox(r, robust(0, 8), others)
    assert r.flags == "", "another norm or epsilon is another threat"
    checks.transfer_vs_whitebox(r, robust(0, 8), [*others, (row(), wb)])
    assert r.flags == "transfer_stronger_than_whitebox", "a non-matching row must not end the search"


@pytest.mark.parametrize("tr_eps, wb_eps", [(0.1, 0.1 + 3e-11), (0.1 + 3e-11, 0.1)])
def test_transfer_eps_match_ignores_float_noise_below_1e_10(tr_eps, wb_eps):
    r = row("transfer", "transfer", eps=tr_eps)
    checks.transfer_vs_whitebox(r, robust(0, 8), [(row(eps=wb_eps), robust(8, 8))])
    assert r.flags == "transfer_stronger_than_whitebox"


def test_transfer_is_compared_on_the_whitebox_examples_not_its_own():
    # the white-box attack ran on 16 examples (12 robust); the transfer attack on 64: none of the first 16 robust,
    # all 48 others. On the common 16 the transfer attack is far stronger; over its own 64 it is not.
    transfer = det([False] * 16 + [True] * 48)
    r = row("transfer", "transfer", n=64)
    checks.transfer_vs_whitebox(r, transfer, [(row(n=16), robust(12, 16))])
    assert r.flags == "transfer_stronger_than_whitebox"


def test_frozen_randomness_boundary_and_reference_on_common_examples():
    # frozen on 8 examples (tolerance 0.25); the randomized model's outcome covers 16, 4 of the first 8 robust
    randomized = det([True] * 4 + [False] * 4 + [False] * 8)
    at, above = row("sanity_frozen_randomness", "sanity"), row("sanity_frozen_randomness", "sanity")
    checks.frozen_randomness(at, robust(2, 8), randomized)
    checks.frozen_randomness(above, robust(3, 8), randomized)
    assert flags([at, above]) == ["", "frozen_randomness_attack_fails"]
    assert at.sanity_reference == pytest.approx(0.5), "the reference is on the frozen attack's 8 examples"


def test_converged_boundary_and_reference_on_common_examples():
    base = det([True] * 6 + [False] * 2 + [False] * 8)  # 6/8 on the doubled attack's 8 examples
    at, below = row("eot_x2"), row("eot_x2")
    checks.converged(at, robust(4, 8), base)
    checks.converged(below, robust(3, 8), base)
    assert flags([at, below]) == ["", "eot_attack_not_converged"]
    assert at.sanity_reference == pytest.approx(0.75)


def test_unbounded_boundary_uses_the_number_of_examples():
    at, above = row("sanity_unbounded", "sanity"), row("sanity_unbounded", "sanity")
    checks.unbounded(at, robust(2, 8))
    checks.unbounded(above, robust(3, 8))
    assert flags([at, above]) == ["", "unbounded_attack_not_chance"]
    # two draws of 8 examples: 4 robust draws of 16 is 0.25, within the tolerance of 8 examples
    two = {"clean": torch.ones(2, 8, dtype=torch.bool), "adv": torch.tensor([[True] * 2 + [False] * 6] * 2)}
    r = row("sanity_unbounded", "sanity")
    checks.unbounded(r, two)
    assert r.flags == ""


# ---- the reject option ---------------------------------------------------------------------------------------
def aware(r: Row, reject_aware: bool = True) -> Row:
    """The row with a cell: one aimed at the reject decision (`reject_aware`), or not."""
    return replace(r, cell=cell(r.norm, r.eps, reject_aware=reject_aware))


def rejecting() -> dict:
    return outcome(torch.tensor([[0, REJECT]]), torch.tensor([[REJECT, 1]]), torch.tensor([0, 1]), REJECT)


def plain() -> dict:
    return outcome(torch.tensor([[0, 1]]), torch.tensor([[1, 1]]), torch.tensor([0, 1]))


def test_without_an_adaptive_attack_every_non_sanity_row_is_flagged():
    made = [(row(), plain()), (aware(row("fgsm"), False), rejecting()), (row("s", "sanity"), plain())]
    worst = [row("worst_case"), row("worst_case", "sanity")]
    checks.abstaining_without_adaptive_attack(made, worst)
    ignores = "ignores_reject_option;no_adaptive_attack"  # white-box attacks that ignore the reject option
    assert flags([m[0] for m in made]) == [ignores, ignores, ""]
    assert flags(worst) == ["no_adaptive_attack", ""]


def test_a_model_that_never_rejects_gets_no_adaptive_flag():
    made = [(row(), plain())]
    checks.abstaining_without_adaptive_attack(made, [row("worst_case")])
    assert made[0][0].flags == ""


def test_an_adaptive_attack_covers_its_norm_and_eps_only():
    made = [(aware(row("aware")), rejecting()), (row(eps=0.2), rejecting())]
    worst = [row("worst_case"), row("worst_case", eps=0.2), row("worst_case", norm="l2"),
             row("worst_case", eps=0.1 + 3e-11)]  # fmt: skip
    checks.abstaining_without_adaptive_attack(made, worst)
    assert flags([m[0] for m in made]) == ["", "ignores_reject_option"], (
        "with an adaptive attack only the worst case is judged; the plain white-box row ignores the reject option"
    )
    assert flags(worst) == ["", "no_adaptive_attack", "no_adaptive_attack", ""]
    shifted = [row("worst_case")]
    checks.abstaining_without_adaptive_attack([(aware(row(eps=0.1 + 3e-11)), rejecting())], shifted)
    assert shifted[0].flags == ""


# ---- rules across rows ---------------------------------------------------------------------------------------
def rows_with(*specs: tuple[Row, float]) -> list[Row]:
    return [replace(r, robust_acc=acc) for r, acc in specs]


def test_iterative_weaker_than_single_step_boundary_and_two_steps():
    ok = rows_with((row("fgsm", steps=1), 0.5), (row(steps=2), 0.75))
    bad = rows_with((row("fgsm", steps=1), 0.5), (row(steps=2), 0.875))
    checks.cross_row_flags(ok)
    checks.cross_row_flags(bad)
    assert flags(ok) == ["", ""] and flags(bad) == ["", "iterative_weaker_than_single_step"]


def test_two_single_step_attacks_are_not_compared():
    rows = rows_with((row("fgsm", steps=1), 0.0), (row("rfgsm", steps=1), 1.0))
    checks.cross_row_flags(rows)
    assert flags(rows) == ["", ""]


@pytest.mark.parametrize(
    "other",
    [{"pair": "q"}, {"defense": "e"}, {"seed": 1}, {"norm": "l2"}, {"eps": 0.2}, {"threat_model": "transfer"}],
)
def test_single_step_is_compared_within_one_model_norm_eps_and_whitebox_only(other):
    rows = rows_with((row("fgsm", steps=1), 0.0), (row(**other), 1.0))
    checks.cross_row_flags(rows)
    assert "iterative_weaker_than_single_step" not in flags(rows)


def test_single_step_comparison_matches_seed_and_eps_across_types():
    # a row read back from results.csv (seed and eps parsed from text) against one made in memory
    rows = rows_with((read_back(row("fgsm", steps=1)), 0.0), (row(eps=0.1 + 3e-11), 1.0))
    checks.cross_row_flags(rows)
    assert flags(rows) == ["", "iterative_weaker_than_single_step"]


def test_non_monotone_sorts_by_eps_and_uses_the_smaller_n():
    rows = rows_with((row(eps=0.2), 0.3), (row(eps=0.1), 0.4))  # given in falling eps: still monotone
    checks.cross_row_flags(rows)
    assert flags(rows) == ["", ""]
    at = rows_with((row(eps=0.1), 0.5), (row(eps=0.2), 0.75))
    above = rows_with((row(eps=0.1), 0.5), (row(eps=0.2), 0.875))
    small_n = rows_with((row(eps=0.1, n=8), 0.5), (row(eps=0.2, n=400), 0.7))
    for rs in (at, above, small_n):
        checks.cross_row_flags(rs)
    assert [flags(rs) for rs in (at, above, small_n)] == [["", ""], ["", "non_monotone_in_eps"], ["", ""]]


def test_sanity_and_worst_case_rows_take_no_cross_row_flag():
    # the frozen-randomness rows at two budgets and the worst-case rows rise with eps: not an attack series
    rows = rows_with(
        (row("sanity_frozen_randomness", "sanity", eps=0.1), 0.0),
        (row("sanity_frozen_randomness", "sanity", eps=0.2), 1.0),
        (row("worst_case", eps=0.1), 0.0),
        (row("worst_case", eps=0.2), 1.0),
        (row("fgsm", steps=1, eps=0.3), 0.0),
        (row("worst_case", eps=0.3), 1.0),
    )
    checks.cross_row_flags(rows)
    assert flags(rows) == [""] * 6


def test_flag_warnings_one_line_per_flag_without_repeats():
    r = row(eps_label="8/255", robust_acc=0.5, flags="non_monotone_in_eps;;made_up")
    quiet = [replace(r, flags=""), read_back(r, flags="None")]
    assert checks.flag_warnings([r, *quiet, replace(r)]) == [
        "p/d/seed 0, pgd linf eps 8/255 (robust 0.500): robust accuracy rises with epsilon",
        "p/d/seed 0, pgd linf eps 8/255 (robust 0.500): made_up",
    ]


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
    from benchmark import cache as cache_mod

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
    from benchmark import cache as cache_mod

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
    from benchmark.cache import module_closure

    assert module_closure(["attacks.a"], tree) == CLOSURE_A
    assert module_closure(("nope.x", "attacks.nope", "attacks.c"), tree) == ["attacks.c"]
    assert module_closure(["attacks.w", "attacks.z", "attacks.p"], tree) == ["attacks.p", "attacks.w", "attacks.z"]
    real = module_closure(["attacks.fgsm"])
    assert {"attacks.fgsm", "attacks.base"} <= set(real) and "attacks.errors" not in real
    training = module_closure(["benchmark.stages.train"])  # its W&B logger is on the training floor, non-semantic
    assert "benchmark.stages.build" in training and "lightning_modules.training" in training
    outside = {"benchmark.tracking", "benchmark.report", "benchmark.wandb_charts", "lightning_modules.loggers"}
    assert not outside & set(training)


def test_code_fingerprint_changes_with_the_closure_only(tree):
    from benchmark.cache import code_fingerprint

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
    from benchmark import cache as cache_mod

    assert cache_mod.module_closure(["attacks.c"], tree) == ["attacks.c"]
    (tree / "attacks/c.py").write_text("import attacks.f\n")  # an edit in place adds an import
    assert cache_mod.module_closure(["attacks.c"], tree) == ["attacks.c", "attacks.f"]
    memo = cache_mod.module_closure(["attacks.a"], tree)
    cache_mod._IMPORTS.clear()
    assert cache_mod.module_closure(["attacks.a"], tree) == memo == CLOSURE_A


def test_the_code_fingerprint_is_reused_only_for_the_same_version_of_its_files(tree):
    """The speed trick of `code_fingerprint` (hash a closure once per version of its files) gives what hashing
    afresh gives: an edit in place is seen, and a cleared memo computes the same value."""
    from benchmark import cache as cache_mod

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

    from benchmark import cache as cache_mod

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
    from benchmark import cache as cache_mod

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

    import benchmark.planner as planner_mod
    from benchmark.config import compose

    cfg = compose(["logger=none", "defense=[finetune,dropout]", "attack=[fgsm,transfer_pgd_linf]", "eval.n_examples=4",
                   "cache_dir=never-written", "results_dir=never-written"])  # fmt: skip
    frozen = [s["key"] for s in planner_mod.make_plan(cfg)[0].stages]
    monkeypatch.setattr(planner_mod, "frozen_code", nullcontext)
    assert [s["key"] for s in planner_mod.make_plan(cfg)[0].stages] == frozen


def test_a_stage_key_follows_the_suite_source(tree, monkeypatch):
    from benchmark import cache as cache_mod

    monkeypatch.setattr(cache_mod, "ROOT", tree)
    key = stage_key("cell", {}, ["attacks.a"])
    (tree / "attacks/b.py").write_text("import attacks.a\nx = 2\n")
    assert stage_key("cell", {}, ["attacks.a"]) != key


# ---- one model's per-example checks: which rule each cell goes to -------------------------------------------
def test_model_checks_sends_each_cell_to_its_rule_with_its_base(monkeypatch):
    calls = []
    for name in ("transfer_vs_whitebox", "frozen_randomness", "converged", "unbounded"):
        monkeypatch.setattr(checks, name, lambda *a, name=name: calls.append((name, *a)))
    monkeypatch.setattr(checks, "abstaining_without_adaptive_attack", lambda *a: calls.append(("abstain", *a)))
    base = cell(label="b")
    made = [
        (wb := row(cell=base), o_wb := robust(4, 8)),
        (tr := row("transfer", "transfer", cell=cell(label="t", crafted=True, threat_model="transfer")), o_tr := {}),
        (fr := row("frozen", "sanity", cell=cell(label="f", role="frozen", base=base.id)), o_fr := {}),
        (x2 := row("x2", "sanity", cell=cell(label="x", role="x2", base=base.id)), o_x2 := {}),
        (ub := row("unb", "sanity", cell=cell(label="u", role="unbounded", base="nowhere")), o_ub := {}),
    ]
    outcomes = {base.id: o_wb}
    worst = [(w := row("worst_case", cell=None), {})]
    checks.model_checks(made, worst, outcomes)
    assert [c[0] for c in calls] == ["transfer_vs_whitebox", "frozen_randomness", "converged", "unbounded", "abstain"]
    assert calls[0][1] is tr and calls[0][2] is o_tr and calls[0][3] == [(wb, o_wb)], "the white-box rows only"
    assert calls[1][1:] == (fr, o_fr, o_wb) and calls[2][1:] == (x2, o_x2, o_wb), "each against its base's outcome"
    assert calls[3][1:] == (ub, o_ub)
    assert calls[4][1] is made and calls[4][2] == [w]


def test_model_checks_without_a_base_passes_none_and_a_white_box_cell_goes_nowhere(monkeypatch):
    calls = []
    monkeypatch.setattr(checks, "converged", lambda *a: calls.append(a))
    monkeypatch.setattr(checks, "transfer_vs_whitebox", lambda *a: calls.append(("transfer", *a)))
    monkeypatch.setattr(checks, "abstaining_without_adaptive_attack", lambda *a: None)
    x2 = row("x2", "sanity", cell=cell(label="x", role="x2"))  # no base: looked up as "" (absent)
    checks.model_checks([(row(cell=cell()), {}), (x2, {})], [], {"": "the empty id's outcome"})
    assert calls == [(x2, {}, "the empty id's outcome")], "a missing base is looked up under the empty id"
    calls.clear()
    checks.model_checks([(row(cell=cell()), {})], [], {})
    assert calls == []


def test_autoattack_flags_are_each_flag_once_in_the_order_raised():
    messages = [
        "the model looks like a dynamic defense; see the flags",
        "Square Attack has decreased the robust accuracy of 2.0 %",
        "it seems to be a randomized defense",
        "dynamic defense again",
        "nothing to report",
    ]
    assert checks.autoattack_flags(messages) == [
        "autoattack_dynamic",
        "autoattack_square_helps",
        "autoattack_randomized",
    ]
    assert checks.autoattack_flags([]) == [] and checks.autoattack_flags(["unrelated"]) == []


def test_two_files_of_the_same_size_and_time_are_parsed_each(tree):
    """`_imports` reuses a parse per (file, mtime, size): the file's name is part of what it reuses it for."""
    import os

    from benchmark import cache as cache_mod

    (tree / "attacks/c.py").write_text("import attacks.f\n")
    (tree / "attacks/w.py").write_text("import attacks.g\n")  # the same size
    for name in ("attacks/c.py", "attacks/w.py"):
        os.utime(tree / name, ns=(1_000_000_000, 1_000_000_000))  # and the same time
    assert cache_mod.module_closure(["attacks.c"], tree) == ["attacks.c", "attacks.f"]
    assert cache_mod.module_closure(["attacks.w"], tree) == ["attacks.g", "attacks.w"]
