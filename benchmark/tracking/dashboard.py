"""W&B views of a sweep: the native charts of the sweep run, and the saved workspace that compares the defenses
(`make dashboard`).

The sweep run (`benchmark.tracking.runs.track`) carries W&B's own charts beside the PNGs: robust accuracy against
epsilon per attack (a line per defense), the per-example worst case at the headline budget (a bar per defense),
clean cost against worst-case robust accuracy (a dot per defense), all means over seeds, and the attack x defense
table in long format (`attack_defense`).

`make dashboard` saves a workspace per dataset pair into the sweep's project with `wandb-workspaces`: its run set
is the sweep's group without the training runs (`job_type != train`), filtered by pair and seed, grouped by
defense; its panels read the evaluation runs' metrics (`benchmark.tracking.charts.eval_metrics`, `eval_curves`), and
only metrics that the sweep's rows give are put in a panel. Building a workspace needs no network; saving it
needs a W&B login.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
from pathlib import Path

from omegaconf import OmegaConf

from attacks.errors import ConfigError, choose
from benchmark.records import eps_axis, eps_str, headline_eps, seed_note
from benchmark.results.figures import heatmap_columns
from benchmark.results.files import PairResults, read_csv
from benchmark.results.report import read_outputs
from benchmark.runner.config import headline_budgets
from benchmark.tracking.charts import WORST, evaluated_models, metric_tag

#: How a panel aggregates the runs of a defense (its seeds): their mean, with the range from the lowest to the
#: highest as the band or error bar.
GROUPING = {"groupby_aggfunc": "mean", "groupby_rangefunc": "minmax"}
NO_LOGIN = (
    "error: no W&B login (no API key in WANDB_API_KEY, ~/.netrc or the W&B settings): run `wandb login`, then "
    "`WANDB_MODE=online make bench` (or upload the offline runs: `wandb sync {out}/wandb/offline-run-*`), "
    "then `make dashboard` again"
)


# ---- the saved workspace --------------------------------------------------------------------------------
def _bar(title: str, metrics: list[str], n_runs: int):
    import wandb_workspaces.reports.v2 as wr

    return wr.BarPlot(title=title, metrics=metrics, groupby=wr.Config("defense"), max_runs_to_show=n_runs, **GROUPING)


class _Pair:
    """One pair's results and the W&B metrics its evaluation runs have."""

    def __init__(self, rows: list[dict], headline: dict[str, float], pair: str):
        self.res = PairResults([r for r in rows if r.pair == pair])
        self.headline = headline
        self.models = [m for m in evaluated_models(rows) if m["pair"] == pair]
        self.have = {k for m in self.models for k in m["metrics"]}

    def threat(self, kind: str) -> list[tuple[str, str]]:
        """The (attack, norm) of the pair's rows of one threat model (white-box, transfer)."""
        kinds = {(r.attack, r.norm) for r in self.res.rows if r.threat_model == kind}
        return [an for an in self.res.attacks if an in kinds]

    def at_headline(self, attack: str, norm: str) -> tuple[str, str]:
        """An attack's metric tag at the headline budget (or its swept budget nearest it) and that budget."""
        eps = min(self.res.epsilons(attack, norm), key=lambda e: abs(e - self.headline[norm]))
        return metric_tag(attack, norm, eps), eps_str(norm, eps)

    def bars(self, what: str, key: str, attacks: list[tuple[str, str]]) -> list:
        """A bar chart per attack of the metric `key` (with `{tag}`) at the headline budget, where logged."""
        out = []
        for attack, norm in attacks:
            tag, budget = self.at_headline(attack, norm)
            if (metric := key.format(tag=tag)) in self.have:
                out.append(_bar(f"{what}: {attack} ({norm} {budget})", [metric], len(self.models)))
        return out


def panel_sections(rows: list[dict], headline: dict[str, float], pair: str) -> list[tuple[str, list]]:
    """(section name, panels) of one pair's workspace, each panel grouped by defense; a panel only for metrics
    that the pair's evaluation runs have."""
    import wandb_workspaces.reports.v2 as wr

    p = _Pair(rows, headline, pair)
    n = len(p.models)
    columns = sorted(heatmap_columns(p.res, p.headline), key=lambda c: c[0] != WORST)  # the worst cases first
    robust = p.bars("robust accuracy", "test/robust_acc/{tag}", [(a, nm) for a, nm, _ in columns])
    curves = {k: x for m in p.models for step in m["curves"] for x in step if x.startswith("curve/eps_") for k in step}
    lines = [
        wr.LinePlot(
            title=f"robust accuracy against epsilon: {y.removeprefix('curve/robust_acc/')}",
            x=x,
            y=[y],
            title_x=eps_axis(x.removeprefix("curve/eps_")),
            groupby=wr.Config("defense"),
            max_runs_to_show=n,
            **GROUPING,
        )
        for y, x in curves.items()
        if y != x
    ]
    clean = []
    if (WORST, "linf") in p.res.attacks and (worst := f"test/robust_acc/{p.at_headline(WORST, 'linf')[0]}") in p.have:
        x = "test/clean_cost" if "test/clean_cost" in p.have else "test/clean_acc"
        clean.append(
            wr.ScatterPlot(title=f"{x.removeprefix('test/')} against worst-case robust accuracy", x=x, y=worst)
        )
    clean += [_bar(k.removeprefix("test/"), [k], n) for k in ("test/clean_acc", "test/clean_cost") if k in p.have]
    cost = [_bar(k.removeprefix("cost/"), [k], n) for k in ("cost/train_seconds", "cost/prep_seconds") if k in p.have]
    for field in ("attack_seconds", "forward_passes"):
        keys = [k for a, nm in p.res.attacks if (k := f"cost/{field}/{p.at_headline(a, nm)[0]}") in p.have]
        cost += [_bar(f"{field} per attack at the headline budget", keys, n)] if keys else []
    transfer, whitebox = p.threat("transfer"), p.threat("white-box")
    sections = [
        ("Robust accuracy at the headline budget", robust),
        ("Robust accuracy against epsilon", lines),
        ("Clean accuracy and its cost", clean),
        (
            "Transferability from the surrogate",
            p.bars("transferability", "test/transfer/{tag}/transferability", transfer)
            + p.bars("accuracy under transfer", "test/transfer/{tag}/acc", transfer),
        ),
        ("Detection AUROC (adversarial vs clean)", p.bars("detection AUROC", "test/detection_auroc/{tag}", whitebox)),
        ("Training and attack cost", cost),
        ("Flags (sanity and AutoAttack checks)", [_bar("flags per model", ["n_flags"], n)]),
    ]
    return [(name, panels) for name, panels in sections if panels]


def workspace(
    rows: list[dict],
    headline: dict[str, float],
    *,
    entity: str,
    project: str,
    group: str,
    pair: str,
    seeds: list | None = None,
):
    """The workspace of one pair of a sweep (`wandb_workspaces.workspaces.Workspace`, not saved): the sections
    of `panel_sections`, a run set of the sweep's group without its training runs, filtered to the pair and to
    `seeds` (default: every seed of the pair) and grouped by defense."""
    import wandb_workspaces.workspaces as ws
    from wandb_workspaces import expr

    models = [m for m in evaluated_models(rows) if m["pair"] == pair]
    seeds = seeds if seeds is not None else list(dict.fromkeys(m["rows"][0].seed for m in models))
    return ws.Workspace(
        entity=entity,
        project=project,
        name=f"{group}: {pair}, defenses compared ({seed_note(len(seeds), 'band: lowest to highest seed')})",
        sections=[ws.Section(name=k, panels=v, is_open=True) for k, v in panel_sections(rows, headline, pair)],
        settings=ws.WorkspaceSettings(max_runs=max(10, len(models))),
        runset_settings=ws.RunsetSettings(
            filters=[
                expr.Metric("JobType") != "train",
                expr.Metric("Group") == group,
                expr.Config("pair").isin([pair]),
                expr.Config("seed").isin(seeds),
            ],
            groupby=[expr.Config("defense")],
            pinned_columns=[f"config:{k}" for k in ("defense", "seed")]
            + [f"summary:{k}" for k in ("test/clean_acc", "n_flags", "flags")],
        ),
    )


# ---- make dashboard -------------------------------------------------------------------------------------
def api_key() -> str | None:
    """The W&B API key this machine would use (WANDB_API_KEY, `wandb login`'s ~/.netrc, the W&B settings), or None.

    `wandb.api.api_key` only looks it up; `wandb.login(prompt=False)`, which W&B suggests instead, refuses in
    offline mode (WANDB_MODE=offline) and writes W&B's settings file. Its deprecation notice is not ours to print.
    """
    if key := os.environ.get("WANDB_API_KEY"):
        return key
    import wandb

    with contextlib.redirect_stderr(io.StringIO()):
        return getattr(getattr(wandb, "api", None), "api_key", None)


def _seed(value):
    """A seed as the evaluation runs logged it (an int; results.csv gives text)."""
    return int(value) if str(value).lstrip("-").isdigit() else value


def load_sweep(out: Path) -> dict:
    """What `make dashboard` needs from a finished sweep's folder: rows, headline budgets, project, entity, group."""
    if not (out / "results.csv").exists() or not (out / "config.yaml").exists():
        raise ConfigError(f"no results.csv or config.yaml in {out}; run `make bench` first")
    cfg = OmegaConf.to_container(OmegaConf.load(out / "config.yaml"), resolve=False)
    logger = cfg.get("logger") or {}
    if not logger.get("project") or logger.get("mode") == "disabled":
        raise ConfigError(f"the sweep in {out} was not logged to W&B (logger=none); run it with logger=wandb")
    rows = read_csv(out / "results.csv")
    saved = read_outputs(out)["report_config"].get("headline")
    headline = saved if saved is not None else headline_budgets(cfg)
    return {
        "rows": rows,
        "headline": headline_eps(rows, headline),  # resolved on the rows, as the report does
        "project": logger["project"],
        "entity": logger.get("entity"),
        "group": cfg["name"],
    }


def main(argv: list[str] | None = None) -> int:
    """Save a W&B workspace per dataset pair of a finished sweep (`make dashboard`)."""
    parser = argparse.ArgumentParser(prog="python -m benchmark.tracking.dashboard", description=main.__doc__)
    parser.add_argument("results", type=Path, help="the sweep's folder, results/<experiment>")
    parser.add_argument("--pair", action="append", help="only this dataset pair (repeatable; default: every pair)")
    parser.add_argument("--seed", action="append", help="only this seed (repeatable; default: every seed)")
    parser.add_argument("--entity", help="W&B entity (default: the config's logger.entity, else your default)")
    parser.add_argument("--dry-run", action="store_true", help="build and list the panels; save nothing")
    args = parser.parse_args(argv)
    try:
        sweep = load_sweep(args.results)
        pairs = list(dict.fromkeys(r.pair for r in sweep["rows"]))
        seeds = list(dict.fromkeys(r.seed for r in sweep["rows"]))
        for p in args.pair or []:
            choose("pair", p, pairs)
        for s in args.seed or []:
            choose("seed", str(s), map(str, seeds))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    keep = {"seeds": [_seed(s) for s in args.seed] if args.seed else None}
    views = [
        workspace(
            sweep["rows"],
            sweep["headline"],
            entity=args.entity or sweep["entity"] or "",
            project=sweep["project"],
            group=sweep["group"],
            pair=p,
            **keep,
        )
        for p in args.pair or pairs
    ]
    if args.dry_run:
        for view in views:
            print(f"{view.name} (project {view.project}, run set: {view.runset_settings.filters})")
            for section in view.sections:
                print(f"  {section.name}: " + "; ".join(p.title for p in section.panels))
        return 0
    if not api_key():
        print(NO_LOGIN.format(out=args.results), file=sys.stderr)
        return 2
    import wandb

    try:
        entity = args.entity or sweep["entity"] or wandb.Api().default_entity
        if not entity:
            print("error: no W&B entity; pass one: make dashboard ARGS='--entity <team or user>'", file=sys.stderr)
            return 2
        for view in views:
            view.entity = entity
            view.save()  # prints the workspace's URL
    except Exception as e:  # noqa: BLE001 - W&B's errors (network, permissions) as one line, not a traceback
        print(f"error: saving the workspace failed ({type(e).__name__}: {e})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
