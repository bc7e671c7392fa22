"""W&B dashboards without a network: a fabricated sweep (`fake_runs.fake_run`, two pairs, two seeds) is
logged offline through `track`, read back from the run files, and the workspace `make dashboard` would save is
built (not saved) and checked against what the runs hold."""

from __future__ import annotations

import json
import statistics

import pytest
import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws
from fake_runs import ATTACKS, DEFENSES, HEADLINE, fake_run
from omegaconf import OmegaConf
from PIL import Image
from wandb_reader import chart_table_key, read_run, read_table

from benchmark.records import Row
from benchmark.results.files import PairResults, write_csv
from benchmark.results.report import report_inputs
from benchmark.results.verdicts import findings
from benchmark.tracking import charts as wandb_charts
from benchmark.tracking import dashboard
from benchmark.tracking.runs import Tracker, track

PAIRS = ("svhn_mnist", "mnist_usps")
SEEDS = (0, 1)
KEEP = ("finetune", "pgd_at", "purifier", "atop")  # plain fine-tuning (the clean-cost base), AT, two randomized
SWEPT = {(a, n) for a, n, _, budgets, *_ in ATTACKS if len(budgets) > 1}
CLAIMS, _ = report_inputs({})  # every shipped claim


def _rows() -> tuple[list[Row], dict]:
    """fake_run's rows with what the runner also writes: attack cost, transfer accuracy, preparation time."""
    rows, per_example = fake_run(pairs=PAIRS, seeds=SEEDS, defenses=[d for d in DEFENSES if d[0] in KEEP])
    for i, r in enumerate(rows):
        attack = r.attack != "worst_case"  # the worst case spans attacks: no cost of its own
        r.attack_seconds = 0.5 + i % 7 if attack else None
        r.forward_passes = 100 * (1 + i % 5) if attack else None
        r.transfer_acc = r.robust_acc if r.threat_model == "transfer" else None
        r.prep_seconds = 3.0 + r.seed if r.defense == "atop" else None
    return rows, per_example


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The fabricated sweep written as the runner writes it, logged offline, plus a training run in its group."""
    out = tmp_path_factory.mktemp("dashboard") / "results"
    rows, per_example = _rows()
    write_csv(rows, out / "results.csv")
    (out / "per_example.json").write_text(json.dumps(per_example))
    (out / "report_config.json").write_text(json.dumps({"headline": HEADLINE}))
    png = out / "heatmap.png"
    Image.new("RGB", (8, 8)).save(png)
    cfg = {
        "name": "fake",
        "results_dir": str(out),
        "report": {"headline": {"linf": "16/255", "l2": 1.0}, "transferability": "success_ratio"},
        "logger": {"project": "test", "entity": None, "mode": "offline", "dir": str(out)},
    }
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("WANDB_MODE", raising=False)
        found = findings(rows, per_example, HEADLINE, CLAIMS)  # the run computes them once, with the report
        assert track(cfg, rows, {"heatmap": png}, [], {"attacks_run": 1}, found, HEADLINE) == []
        # A training run of the same group whose config names a pair, a seed and a defense: only its job type
        # keeps it out of the dashboard's run set.
        train_config = {"pair": PAIRS[0], "seed": 0, "defense": "finetune"}
        Tracker({**cfg["logger"], "group": "fake"})._run("train-x", "train", train_config, {"val/acc": 0.9}, {})
    files = sorted((out / "wandb").glob("offline-run-*/run-*.wandb"))
    runs = [{**read_run(p), "file": p} for p in files]
    return {"out": out, "rows": rows, "runs": runs, "cfg": cfg, "findings": found}


def _by_type(sweep, job_type: str) -> list[dict]:
    return [r for r in sweep["runs"] if r["job_type"] == job_type]


def _find(rows, pair, defense, seed, attack, norm="linf", eps=16 / 255) -> Row:
    return next(
        r
        for r in rows
        if (r.pair, r.defense, r.seed, r.attack, r.norm) == (pair, defense, seed, attack, norm)
        and abs(r.eps - eps) < 1e-9
    )


# ---- what the runs hold ------------------------------------------------------------------------------------
def test_eval_runs_log_the_design_metric_names_and_a_curve_over_epsilon(sweep):
    rows = sweep["rows"]
    evals = {r["name"]: r for r in _by_type(sweep, "evaluate")}
    assert len(evals) == len(PAIRS) * len(SEEDS) * len(KEEP)
    run = evals["eval-svhn_mnist-pgd_at-seed1"]
    row = _find(rows, "svhn_mnist", "pgd_at", 1, "pgd_linf")
    base = _find(rows, "svhn_mnist", "finetune", 1, "pgd_linf")
    s = run["summary"]
    assert s["test/robust_acc/pgd_linf_16"] == pytest.approx(row.robust_acc)
    assert s["test/clean_cost"] == pytest.approx(row.clean_acc - base.clean_acc)
    assert s["test/detection_auroc/pgd_linf_16"] == pytest.approx(row.detection_auroc)
    assert s["cost/attack_seconds/pgd_linf_16"] == pytest.approx(row.attack_seconds)
    assert s["cost/train_seconds"] == pytest.approx(row.train_seconds)
    transfer = _find(rows, "svhn_mnist", "pgd_at", 1, "transfer_pgd_linf")
    assert s["test/transfer/transfer_pgd_linf_16/acc"] == pytest.approx(transfer.transfer_acc)
    worst = _find(rows, "svhn_mnist", "pgd_at", 1, "worst_case")
    assert s["test/robust_acc/worst_case_linf_16"] == pytest.approx(worst.robust_acc)
    assert not [k for k in s if k.startswith("curve/")], "a curve's last point is no result"
    assert evals["eval-svhn_mnist-atop-seed0"]["summary"]["cost/prep_seconds"] == 3.0

    points = [(h["curve/eps_linf"], h["curve/robust_acc/pgd_linf"]) for h in run["history"] if "curve/eps_linf" in h]
    expected = sorted((e * 255, _find(rows, "svhn_mnist", "pgd_at", 1, "pgd_linf", eps=e).robust_acc)
                      for e in (4 / 255, 8 / 255, 16 / 255, 32 / 255))  # fmt: skip
    assert points == [(pytest.approx(x), pytest.approx(y)) for x, y in expected]
    l2 = [(h["curve/eps_l2"], h["curve/robust_acc/pgd_l2"]) for h in run["history"] if "curve/eps_l2" in h]
    assert [x for x, _ in l2] == [0.25, 0.5, 1.0, 2.0]


def test_the_sweep_run_holds_native_charts_and_a_long_table(sweep):
    rows = sweep["rows"]
    (run,) = _by_type(sweep, "sweep")
    charts = run["charts"]
    for pair in PAIRS:
        assert {k for k in charts if k.startswith(f"charts/{pair}/robust_vs_eps/")} == {
            f"charts/{pair}/robust_vs_eps/{a}" for a, _ in SWEPT
        } | {f"charts/{pair}/robust_vs_eps/worst_case_linf"}
        assert charts[f"charts/{pair}/robust_vs_eps/pgd_linf"]["panelDefId"] == "wandb/lineseries/v0"
        assert charts[f"charts/{pair}/worst_case_linf"]["panelDefId"] == "wandb/bar/v0"
        assert charts[f"charts/{pair}/clean_cost_vs_robust"]["panelDefId"] == "wandb/scatter/v0"

    def table(key: str) -> list[dict]:
        columns, data = read_table(run["file"], run, key)
        return [dict(zip(columns, d)) for d in data]

    res = PairResults([r for r in rows if r.pair == "mnist_usps"])
    line = table(chart_table_key(charts["charts/mnist_usps/robust_vs_eps/pgd_linf"]))
    assert {r["lineKey"] for r in line} == {d for d in KEEP if d not in ("purifier", "atop")}
    for point in line:
        eps = point["step"] / 255
        assert point["lineVal"] == pytest.approx(statistics.mean(res.values(point["lineKey"], "pgd_linf", "linf", eps)))

    bar = table(chart_table_key(charts["charts/mnist_usps/worst_case_linf"]))
    means = {d: statistics.mean(res.values(d, "worst_case", "linf", 16 / 255)) for d in KEEP}
    assert {b["defense"]: b["robust_acc"] for b in bar} == pytest.approx(means)
    assert [b["robust_acc"] for b in bar] == sorted(means.values(), reverse=True), "ranked as in the leaderboard"

    dots = {d["defense"]: d for d in table(chart_table_key(charts["charts/mnist_usps/clean_cost_vs_robust"]))}
    assert dots["finetune"]["clean_cost"] == 0
    assert dots["pgd_at"]["clean_cost"] == pytest.approx(statistics.mean(res.clean_cost("pgd_at")))
    assert dots["atop"]["robust_acc"] == pytest.approx(means["atop"])

    long = table("attack_defense")
    plain = [r for r in rows if r.threat_model != "sanity"]
    assert len(long) == len(plain) and set(wandb_charts.LONG_COLUMNS) == set(long[0])
    first = long[0]
    assert (type(first["seed"]), type(first["eps"]), type(first["robust_acc"])) == (int, float, float)
    assert [r["robust_acc"] for r in long] == pytest.approx([r.robust_acc for r in plain])
    assert run["tables"]["findings"]["nrows"] == len(sweep["findings"]) == len(CLAIMS) * len(PAIRS), (
        "every claim per pair"
    )
    assert any(h.get("plots/heatmap/_type") == "image-file" for h in run["history"]), "the PNGs stay"


# ---- the workspace `make dashboard` saves -----------------------------------------------------------------
def _shown(view, runs: list[dict]) -> list[dict]:
    """The read-back runs that pass the run set's filters as the workspace sends them to W&B (filterV2: leaves on
    a run attribute or a config key, joined by AND)."""
    leaves = _spec(view)["runSets"][0]["filters"]["filters"]
    assert {leaf.get("connector", "AND") for leaf in leaves} == {"AND"}

    def passes(run: dict, leaf: dict) -> bool:
        key = leaf["key"]
        run_fields = {"jobType": run["job_type"], "group": run["group"]}
        value = run_fields[key["name"]] if key["section"] == "run" else run["config"].get(key["name"])
        return {"=": value == leaf["value"], "!=": value != leaf["value"], "IN": value in leaf["value"]}[leaf["op"]]

    return [r for r in runs if all(passes(r, leaf) for leaf in leaves)]


def _spec(view) -> dict:
    return view._to_model().model_dump(by_alias=True, exclude_none=True)["spec"]["section"]


def _keys(panel) -> list[tuple[str, str]]:
    """(kind, key) of every metric a panel reads: "summary" for bars and scatter plots, "history" for lines."""
    if isinstance(panel, wr.LinePlot):
        return [("history", panel.x), *(("history", y) for y in panel.y)]
    if isinstance(panel, wr.ScatterPlot):
        return [("summary", panel.x), ("summary", panel.y)]
    return [("summary", m) for m in panel.metrics]


@pytest.mark.parametrize("pair", PAIRS)
def test_the_workspace_groups_by_defense_and_reads_only_logged_metrics(sweep, pair):
    loaded = dashboard.load_sweep(sweep["out"])  # from results.csv, as `make dashboard` reads it
    view = dashboard.workspace(
        loaded["rows"], loaded["headline"], entity="someone", project="test", group="fake", pair=pair
    )
    assert isinstance(view, ws.Workspace) and view.project == "test"
    shown = _shown(view, sweep["runs"])
    assert sorted(r["name"] for r in shown) == sorted(f"eval-{pair}-{d}-seed{s}" for d in KEEP for s in SEEDS), (
        "the run set: this pair's evaluation runs of every seed, no training run, no other pair"
    )

    sections = {s.name: s.panels for s in view.sections}
    assert {"Robust accuracy at the headline budget", "Robust accuracy against epsilon", "Clean accuracy and its cost",
            "Transferability from the surrogate", "Detection AUROC (adversarial vs clean)", "Training and attack cost",
            "Flags (sanity and AutoAttack checks)"} == set(sections)  # fmt: skip
    headline = {m for p in sections["Robust accuracy at the headline budget"] for m in p.metrics}
    assert headline == {f"test/robust_acc/{a}_{'1' if n == 'l2' else '16'}" for a, n, *_ in ATTACKS} | {
        "test/robust_acc/worst_case_linf_16"
    }
    assert {p.y[0] for p in sections["Robust accuracy against epsilon"]} == {
        f"curve/robust_acc/{a}" for a, _ in SWEPT
    } | {"curve/robust_acc/worst_case_linf"}

    for panels in sections.values():
        for panel in panels:
            for kind, key in _keys(panel):
                if kind == "summary":
                    assert any(key in r["summary"] for r in shown), f"{panel.title}: no run logged {key}"
                else:  # a line needs x and y logged in the same steps, two or more of them
                    steps = [[h for h in r["history"] if panel.x in h and panel.y[0] in h] for r in shown]
                    assert max(map(len, steps)) >= 2, f"{panel.title}: no line over {panel.x}"
            if not isinstance(panel, wr.ScatterPlot):
                assert isinstance(panel.groupby, wr.Config) and panel.groupby.name == "defense", panel.title

    spec = _spec(view)
    assert spec["runSets"][0]["grouping"] == [{"section": "config", "name": "defense.value"}]
    grouped = [p for s in spec["panelBankConfig"]["sections"] for p in s["panels"] if p["viewType"] != "Scatter Plot"]
    assert grouped and {p["config"]["groupBy"] for p in grouped} == {"defense.value"}


def test_the_seed_filter_narrows_the_run_set(sweep):
    loaded = dashboard.load_sweep(sweep["out"])
    view = dashboard.workspace(loaded["rows"], loaded["headline"], entity="e", project="test", group="fake",
                               pair=PAIRS[0], seeds=[1])  # fmt: skip
    shown = {r["name"] for r in _shown(view, sweep["runs"])}
    assert shown == {f"eval-{PAIRS[0]}-{d}-seed1" for d in KEEP}
    assert view.name.endswith("(one training seed: one trained model per defense, not the method)"), view.name


# ---- make dashboard ---------------------------------------------------------------------------------------
@pytest.fixture
def no_login(monkeypatch, tmp_path):
    for var in ("WANDB_API_KEY", "NETRC", "WANDB_CONFIG_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    saved = []
    monkeypatch.setattr(ws.Workspace, "save", lambda self: saved.append(self) or self)
    return saved


def test_without_a_login_make_dashboard_says_what_to_do_in_one_line(sweep, no_login, capsys):
    assert dashboard.main([str(sweep["out"])]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "wandb login" in err and "WANDB_MODE=online make bench" in err and "wandb sync" in err
    assert no_login == [], "saved without a login"


def test_with_a_login_a_workspace_per_pair_is_saved(sweep, no_login, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert dashboard.main([str(sweep["out"]), "--entity", "someone"]) == 0
    band = f"mean over {len(SEEDS)} seeds; band: lowest to highest seed"
    assert [v.name for v in no_login] == [f"fake: {p}, defenses compared ({band})" for p in PAIRS]
    assert {v.entity for v in no_login} == {"someone"}


def test_an_unknown_pair_is_refused_naming_the_valid_ones(sweep, capsys):
    assert dashboard.main([str(sweep["out"]), "--pair", "nope", "--dry-run"]) == 2
    assert capsys.readouterr().err.strip() == f"error: unknown pair 'nope'; valid: {', '.join(sorted(PAIRS))}"
