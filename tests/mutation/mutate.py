"""`make mutate`: mutation testing (mutmut 3) of the modules that decide the published numbers.

Each module in `MODULES` is mutated with only the fast tests mapped to it. mutmut runs each mutant with the
subset of those tests that reach the mutated function (it records which tests call which function once, in
its "stats" pass), stopping at the first failure. mutmut takes its settings from one `[tool.mutmut]` table in
the working directory's pyproject.toml, so every module gets its own scratch directory under
`results/mutation/work/<module>` (links to the packages and tests, plus a pyproject.toml whose `[tool.mutmut]`
table is the project's with `only_mutate` and the test selection of that module); mutmut copies it into
`mutants/` there and never touches the work tree.

Writes `results/mutation/survivors.txt` (every mutant not killed, with its diff), `results/mutation/score.txt`
(one line per module and a total) and the mutmut logs in `results/mutation/logs/`. Mutants judged equivalent
are listed in `tests/mutation/equivalent.md` (one line of reason each) and leave the denominator. The exit
code is 1 when the score is under `--fail-under` or a module could not be tested (its tests fail unmutated).

Usage: python tests/mutation/mutate.py [--only attacks/pgd.py ...] [--jobs 2] [--fail-under 90]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("attacks", "benchmark", "datamodules", "defenses", "lightning_modules")
EQUIVALENT_FILE = ROOT / "tests" / "mutation" / "equivalent.md"
#: Statuses that count as a kill: a failing test, or a run that hung or crashed because of the mutation.
KILLED = {"killed", "timeout", "segfault", "caught by type check"}


@dataclass(frozen=True)
class Target:
    """A module under mutation and the pytest arguments that select its fast tests.

    `functions` narrows the mutants to functions whose name matches one of these globs (mutmut names a
    mutant `<module>.x_<function>__mutmut_<n>`, `<module>.xǁ<Class>ǁ<method>__mutmut_<n>` for methods).
    """

    path: str
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ()


#: The attack core's fast tests: its own (tiny linear models: tests/attacks/test_base.py, test_pgd.py, test_fgsm.py),
#: the config tests, and the tests of tests/attacks that need no trained classifier (each of those would retrain the
#: session classifier in every mutant's test run, seconds per mutant).
ATTACK_TESTS = (
    "tests/attacks/test_base.py",
    "tests/attacks/test_pgd.py",
    "tests/attacks/test_fgsm.py",
    "tests/attacks/test_config.py",
    "tests/attacks/test_attacks.py::test_check_adversarial_rejects",
    "tests/attacks/test_attacks.py::test_check_adversarial_accepts_round_off",
    "tests/attacks/test_attacks.py::test_bad_hyperparameters_rejected",
    "tests/attacks/test_attacks.py::test_parse_eps_and_labels",
    "tests/attacks/test_adaptive.py::test_pgd_eot_turns_early_stop_off",
    "tests/attacks/test_adaptive.py::test_bad_eot_rejected",
    "tests/attacks/test_adaptive.py::test_label_and_config_carry_eot_and_bpda",
    "tests/attacks/test_mimicry.py::test_check_adversarial_learns_the_dssim_budget",
)
DEFENSE_TESTS = ("tests/defenses/test_losses.py", "tests/defenses/test_tla_trades.py")


def _named(path: str, *tests: str) -> tuple[str, ...]:
    """Tests of one file selected by name (node ids): the file holds other tests that this selection leaves out."""
    return tuple(f"{path}::{t}" for t in tests)


#: The runner's fast tests on hand-made outcomes, rows and cache entries (no training) that pin the sanity rules'
#: boundaries and dispatch (in test_checks.py) and what enters a stage's cache key (in test_cache.py), for the targets
#: that do not take those files whole.
CHECK_RULE_TESTS = _named(
    "tests/benchmark/test_checks.py",
    "test_tolerance_is_two_examples_with_a_floor_of_one_point",
    "test_a_flag_is_added_once_after_the_others",
    "test_transfer_flag_boundary_is_strict",
    "test_transfer_is_compared_only_at_its_norm_and_eps_and_every_matching_row_counts",
    "test_transfer_eps_match_ignores_float_noise_below_1e_10",
    "test_transfer_is_compared_on_the_whitebox_examples_not_its_own",
    "test_frozen_randomness_boundary_and_reference_on_common_examples",
    "test_converged_boundary_and_reference_on_common_examples",
    "test_unbounded_boundary_uses_the_number_of_examples",
    "test_without_an_adaptive_attack_every_non_sanity_row_is_flagged",
    "test_a_model_that_never_rejects_gets_no_adaptive_flag",
    "test_an_adaptive_attack_covers_its_norm_and_eps_only",
    "test_iterative_weaker_than_single_step_boundary_and_two_steps",
    "test_two_single_step_attacks_are_not_compared",
    "test_single_step_is_compared_within_one_model_norm_eps_and_whitebox_only",
    "test_single_step_comparison_matches_seed_and_eps_across_types",
    "test_non_monotone_sorts_by_eps_and_uses_the_smaller_n",
    "test_sanity_and_worst_case_rows_take_no_cross_row_flag",
    "test_flag_warnings_one_line_per_flag_without_repeats",
    "test_model_checks_sends_each_cell_to_its_rule_with_its_base",
    "test_model_checks_without_a_base_passes_none_and_a_white_box_cell_goes_nowhere",
    "test_autoattack_flags_are_each_flag_once_in_the_order_raised",
)
CACHE_KEY_TESTS = _named(
    "tests/benchmark/test_cache.py",
    "test_equal_specs_in_other_forms_give_one_key",
    "test_a_value_and_its_text_give_different_keys",
    "test_key_covers_the_code_the_library_versions_and_the_cache_version",
    "test_library_versions_name_every_library_and_none_for_a_missing_one",
    "test_module_closure_follows_suite_imports_only",
    "test_code_fingerprint_changes_with_the_closure_only",
    "test_the_parsed_imports_are_reused_only_for_the_same_version_of_a_file",
    "test_the_code_fingerprint_is_reused_only_for_the_same_version_of_its_files",
    "test_the_code_fingerprint_of_another_tree_is_not_reused",
    "test_inside_frozen_code_a_fingerprint_is_computed_once_and_outside_it_follows_the_files",
    "test_a_plan_s_keys_are_those_of_unfrozen_fingerprints",
    "test_a_stage_key_follows_the_suite_source",
    "test_two_files_of_the_same_size_and_time_are_parsed_each",
)
#: The same for the attack and training stages (tiny models, fake data: no training), the rows, the verdicts and the
#: plan: their own files, and by name the tests in files shared with slower tests or with another module's target.
STAGE_TESTS = (
    "tests/benchmark/test_attack_stage.py",
    "tests/benchmark/test_train_stage.py",
    "tests/benchmark/test_build_stage.py",
)
ROWS_TESTS = (
    "tests/benchmark/test_rows.py",
    *_named(
        "tests/benchmark/test_records.py",
        "test_budget_helpers",
        "test_the_headline_budget_per_norm",
        "test_a_cell_spec_through_json_and_a_rows_columns",
        "test_parse_a_results_csv_cell",
        "test_a_figures_seed_note_follows_the_number_of_seeds",
    ),
)
#: The verdicts: the statistics (against textbook formulas, scipy and statsmodels), the claims' matrices and the
#: findings over them; the calibration simulation's fast tests (the full simulation is slow: not run per mutant).
STATS_TESTS = ("tests/benchmark/test_statistics.py", "tests/benchmark/test_calibration.py")
VERDICT_TESTS = (
    "tests/benchmark/test_statistics.py",
    "tests/benchmark/test_verdicts.py",
    "tests/benchmark/test_claims.py",
)
PLAN_TESTS = (
    *_named(
        "tests/benchmark/test_plan.py",
        "test_module_of_and_the_modules_of_an_attack",
        "test_make_attack_at_its_epsilon_with_the_changes",
        "test_make_attack_builds_each_recipe_once_and_never_shares_an_attack",
        "test_make_attack_builds_a_config_that_is_not_plain_data_each_time",
        "test_plan_lookups",
        "test_plan_attacks_are_built_once_from_the_cell_or_crafted_recipe",
        "test_plan_add_one_stage_per_key_and_kind",
        "test_a_plan_through_json",
        "test_a_composed_plan_through_json_gives_equal_stages",
    ),
    "tests/benchmark/test_planner.py",
)
LEADERBOARD_TESTS = ("tests/benchmark/test_leaderboard.py", "tests/benchmark/test_results_files.py")
#: The precision tests that need no trained classifier.
PRECISION_TESTS = tuple(
    f"tests/benchmark/test_precision.py::{t}"
    for t in (
        "test_fp16_scales_the_gradient_so_small_ones_keep_their_sign",
        "test_fp16_without_the_scale_loses_the_gradient",
        "test_an_unknown_precision_is_one_line",
        "test_an_encoder_attack_in_fp16_gets_the_scaled_gradient_of_the_features",
        "test_without_wrapping_features_the_encoder_attack_silently_gets_no_gradient",
        "test_a_captured_layer_is_read_in_fp32_with_the_scale",
    )
)
RECORDS_TESTS = (
    "tests/benchmark/test_records.py::test_a_row_keeps_its_types_through_results_csv",
    "tests/benchmark/test_records.py::test_one_grouping_rule_for_budgets",
    "tests/benchmark/test_plan.py::test_a_composed_plan_through_json_gives_equal_stages",
)
#: The plan's tests on small configs (a plan takes about a second: no training, no attack); not test_plan.py's tests
#: of the source files themselves (their length, their imports), which read mutmut's rewritten copies.
PLANNER_TESTS = (
    *(
        f"tests/benchmark/test_plan.py::{t}"
        for t in (
            "test_plan_is_json_in_dependency_order",
            "test_transfer_reference_is_the_sweeps_own_whitebox_cell",
            "test_sanity_cells_come_from_eot_pgd_whatever_the_attack_order",
            "test_cell_keys_cover_every_value_the_cell_reads",
            "test_keys_change_with_library_versions",
        )
    ),
    "tests/benchmark/test_records.py::test_every_cell_is_resolved_once_into_its_spec",
    "tests/benchmark/test_records.py::test_the_plan_survives_json_with_its_specs",
    "tests/benchmark/test_precision.py::test_the_precision_enters_the_cells_cache_key",
)

# The single place to edit: the modules that decide the numbers and the fast tests that cover each.
# Modules that do not exist (yet) are reported and skipped.
MODULES: tuple[Target, ...] = (
    Target("attacks/base.py", ATTACK_TESTS),
    Target("attacks/pgd.py", ATTACK_TESTS),
    Target("attacks/fgsm.py", ATTACK_TESTS),
    Target("benchmark/metrics.py", ("tests/benchmark/test_metrics.py",)),
    Target("defenses/trades.py", DEFENSE_TESTS),
    Target("defenses/tla.py", DEFENSE_TESTS),
    Target(
        "defenses/gen_af.py",
        ("tests/defenses/test_losses.py", "tests/defenses/test_gen_af.py", "-k", "not probe"),
        functions=("x_genetic_regularization", "xǁGenAFDualTrackǁtraining_loss"),
    ),
    # The runner's modules that decide the numbers: the sanity rules, the counting rule and the cache key.
    Target("benchmark/runner/checks.py", ("tests/benchmark/test_checks.py", *CACHE_KEY_TESTS)),
    Target(
        "benchmark/runner/stages/score.py",
        ("tests/benchmark/test_checks.py", "tests/benchmark/test_score.py", *CACHE_KEY_TESTS),
    ),
    Target("benchmark/runner/cache.py", ("tests/benchmark/test_cache.py", *CHECK_RULE_TESTS)),
    # A cell's numbers: crafting (every batch checked), the predictions over draws, the outcome and its precision.
    Target("benchmark/runner/stages/attack.py", (*STAGE_TESTS, "tests/benchmark/test_score.py", *PRECISION_TESTS)),
    # A training stage's identity: what its key is made of (build.job_key_spec, planner's _job), the preparation's
    # key and the cache lookup before training. The training itself is not mutated (it needs minutes per mutant).
    Target(
        "benchmark/runner/stages/train.py",
        STAGE_TESTS,
        functions=("x_ensure_prepared", "x__param_checksum", "x__accuracy", "x_train_stage"),
    ),
    Target(
        "benchmark/components.py",
        STAGE_TESTS,
        functions=(
            "x_semantic",
            "x_model_key",
            "x_checkpoint_key",
            "x_teacher_module_cfg",
            "x_declared",
            "x_job_key_spec",
        ),
    ),
    # The rows and the records they are made of.
    Target("benchmark/runner/rows.py", ROWS_TESTS),
    Target("benchmark/records.py", (*ROWS_TESTS, *RECORDS_TESTS)),
    # The verdicts and the intervals. Not mutated: the findings' markdown table (formatting, read by test_golden.py
    # and test_verdicts.py) and claims.ATTACK_CLAIMS (data, like the claims in the defense configs).
    Target("benchmark/results/statistics.py", (*STATS_TESTS, "tests/benchmark/test_verdicts.py")),
    Target(
        "benchmark/results/verdicts.py",
        VERDICT_TESTS,
        functions=("x_budgets", "x_claim_test", "x__shown", "x_evaluate", "x_findings"),
    ),
    Target(
        "benchmark/results/claims.py",
        VERDICT_TESTS,
        functions=(
            "x_seed_order",
            "x_stacked",
            "x_matching",
            "x_outcomes",
            "x_clean_outcomes",
            "xǁ*ǁparts",
            "x_claims_from_config",
        ),
    ),
    Target(
        "benchmark/results/leaderboard.py",
        LEADERBOARD_TESTS,
        functions=("x_leaderboard", "x__mean_ci", "x__est", "x__unranked", "x__ranking"),
    ),
    Target("benchmark/results/files.py", LEADERBOARD_TESTS, functions=("x_number", "xǁPairResultsǁ*")),
    # The plan: the stages, their keys and dependencies, each cell's spec.
    Target("benchmark/runner/plan.py", (*PLAN_TESTS, *PLANNER_TESTS)),
    Target("benchmark/runner/planner.py", (*PLAN_TESTS, *PLANNER_TESTS)),
)


def _slug(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def _mutmut_table(target: Target) -> str:
    """The project's `[tool.mutmut]` settings with this module's `only_mutate` and tests, as TOML."""
    import tomllib

    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mutmut"]
    settings["only_mutate"] = [target.path]
    settings["pytest_add_cli_args_test_selection"] = _present(target.tests)
    # JSON strings, lists and booleans are valid TOML values.
    return "[tool.mutmut]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items())


def _present(tests: tuple[str, ...]) -> list[str]:
    """The pytest arguments without test files that do not exist (yet): pytest would stop on them."""
    return [t for t in tests if not t.split("::")[0].endswith(".py") or (ROOT / t.split("::")[0]).exists()]


def _pyproject(target: Target) -> str:
    """pyproject.toml with its `[tool.mutmut]` table replaced by this module's."""
    text = (ROOT / "pyproject.toml").read_text()
    text = re.sub(r"^\[tool\.mutmut\]\n(?:(?!\[).*\n|\n)*", "", text, flags=re.M)
    return text.rstrip() + "\n\n" + _mutmut_table(target)


def _stage(target: Target, work: Path) -> None:
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    for name in (*PACKAGES, "tests"):
        (work / name).symlink_to(ROOT / name, target_is_directory=True)
    (work / "pyproject.toml").write_text(_pyproject(target))


class MutationRunError(RuntimeError):
    """mutmut could not test a module's mutants (most often: the module's tests fail without any mutation)."""


def _mutmut(args: list[str], work: Path, log) -> tuple[int, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    out = subprocess.run(
        [sys.executable, "-m", "mutmut", *args], cwd=work, env=env, capture_output=True, text=True, check=False
    )
    log.write(f"$ mutmut {' '.join(args)}  (exit {out.returncode})\n{out.stdout}\n{out.stderr}\n")
    return out.returncode, out.stdout


def run_target(target: Target, out: Path, jobs: int) -> dict[str, str]:
    """Mutate one module; return {mutant name: status}."""
    work = out / "work" / _slug(target.path)
    _stage(target, work)
    patterns = [f"{_slug(target.path)}.{f}__mutmut_*" for f in target.functions]
    (out / "logs").mkdir(parents=True, exist_ok=True)
    log_path = out / "logs" / f"{_slug(target.path)}.log"
    with open(log_path, "w") as log:
        code, _ = _mutmut(["run", "--max-children", str(jobs), *patterns], work, log)
        _, listing = _mutmut(["results", "--all", "true"], work, log)
    statuses = dict(re.findall(r"^\s+(\S+): (.+)$", listing, flags=re.M))
    if patterns:  # mutmut lists every mutant of the file; keep the chosen functions'
        statuses = {k: v for k, v in statuses.items() if any(re.fullmatch(_glob(p), k) for p in patterns)}
    if code != 0 or "not checked" in statuses.values():
        raise MutationRunError(f"mutmut exit {code} (do the tests pass without mutation?); see {log_path}")
    return statuses


def _glob(pattern: str) -> str:
    return re.escape(pattern).replace(r"\*", ".*")


def equivalent_mutants() -> dict[str, str]:
    """{mutant name: reason} from the `- \\`name\\`: reason` lines of tests/mutation/equivalent.md."""
    if not EQUIVALENT_FILE.exists():
        return {}
    return dict(re.findall(r"^- `([^`]+)`:\s*(.+)$", EQUIVALENT_FILE.read_text(), flags=re.M))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="module paths to mutate (default: all of MODULES)")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested in parallel (default 2)")
    parser.add_argument("--fail-under", type=float, default=90.0, help="minimum score in %% (default 90)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "mutation")
    args = parser.parse_args(argv)
    targets = [t for t in MODULES if not args.only or t.path in args.only]
    unknown = set(args.only or ()) - {t.path for t in MODULES}
    if unknown:
        parser.error(f"not in MODULES: {', '.join(sorted(unknown))}; valid: {', '.join(t.path for t in MODULES)}")
    equivalent = equivalent_mutants()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    lines, survivors, totals, failed = [], [], [0, 0, 0], False
    tested, not_killed = set(), set()  # modules mutated, mutants that were not killed
    for target in targets:
        if not (ROOT / target.path).exists():
            lines.append(f"{target.path}: skipped (file not present)")
            continue
        t0 = time.monotonic()
        try:
            statuses = run_target(target, args.out, args.jobs)
        except MutationRunError as error:
            lines.append(f"{target.path}: ERROR {error}")
            print(lines[-1], flush=True)
            failed = True
            continue
        work = args.out / "work" / _slug(target.path)
        tested.add(_slug(target.path))
        not_killed |= {k for k, s in statuses.items() if s not in KILLED}
        killed = sum(s in KILLED for s in statuses.values())
        equiv = [k for k, s in statuses.items() if s not in KILLED and k in equivalent]
        denominator = len(statuses) - len(equiv)
        for name, status in sorted(statuses.items()):
            if status in KILLED:
                continue
            with open(os.devnull, "w") as sink:
                _, diff = _mutmut(["show", name], work, sink)
            note = f"equivalent: {equivalent[name]}" if name in equivalent else "NOT equivalent: needs a test"
            survivors.append(f"== {name} [{status}] {note}\n{diff.strip()}\n")
        score = 100.0 * killed / denominator if denominator else float("nan")
        lines.append(
            f"{target.path}: {killed}/{denominator} killed ({score:.1f} %), {len(equiv)} equivalent, "
            f"{len(statuses)} mutants, {time.monotonic() - t0:.0f} s"
        )
        totals = [totals[0] + killed, totals[1] + denominator, totals[2] + len(equiv)]
        print(lines[-1], flush=True)
    stale = sorted(k for k in equivalent if k.split(".x")[0] in tested and k not in not_killed)
    if stale:  # a listed mutant that was killed or no longer exists: its function changed, re-judge the list
        lines.append(f"stale entries in {EQUIVALENT_FILE.name} (killed or gone): {', '.join(stale)}")
    score = 100.0 * totals[0] / totals[1] if totals[1] else float("nan")
    lines.append(
        f"TOTAL: {totals[0]}/{totals[1]} non-equivalent mutants killed ({score:.1f} %), {totals[2]} equivalent, "
        f"{time.monotonic() - start:.0f} s with --jobs {args.jobs}"
    )
    print(lines[-1])
    (args.out / "score.txt").write_text("\n".join(lines) + "\n")
    (args.out / "survivors.txt").write_text("\n".join(survivors) or "none\n")
    print(f"survivors: {args.out / 'survivors.txt'}")
    return 0 if score >= args.fail_under and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
