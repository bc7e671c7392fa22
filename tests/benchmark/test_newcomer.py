"""A newcomer's first hour (issue 21): nothing overwritten, plots that cannot mislead, errors that name what is valid,
a plan that says what it will cost, a quiet warm rerun, W&B runs that a rerun replaces."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from fake_runs import DEFENSES, HEADLINE, fake_row, fake_run
from sweeps import ONE_EPOCH

from benchmark import run as runner
from benchmark.results.figure_style import family, label, model_styles
from benchmark.results.figures import figures
from benchmark.runner import estimate
from benchmark.runner.config import compose, shipped_defenses
from benchmark.runner.overrides import sweep_dir
from lightning_modules.loggers import replace_offline


# ---- results folders ------------------------------------------------------------------------------------------
def test_the_experiments_own_sweep_keeps_its_folder_and_a_changed_one_gets_its_own():
    assert compose([])["results_dir"] == "results/digits"
    assert compose(["launcher=workers", "logger=none", "progress=false"])["results_dir"] == "results/digits"
    narrowed = compose(["defense=[finetune,pgd_at]"])
    assert narrowed["results_dir"].startswith("results/digits/sweeps/defense-finetune-pgd_at-")
    assert narrowed["logger"]["dir"] == narrowed["results_dir"], "its W&B runs go with it"
    assert compose(["seeds=[0,1]"])["results_dir"] != narrowed["results_dir"]
    assert compose(["defense=[finetune]", "results_dir=/tmp/mine"])["results_dir"] == "/tmp/mine"
    assert sweep_dir(["eval.batch_size=64", "eval.device=cpu", "cache_dir=/c"]) is None, "how it runs, not what"


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


@pytest.mark.slow
def test_a_narrower_sweep_leaves_every_file_of_a_wider_one_unchanged(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cache = f"cache_dir={tmp_path / 'cache'}"
    wide = runner.run(compose([*ONE_EPOCH, cache]))
    wide_dir = Path(compose([*ONE_EPOCH, cache])["results_dir"])
    before = _digests(wide_dir)
    assert "results.csv" in before and "leaderboard.md" in before
    # the README's add-a-defense command narrows the sweep the same way
    narrowed = [o for o in ONE_EPOCH if not o.startswith(("defense", "attack"))]
    narrowed += [
        "defense=[finetune]",
        "defense.finetune.trainer.max_epochs=1",
        "attack=[fgsm]",
        "attack.fgsm.epsilons=[8/255]",
    ]
    narrow = runner.run(compose([*narrowed, cache]))
    narrow_dir = Path(compose([*narrowed, cache])["results_dir"])
    assert narrow_dir != wide_dir and (narrow_dir / "results.csv").exists()
    assert _digests(wide_dir) == before, "the wider sweep's files were changed"
    assert {r.defense for r in narrow["rows"]} == {"teacher", "finetune"} and len(wide["rows"]) > len(narrow["rows"])


# ---- errors ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("eval.n_examples=abc", "eval.n_examples must be an integer >= 1 or null, got 'abc'"),
        ("eval.n_exampels=10", "did you mean eval.n_examples"),
        ("attack.fgsm.eps=[0.1]", "did you mean attack.fgsm.epsilons"),
        ("+defense.finetune.module.lrr=0.1", "(did you mean 'lr'?)"),
        ("eval.device=gpu", "eval.device must be auto, cpu, cuda, cuda:N or mps"),
        ("eval.detection=maybe", "eval.detection must be true or false"),
        ("eval.seed=x", "eval.seed must be an integer"),
        ("defense=[finetun]", "unknown defense 'finetun'; valid:"),
    ],
)
def test_every_bad_value_stops_before_any_work_with_one_line(override, says, capsys, tmp_path):
    code = runner.main([override, f"cache_dir={tmp_path / 'cache'}", f"results_dir={tmp_path / 'r'}", "--plan"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert says in err and err.startswith("error: ")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "r").exists(), "nothing was computed or written"


# ---- what a run will cost --------------------------------------------------------------------------------------
@pytest.mark.slow
def test_the_plan_says_what_is_cached_and_what_it_will_cost(tmp_path, monkeypatch, capsys):
    from benchmark.runner.planner import make_plan

    cfg = compose([*ONE_EPOCH, f"cache_dir={tmp_path / 'cache'}", f"results_dir={tmp_path / 'r'}"])
    plan = make_plan(cfg)[0]
    cold = estimate.summary(cfg, plan)
    assert cold["by_kind"]["training"] == {"to compute": 3} and cold["estimated_seconds"] > 0
    costs = cold["costs"]["digits"]
    assert cold["relative_cost"] == costs["train"] / costs["ref"]
    contiguous = compose([*ONE_EPOCH, "numerics.channels_last=false", f"cache_dir={tmp_path / 'cache'}"])
    assert estimate.relative_cost(contiguous, "digits") == 1.0, "the default model on digits is the reference"
    monkeypatch.setattr(estimate, "FAR_BEYOND_SECONDS", cold["estimated_seconds"] / 2)
    assert "far beyond the default" in estimate.far_beyond(cold)
    runner.run(cfg)
    capsys.readouterr()
    warm = estimate.summary(cfg, plan)
    assert warm["estimated_seconds"] == 0 and warm["by_kind"]["attack cells"].get("to compute", 0) == 0
    assert "nothing to compute: every stage is cached" in estimate.describe(warm)
    # a warm rerun prints no line per cached cell: a count and where the files are
    runner.run(cfg)
    err = capsys.readouterr().err
    assert "(cached)" not in err and "read from the cache" in err


def test_a_bigger_model_is_priced_higher(tmp_path):
    cfg = compose(["model.backbone=resnet10t", "logger=none", f"cache_dir={tmp_path}"])
    assert estimate.relative_cost(cfg, "digits") > 2


# ---- figures ---------------------------------------------------------------------------------------------------
def test_thirteen_models_are_told_apart_by_family_hue_and_marker():
    families = {name: d["family"] for name, d in shipped_defenses().items()}  # from the defense configs
    models = ["teacher", "common", *families, "my_defense"]
    colors, markers = model_styles(models, families)
    styles = {(tuple(round(c, 3) for c in colors[m]), markers[m]) for m in models}
    assert len(styles) == len(models), "two models share a colour and a marker"
    for fam in {family(m, families) for m in models}:
        members = [m for m in models if family(m, families) == fam]
        assert len({markers[m] for m in members}) == len(members), f"{fam}: markers repeat within the family"
    red = [colors[m] for m in ("pgd_at", "trades", "tla", "genaf")]
    assert all(c[0] > c[2] for c in red), "adversarial fine-tuning is one (red) hue"
    assert label("teacher") == "teacher (reference)" and label("pgd_at") == "pgd_at"


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts] + [ax.get_xlabel() for ax in fig.axes]


def test_a_rejecting_models_non_adaptive_numbers_are_not_drawn_as_robustness():
    rows, _ = fake_run(defenses=DEFENSES[:4])
    flagged = "ignores_reject_option"
    rows += [
        fake_row(
            "svhn_mnist",
            "differentiator",
            0,
            "pgd_linf",
            "linf",
            e,
            "white-box",
            [1] * 10,
            [1] * 9 + [0],
            False,
            flags=flagged,
        )  # fmt: skip
        for e in (4 / 255, 8 / 255, 16 / 255, 32 / 255)
    ]
    rows.append(
        fake_row(
            "svhn_mnist",
            "differentiator",
            0,
            "pgd_reject_aware",
            "linf",
            16 / 255,
            "white-box",
            [1] * 10,
            [1] * 4 + [0] * 6,
            False,
        )  # fmt: skip
    )
    figs, _ = figures(rows, HEADLINE)
    lines = {ln.get_label() for ax in figs["robust_vs_eps"].axes for ln in ax.get_lines()}
    assert "differentiator" not in lines, "the 90 % under non-adaptive PGD is drawn as a line"
    heat = _texts(figs["heatmap"])
    assert "not\nadaptive" in heat and any("ignores the model's reject option" in t for t in heat)
    assert "90" not in heat


def test_the_heatmap_explains_only_the_marks_it_shows_and_titles_name_the_experiment():
    rows, _ = fake_run(defenses=DEFENSES[:4], attacks=[a for a in __import__("test_report").ATTACKS if not a[4]])
    figs, _ = figures(rows, HEADLINE)
    heat = _texts(figs["heatmap"])
    assert "n/a" not in heat and not any("does not apply" in t for t in heat), "a footer for marks it does not show"
    title = figs["robust_vs_eps"]._suptitle.get_text()
    assert title.startswith("fake (svhn_mnist):"), title


def test_every_figure_says_what_its_seeds_are():
    """The leaderboard's rule in the figures: one seed is one trained model per defense, several are a mean with
    an interval."""
    one = "one training seed: one trained model per defense, not the method"
    for seeds, want in (((0,), one), ((0, 1, 2), "mean over 3 seeds")):
        rows, _ = fake_run(seeds=seeds, defenses=DEFENSES[:4])
        figs, _ = figures(rows, HEADLINE)
        titles = {
            "robust_vs_eps": figs["robust_vs_eps"]._suptitle.get_text(),
            "heatmap": figs["heatmap"].axes[0].get_title().replace("\n", " "),
            "tradeoff": figs["tradeoff"].axes[0].get_title().replace("\n", " "),
        }
        for name, title in titles.items():
            assert want in title, (name, title)
            assert (one in title) == (len(seeds) == 1), (name, title)


def test_a_model_the_run_flagged_is_marked_in_every_figure():
    """A sanity flag (here on a sanity row, as the frozen-randomness check sets it) marks the model "(flagged)" in
    the legends, the bars and the heatmap's rows, with one line saying what it means; the reject-option flags do not
    (those numbers are left out of the figures already)."""
    from dataclasses import replace

    from benchmark.results.figures import FLAGGED_NOTE, flagged_models

    rows, _ = fake_run(defenses=DEFENSES[:4])
    names = list(dict.fromkeys(r.defense for r in rows))
    marked, quiet = names[1], names[2]
    sanity = replace(next(r for r in rows if r.defense == marked), threat_model="sanity",
                     flags="frozen_randomness_attack_fails")  # fmt: skip
    reject = replace(next(r for r in rows if r.defense == quiet), threat_model="sanity", flags="ignores_reject_option")
    rows = [*rows, sanity, reject]
    assert flagged_models(rows) == {marked}
    figs, _ = figures(rows, HEADLINE)
    for name in ("robust_vs_eps", "tradeoff"):
        legend = figs[name].legends[0]
        labels = [t.get_text() for t in legend.get_texts()]
        assert f"{marked} (flagged)" in labels and quiet in labels and f"{quiet} (flagged)" not in labels, labels
        assert " ".join(legend.get_title().get_text().split()) == "model " + FLAGGED_NOTE
    heat = figs["heatmap"].axes[0]
    assert f"{marked} (flagged)" in [t.get_text() for t in heat.get_yticklabels()]
    assert FLAGGED_NOTE in heat.get_xlabel()
    plain, _ = fake_run(defenses=DEFENSES[:4])
    figs, _ = figures(plain, HEADLINE)
    assert figs["tradeoff"].legends[0].get_title().get_text() == "model", "no note without a flagged model"


# ---- W&B -------------------------------------------------------------------------------------------------------
def test_a_rerun_replaces_its_offline_run(tmp_path):
    for name in ("offline-run-20261202_080000-eval-abc", "offline-run-20261202_090000-eval-abc", "offline-run-1-x"):
        (tmp_path / "wandb" / name).mkdir(parents=True)
    gone = replace_offline(tmp_path, "eval-abc")
    assert len(gone) == 2 and [p.name for p in (tmp_path / "wandb").iterdir()] == ["offline-run-1-x"]


# ---- make bench: several experiments in one process ---------------------------------------------------------------
def test_experiments_run_in_one_process_with_the_same_overrides(monkeypatch, capsys):
    seen = []
    group = lambda cfgs: [seen.append((c["name"], c["logger"]["mode"])) or {"failed": []} for c in cfgs]  # noqa: E731
    monkeypatch.setattr(runner, "run_group", group)
    assert runner.main(["--experiments", "digits digits_ssl", "logger=none"]) == 0
    assert seen == [("digits", "disabled"), ("digits_ssl", "disabled")]
    assert "make bench: digits + digits_ssl" in capsys.readouterr().out


def test_experiments_bad_names_stop_before_any_work_and_a_failed_stage_exits_1(monkeypatch, capsys):
    seen = []
    group = lambda cfgs: [seen.append(c["name"]) or {"failed": ["x"] if c is cfgs[0] else []} for c in cfgs]  # noqa: E731
    monkeypatch.setattr(runner, "run_group", group)
    assert runner.main(["--experiments", "digits,digits_ssl"]) == 1 and seen == ["digits", "digits_ssl"]
    assert runner.main(["--experiments", "digits nope"]) == 2 and seen == ["digits", "digits_ssl"]
    assert runner.main(["--experiments"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "nope" in err[0] and "--experiments needs" in err[1]
