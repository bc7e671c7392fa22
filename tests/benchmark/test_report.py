"""The report (leaderboard.md, plots) and W&B tracking, from results a run could have written.

The runs are `fake_runs.fake_run`'s: plausible results.csv + per_example.json, no training.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

from fake_runs import ATTACKS, DEFENSES, HEADLINE, LINF, fake_run
from wandb_reader import read_run

from benchmark.records import Row, headline_eps
from benchmark.results import report
from benchmark.results.files import read_csv, write_csv
from benchmark.results.leaderboard import leaderboard
from benchmark.results.verdicts import findings
from benchmark.runner.checks import FLAG_DOC, flag_warnings


def write_run(tmp: Path, rows: list[Row], per_example: dict, run_warnings: list[str]) -> Path:
    write_csv(rows, tmp / "results.csv")
    (tmp / "per_example.json").write_text(json.dumps(per_example))
    (tmp / "run_warnings.json").write_text(json.dumps(run_warnings))
    (tmp / "report_config.json").write_text(json.dumps({"headline": HEADLINE, "transferability": "success_ratio"}))
    return tmp


def _find(rows, defense, attack, eps=16 / 255, norm="linf") -> Row:
    return next(
        r for r in rows if r.defense == defense and r.attack == attack and r.norm == norm and abs(r.eps - eps) < 1e-9
    )


# ---- leaderboard -------------------------------------------------------------------------------------------
def test_rebuild_reads_every_flag_and_run_warning_and_leaves_results_csv_alone(tmp_path):
    rows, per_example = fake_run()
    _find(rows, "atop", "eot_pgd_linf").flags = "eot_attack_not_converged"
    _find(rows, "finetune", "pgd_linf", 8 / 255).flags = "autoattack_softmax_output;autoattack_zero_gradients"
    _find(rows, "pgd_at", "transfer_pgd_linf").flags = "transfer_stronger_than_whitebox"
    # A series that sanity_flags would flag (robust accuracy rising with epsilon) but the runner did not: the
    # report must not raise flags of its own.
    _find(rows, "scratch", "fgsm", 32 / 255).robust_acc = 0.99
    run_warnings = ["atop: randomness sanity checks not run: needs `frozen(seed)` on the deployed model"]
    out = write_run(tmp_path, rows, per_example, run_warnings)
    before = (out / "results.csv").read_bytes()

    assert report.main([str(out)]) == 0

    board = (out / "leaderboard.md").read_text()
    raised = flag_warnings(read_csv(out / "results.csv"))
    expected = {"frozen_randomness_attack_fails", "eot_attack_not_converged", "autoattack_softmax_output",
                "autoattack_zero_gradients", "transfer_stronger_than_whitebox"}  # fmt: skip
    assert len(raised) == 2 * 1 + 1 + 2 + 1, "two randomized sanity flags, eot, two autoattack, one transfer"
    for line in [*raised, *run_warnings]:
        assert f"- WARNING: {line}" in board
    assert all(FLAG_DOC[f] in board for f in expected)
    assert FLAG_DOC["non_monotone_in_eps"] not in board, "the report raised a flag the runner did not"
    assert f"**{len(raised) + 1} warning(s)**" in board
    assert (out / "results.csv").read_bytes() == before, "the rebuild changed results.csv"
    assert {"robust_vs_eps.png", "heatmap.png", "tradeoff.png"} <= {p.name for p in out.iterdir()}


def test_a_warm_rerun_reuses_the_report_built_from_the_same_files_and_rebuilds_on_any_change(tmp_path, monkeypatch):
    """The runner's `write_report_if_changed`: same input files and code -> nothing redrawn, the same plots and
    findings handed on (the leaderboard untouched); a changed input, a missing plot or another code digest ->
    rebuilt."""
    rows, per_example = fake_run(defenses=DEFENSES[1:3], attacks=ATTACKS[:2])
    out = write_run(tmp_path, rows, per_example, [])
    args = (out, rows, per_example, {"headline": HEADLINE}, [])
    built, rebuilt = report.write_report_if_changed(*args)
    plots, found = built.plots, built.found
    assert rebuilt and found and plots and built.headline == headline_eps(rows, HEADLINE)
    board = (out / "leaderboard.md").read_bytes()

    drawn = []
    real = report.write_report
    monkeypatch.setattr(report, "write_report", lambda *a: drawn.append(1) or real(*a))
    again, rebuilt = report.write_report_if_changed(*args)
    assert not rebuilt and not drawn
    assert json.dumps(again.to_json()) == json.dumps(built.to_json()), "plots, findings, warnings, headline"
    assert (out / "leaderboard.md").read_bytes() == board

    plots["heatmap"].unlink()  # a plot gone: redrawn
    assert report.write_report_if_changed(*args)[1] and plots["heatmap"].exists()
    (out / "run_warnings.json").write_text(json.dumps(["a new warning"]))  # an input changed
    assert report.write_report_if_changed(*args)[1]
    assert not report.write_report_if_changed(*args)[1]
    monkeypatch.setattr(report, "inputs_digest", lambda out_dir: "another code")  # e.g. the report's code changed
    assert report.write_report_if_changed(*args)[1]
    assert len(drawn) == 3


def test_rebuild_without_per_example_data_still_reports(tmp_path):
    """An older run (no per_example.json, no run_warnings.json): the findings say they could not be tested."""
    rows, _ = fake_run(defenses=DEFENSES[1:3], attacks=ATTACKS[:2])
    write_csv(rows, tmp_path / "results.csv")
    (tmp_path / "report_config.json").write_text(json.dumps({"headline": HEADLINE}))
    paths = report.rebuild(tmp_path)
    board = (tmp_path / "leaderboard.md").read_text()
    assert "not tested (no per-example outcomes for its rows)" in board
    assert "not in this run" in board, "the TLA claim: no tla rows"
    assert all(p.exists() for p in paths.values())


def test_means_over_seeds_carry_the_random_effects_interval_of_their_examples(tmp_path):
    from benchmark.results.claims import stacked
    from benchmark.results.statistics import random_effects_mean

    rows, per_example = fake_run(seeds=(0, 1, 2), defenses=DEFENSES[1:3], attacks=ATTACKS[:2])
    board = leaderboard(rows, HEADLINE, "success_ratio", [], per_example=per_example)
    mine = {str(r.seed): per_example[r.row_id]["robust"] for r in rows
            if r.defense == "finetune" and r.attack == "pgd_linf" and abs(r.eps - 16 / 255) < 1e-9}  # fmt: skip
    test = random_effects_mean(stacked(mine))
    assert len(mine) == 3 and test["ci_low"] < test["mean"] < test["ci_high"]
    assert f"{100 * test['mean']:.1f} [{100 * test['ci_low']:.1f}, {100 * test['ci_high']:.1f}]" in board
    assert "±" not in board
    without = leaderboard(rows, HEADLINE, "success_ratio", [])
    assert f"| {100 * test['mean']:.1f} |" in without, "no per-example outcomes: the mean alone"


def test_the_report_reads_each_defenses_family_and_claims_from_what_the_run_wrote(tmp_path, monkeypatch):
    from benchmark.results import figures
    from benchmark.results.claims import ATTACK_CLAIMS

    rows, per_example = fake_run(defenses=DEFENSES[1:3], attacks=ATTACKS[:2])  # scratch and finetune
    out = write_run(tmp_path, rows, per_example, [])
    mine = {"text": "Scratch keeps more than fine-tuning", "source": "s", "higher": "scratch", "lower": "finetune",
            "attack": "fgsm"}  # fmt: skip
    written = {"scratch": {"family": "paper2", "claims": [mine]}, "finetune": {"family": "modes", "claims": []}}
    (out / "report_config.json").write_text(json.dumps({"headline": HEADLINE, "claims": None, "defenses": written}))
    drawn = {}
    styles = figures.model_styles
    monkeypatch.setattr(figures, "model_styles", lambda models, fam: drawn.update(fam) or styles(models, fam))

    def claims_shown() -> list[str]:
        board = (out / "leaderboard.md").read_text()
        section = board[board.index("\n## Findings") : board.index("\n## Sanity checks")]
        return [line.split(" | ")[0].removeprefix("| ") for line in section.splitlines() if line.count(" | ") > 10]

    report.rebuild(out)
    assert drawn == {"scratch": "paper2", "finetune": "modes"}, "the families the run wrote, not the shipped ones"
    about_attacks = [f"{c.text} ({c.source})" for c in ATTACK_CLAIMS]
    assert claims_shown()[1:] == [*about_attacks, f"{mine['text']} (s)"], "its defenses' claims, not finetune.yaml's"
    # the config's report.claims replaces them all
    replaced = {"headline": HEADLINE, "claims": [{**mine, "text": "only"}], "defenses": written}
    (out / "report_config.json").write_text(json.dumps(replaced))
    report.rebuild(out)
    assert claims_shown()[1:] == ["only (s)"]


def test_findings_section_in_the_leaderboard(tmp_path):
    rows, per_example = fake_run()
    out = write_run(tmp_path, rows, per_example, [])
    report.main([str(out)])
    board = (out / "leaderboard.md").read_text()
    section = board[board.index("\n## Findings") : board.index("\n## Sanity checks")]
    assert "Fine-tuning is more robust than training from scratch under white-box FGSM" in section
    assert "paired t over examples (one seed" in section
    from benchmark.results.claims import ATTACK_CLAIMS

    missing = [line for line in section.splitlines() if "not in this run" in line]
    # no defenses in report_config.json: every shipped claim; those naming a defense that is not in this fake run,
    # those about attacks it has not run and the worst case over transfer attacks (one here) are not in it
    claims, _ = report.report_inputs({})
    ran = {d for d, _, _ in DEFENSES}
    named = [{getattr(c, k, "") for k in ("higher", "lower", "defense", "base")} - {""} for c in claims]
    absent = [c.text for c, n in zip(claims, named) if n - ran or c in ATTACK_CLAIMS or c.attack == "worst_transfer"]
    assert all(any(text in line for text in absent) for line in missing), "every seed claim has its rows in this run"


def test_the_detection_table_is_there_only_when_detection_ran():
    rows, _ = fake_run(defenses=DEFENSES[1:3], attacks=ATTACKS[:2])
    title = "### Detecting adversarial inputs"
    board = leaderboard(rows, HEADLINE, "success_ratio", [])
    assert title in board and "| 70.0 |" in board[board.index(title) :]
    off = [replace(r, detection_auroc=None) for r in rows]  # eval.detection=false
    assert title not in leaderboard(off, HEADLINE, "success_ratio", [])


# ---- plots -------------------------------------------------------------------------------------------------
def test_one_colour_per_defense_in_every_figure_and_every_attack_in_the_heatmap():
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_rgba

    from benchmark.results.figure_style import label
    from benchmark.results.figures import figures

    rows, _ = fake_run(pairs=("svhn_mnist",))
    fewer = [(d, r, lv) for d, r, lv in DEFENSES if d not in ("scratch", "tla")]  # another pair, fewer defenses
    rows += fake_run(pairs=("mnist_usps",), defenses=fewer)[0]
    figs, colors = figures(rows, HEADLINE)
    try:
        assert set(figs) == {
            f"{k}_{p}" for k in ("robust_vs_eps", "heatmap", "tradeoff") for p in ("svhn_mnist", "mnist_usps")
        }
        assert len(set(colors.values())) == len(colors) == len(DEFENSES)
        seen: dict[str, set] = {}
        for stem, fig in figs.items():
            if stem.startswith("heatmap"):
                continue
            legend = fig.legends[0]
            names = {label(d): d for d in colors}  # the legend says which models are references
            for handle, text in zip(legend.legend_handles, legend.get_texts()):
                seen.setdefault(names[text.get_text().removesuffix(" (flagged)")], set()).add(
                    to_rgba(handle.get_color())
                )
            for ax in fig.axes:
                for line in ax.get_lines():
                    if not line.get_label().startswith("_"):
                        seen.setdefault(line.get_label(), set()).add(to_rgba(line.get_color()))
                for patch in ax.patches:
                    if not patch.get_label().startswith("_"):
                        seen.setdefault(patch.get_label(), set()).add(to_rgba(patch.get_facecolor()))
        assert set(seen) == set(colors)
        assert all(c == {to_rgba(colors[d])} for d, c in seen.items()), seen

        for pair in ("svhn_mnist", "mnist_usps"):
            ax = figs[f"heatmap_{pair}"].axes[0]
            labels = {t.get_text().split("\n")[0] + "/" + t.get_text().split("\n")[1].split()[0]
                      for t in ax.get_xticklabels()}  # fmt: skip
            wanted = {f"{r.attack}/{r.norm}" for r in rows if r.pair == pair and r.threat_model != "sanity"}
            assert labels == wanted, "every attack (and the worst case) once, no sanity check"
            assert {"worst_case/linf", "pgd_l2/l2", "autoattack_rand/linf"} <= labels

        # A single-budget attack is a bar chart: its panel has no line over a one-point axis.
        panels = {ax.get_title().split(" ")[0]: ax for ax in figs["robust_vs_eps_svhn_mnist"].axes if ax.get_title()}
        assert not [ln for ln in panels["eot_pgd_linf"].get_lines() if not ln.get_label().startswith("_")]
        assert len(panels["eot_pgd_linf"].patches) >= 2
        assert len(panels["pgd_linf"].get_xticks()) == len(LINF)
    finally:
        for fig in figs.values():
            plt.close(fig)


# ---- W&B ---------------------------------------------------------------------------------------------------
def test_the_worst_case_curve_leaves_out_budgets_no_white_box_attack_covered():
    """A randomized model attacked white-box at 16/255 only: its worst case at 32/255 over transfer and mimicry
    alone would draw a curve that rises with epsilon (seen in the digits plot)."""
    import matplotlib.pyplot as plt

    from benchmark.results.figures import figures

    rows, _ = fake_run(defenses=[d for d in DEFENSES if d[0] in ("pgd_at", "atop")])
    transfer = _find(rows, "atop", "transfer_pgd_linf", 32 / 255)
    rows.append(replace(transfer, attack="worst_case", threat_model="union: transfer_pgd_linf+mimicry_linf",
                        row_id=transfer.row_id.replace("transfer_pgd_linf", "worst_case")))  # fmt: skip
    figs, colors = figures(rows, HEADLINE)
    try:
        panel = next(ax for ax in figs["robust_vs_eps"].axes if ax.get_title().startswith("worst_case"))
        xs = {line.get_label(): [round(float(x), 3) for x in line.get_xdata()] for line in panel.get_lines()}
        assert xs["atop"] == [16.0], "atop's white-box attacks ran at 16/255 only"
        assert xs["pgd_at"] == [4.0, 8.0, 16.0, 32.0]
        assert "budgets a white-box attack covered" in panel.get_title()
    finally:
        for fig in figs.values():
            plt.close(fig)


def test_logging_the_same_sweep_twice_reuses_the_run_ids(tmp_path, monkeypatch):
    from benchmark.tracking.runs import track

    monkeypatch.delenv("WANDB_MODE", raising=False)
    rows, per_example = fake_run(defenses=DEFENSES[1:3], attacks=ATTACKS[:2])
    out = write_run(tmp_path / "results", rows, per_example, [])
    cfg = {
        "name": "fake",
        "results_dir": str(out),
        "report": {"headline": {"linf": "16/255", "l2": 1.0}, "transferability": "success_ratio"},
        "logger": {"project": "test", "mode": "offline", "dir": str(out)},
    }
    stats = {"attacks_run": 1}
    claims, _ = report.report_inputs({})  # every shipped claim
    found = findings(rows, per_example, HEADLINE, claims)  # the run computes them once, with the report

    def logged() -> dict[str, dict]:
        files = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))
        return {p.parent.name: read_run(p) for p in files}

    assert track(cfg, rows, {}, [], stats, found, HEADLINE) == []
    first = logged()
    ids = {r["id"] for r in first.values()}
    assert len(ids) == len(first) == 2 + 1, "an eval run per model and the sweep run"
    # W&B names an offline directory by the second and the id: a rerun a second later gets new directories.
    time.sleep(1.1)
    assert track(cfg, rows, {}, [], stats, found, HEADLINE) == []
    second = logged()
    assert len(second) == len(first), "offline, a rerun replaces its runs (wandb sync uploads each run once)"
    assert not set(second) & set(first), "the rerun's directories are new, the earlier ones removed"
    assert {r["id"] for r in second.values()} == ids, "a rerun logged new run ids"
    (sweep,) = {r["id"]: r for r in second.values() if r["job_type"] == "sweep"}.values()
    assert len(found) == len(claims), "every claim"
    assert sweep["tables"]["findings"]["nrows"] == len(found)
    assert sweep["tables"]["results"]["nrows"] == len(rows)


def test_a_report_without_headline_budgets_is_one_line_and_changes_nothing(tmp_path, capsys):
    """The report never guesses the budget a run is ranked at: without report_config.json's headline it stops."""
    rows, _ = fake_run(defenses=DEFENSES[1:3], attacks=ATTACKS[:2])
    write_csv(rows, tmp_path / "results.csv")
    (tmp_path / "report_config.json").write_text(json.dumps({"transferability": "success_ratio"}))
    before = (tmp_path / "results.csv").read_bytes()
    assert report.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no headline budgets" in err and "make bench" in err
    assert (tmp_path / "results.csv").read_bytes() == before and not (tmp_path / "leaderboard.md").exists()
