"""Run a benchmark sweep: `python -m benchmark.run [experiment=NAME] [overrides...]`.

Examples:
    python -m benchmark.run                                   # the default experiment (digits)
    python -m benchmark.run experiment=mnist_usps data.mnist_usps.root=/data
    python -m benchmark.run defense=pgd_at attack=pgd_linf    # narrow the sweep to one defense, one attack
    python -m benchmark.run 'defense=[finetune,pgd_at]' seeds=[0,1,2] logger=none
    python -m benchmark.run --cfg                             # print the composed config and stop

Bad input stops with one line naming what is valid and exit code 2; an interrupted sweep keeps every
finished stage, and the same command continues from there.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

from omegaconf import OmegaConf

from attacks.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
GROUPS = ("data", "model", "teacher", "defense", "attack", "trainer", "logger", "experiment")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def check_choices(overrides: list[str]) -> None:
    """Reject unknown config-group options with one line that names the valid ones."""
    for o in overrides:
        m = re.fullmatch(r"[+~]?([a-z_]+)=(.*)", o)
        if not m or m.group(1) not in GROUPS:
            continue
        group, value = m.groups()
        names = [v.strip() for v in value.strip("[]").split(",") if v.strip()]
        for name in names:
            if name not in ("null",) and name not in options(group):
                raise ConfigError(f"unknown {group} '{name}'; valid: {', '.join(options(group))}")


def compose(overrides: list[str]) -> dict:
    """The composed, resolved config as a plain dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    check_choices(overrides)
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            cfg = OmegaConf.to_container(hydra_compose("config", overrides=overrides), resolve=True)
    except (HydraException, OmegaConfBaseException) as e:
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ConfigError(f"{first} (see `python -m benchmark.run --help`)") from None
    # An experiment may set values for members it selects (defense.freeze...); when the command line narrows
    # the selection, those values would remain as entries without a target: they are not part of the sweep.
    for group, target in (("data", ()), ("defense", ("module",)), ("attack", ("attack",))):
        for name in [n for n, entry in cfg[group].items() if "_target_" not in _get(entry, target)]:
            del cfg[group][name]
    cfg["stages"] = earlier_stages(cfg, overrides)
    return cfg


def earlier_stages(cfg: dict, overrides: list[str]) -> dict:
    """The defenses that selected ones start from (`init_from`) but the sweep does not evaluate.

    Each is composed from its own config file with the same experiment and overrides (minus the ones that
    select or set other defenses), so it is exactly what `defense=<name>` would train.
    """
    stages: dict = {}
    todo = [d["init_from"] for d in cfg["defense"].values() if d.get("init_from")]
    while todo:
        name = todo.pop()
        if name in cfg["defense"] or name in stages:
            continue
        if name not in options("defense"):
            raise ConfigError(f"init_from names unknown defense '{name}'; valid: {', '.join(options('defense'))}")
        keep = [
            o
            for o in overrides
            if not re.match(r"[+~]*defense[=.]", o) or o.lstrip("+~").startswith(f"defense.{name}.")
        ]
        stages[name] = compose([*keep, f"defense=[{name}]"])["defense"][name]
        if stages[name].get("init_from"):
            todo.append(stages[name]["init_from"])
    return stages


def _get(entry: dict, path: tuple[str, ...]) -> dict:
    for key in path:
        entry = entry.get(key) or {}
    return entry


def usage() -> str:
    lines = [__doc__.strip(), "", "Config groups and their options:"]
    lines += [f"  {g:<11} {', '.join(options(g))}" for g in GROUPS]
    return "\n".join(lines)


def eval_metrics(rows: list[dict]) -> dict[str, float]:
    """W&B metric names of one evaluated model: test/clean_acc, test/robust_acc/pgd_linf_8, test/transfer/..."""
    from attacks.base import eps_label

    out = {"test/clean_acc": rows[0]["clean_acc"]}
    for r in rows:
        tag = (
            f"{r['attack']}_{eps_label(r['eps'], r['norm'])}"
            if r["attack"] != "worst_case"
            else f"worst_case_{r['norm']}_{eps_label(r['eps'], r['norm'])}"
        )
        out[f"test/robust_acc/{tag}"] = r["robust_acc"]
        out[f"test/success_rate/{tag}"] = r["success_rate"]
        if r.get("draws", 1) > 1:  # a randomized model: the worst of K draws beside their mean
            out[f"test/robust_acc_worst_of_k/{tag}"] = r["robust_acc_worst_of_k"]
        if r["threat_model"] == "transfer":
            out[f"test/transfer/{tag}/acc"] = r["transfer_acc"]
            out[f"test/transfer/{tag}/transferability"] = r["transferability"]
    return out


def track(cfg: dict, rows: list[dict], plots: dict, warnings: list[str], stats: dict) -> list[str]:
    """Log evaluation runs (for models with freshly computed cells) and the sweep run to W&B."""
    from benchmark.tracking import Tracker

    logger_cfg = cfg.get("logger") or {}
    tracker = Tracker({**logger_cfg, "group": cfg["name"]} if logger_cfg else None)
    if not tracker.enabled or not any(v for k, v in stats.items() if k != "cache_hits"):
        return []
    models = {}
    for r in rows:
        models.setdefault((r["pair"], r["defense"], r["seed"]), []).append(r)
    for (pair, defense, seed), rs in models.items():
        if all(r["cached"] for r in rs):
            continue
        config = {k: rs[0][k] for k in ("experiment", "pair", "source", "target", "model", "defense", "mode", "seed")}
        config["attacks"] = sorted({r["attack"] for r in rs})
        flags = sorted({f for r in rs for f in (r.get("flags") or "").split(";") if f})
        tracker.log_evaluation(f"eval-{pair}-{defense}-seed{seed}", config, eval_metrics(rs), flags)
    summary = {
        "warnings": len(warnings),
        "warning_text": "\n".join(warnings),
        **{f"stats/{k}": v for k, v in stats.items()},
    }
    tracker.log_sweep(f"sweep-{cfg['name']}", cfg, rows, plots, summary)
    return tracker.failures


def quiet_lightning() -> None:
    """Keep the console for the sweep: no hardware banners or tips, no warnings about tiny datasets."""
    import logging
    import warnings

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    for pattern in ("does not have many workers", "smaller than the logging interval", r"isinstance\(treespec"):
        warnings.filterwarnings("ignore", f".*{pattern}.*")


def run(cfg: dict) -> dict:
    """Run a composed config; returns what was done (rows, stats, paths)."""
    from rich.console import Console

    quiet_lightning()
    from attacks.base import parse_eps
    from benchmark.report import write_report
    from benchmark.sweep import Sweep

    console = Console(stderr=True)
    start = time.perf_counter()
    sweep = Sweep(cfg, console)  # validates every name and value before any work
    console.log(f"experiment [bold]{cfg['name']}[/]: {sweep.total_cells()} cells -> {cfg['results_dir']}")
    rows = sweep.run()
    out = Path(cfg["results_dir"])
    headline = {k: parse_eps(v) for k, v in cfg["report"]["headline"].items()}
    warnings, plots = write_report(rows, out, headline, cfg["report"]["transferability"])
    stats = {"teacher_trained": 0, "student_trained": 0, "crafted": 0, "attacks_run": 0, "cache_hits": 0, **sweep.stats}
    (out / "report_config.json").write_text(
        json.dumps({"headline": headline, "transferability": cfg["report"]["transferability"]})
    )
    (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    elapsed = time.perf_counter() - start
    (out / "run_stats.json").write_text(json.dumps({**stats, "seconds": elapsed}, indent=1))
    failures = track(cfg, rows, plots, warnings, stats)
    console.log(
        f"done in {elapsed:.0f}s: trained {stats['teacher_trained']} teacher(s) and {stats['student_trained']} "
        f"student(s), crafted {stats['crafted']} transfer set(s), ran {stats['attacks_run']} attack(s), "
        f"{stats['cache_hits']} cache hit(s)"
    )
    for w in warnings:
        console.log(f"[yellow]WARNING[/]: {w}")
    console.log(
        f"results: {out / 'results.csv'}, {out / 'leaderboard.md'}, plots: {', '.join(str(p) for p in plots.values())}"
    )
    if cfg.get("logger") and cfg["logger"].get("mode") != "disabled":
        console.log(
            f"W&B ({cfg['logger']['mode']}): {cfg['logger']['dir']}/wandb"
            + ("; upload later with `wandb sync`" if cfg["logger"]["mode"] == "offline" else "")
        )
    return {
        "rows": rows,
        "stats": stats,
        "warnings": warnings,
        "plots": plots,
        "wandb_failures": failures,
        "seconds": elapsed,
    }


def main(argv: list[str] | None = None) -> int:
    from attacks.base import AttackConstraintError

    argv = sys.argv[1:] if argv is None else list(argv)
    if {"-h", "--help"} & set(argv):
        print(usage())
        return 0
    print_cfg = "--cfg" in argv
    argv = [a for a in argv if a != "--cfg"]
    try:
        cfg = compose(argv)
        if print_cfg:
            print(OmegaConf.to_yaml(cfg))
            return 0
        run(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except AttackConstraintError as e:
        print(f"error: an attack produced an invalid adversarial example ({e}); nothing was scored", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every finished stage is cached; run the same command again to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
