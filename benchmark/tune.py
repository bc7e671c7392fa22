"""Choose a defense hyper-parameter on the validation split: `python -m benchmark.tune PARAM=V1,V2,... [overrides]`.

Each candidate value is trained (cached like any stage), then its deployed model is attacked on the target
domain's **validation** split with the sweep's attack at the headline budget; the value with the best validation
robust accuracy wins (ties: the better validation clean accuracy). The test split is never read, so a choice made
here can be reported on the test split afterwards without selection bias.

Examples:
    python -m benchmark.tune defense.trades.module.beta=1,3,6 defense=trades
    python -m benchmark.tune defense.genaf_stage1.module.gr_weight=0,1,5,20 defense=genaf

Writes `results/<experiment>/tuning/<defense>.md` and `.json`, and prints the table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from attacks.errors import ConfigError
from benchmark.config import compose
from benchmark.execute import Executor
from benchmark.numerics import stage_numerics
from benchmark.plan import make_attack, make_plan
from benchmark.stages.attack import compute_cell, predict_draws
from benchmark.stages.build import build_datamodule
from benchmark.stages.score import metrics
from benchmark.stages.train import load_trained


def validation_robustness(cfg: dict, attack_name: str) -> dict:
    """Train the sweep's only defense (cached) and score it on the target validation split."""
    plan, _, _ = make_plan(cfg)
    ex = Executor(cfg, plan)
    for stage in plan.stages:
        if stage["kind"] in ("teacher", "student"):
            with stage_numerics(cfg):  # the cached models are the sweep's: the same threads as its stages
                ex._train(stage)
    (defense,) = cfg["defense"]
    pair = next(iter(cfg["data"]))
    student = plan.stage(f"{pair}/{defense}/seed{cfg['seeds'][0]}")
    module = load_trained(student["job"]).to(ex.device)
    model = module.deployed_model()
    dm = build_datamodule(cfg["data"][pair])  # not the executor's: it loads the test split for its cells
    dm.setup()
    x, y = dm.tensors("target", "val")
    acfg = cfg["attack"][attack_name]
    headline = cfg["report"]["headline"]["linf"]
    attack = make_attack({"cfg": acfg["attack"], "eps": headline})
    randomized = bool(getattr(module, "randomized", False))
    draws = cfg["eval"]["draws"] if randomized else 1
    if randomized and getattr(attack, "early_stop", False):
        attack = attack.replace(early_stop=False)
    bs = cfg["eval"]["batch_size"]
    pred = predict_draws(model, x, draws, bs, ex.device)
    out, _ = compute_cell(
        attack, model, x, y, pred, randomized=randomized, batch_size=bs, device=ex.device, seed=cfg["eval"]["seed"]
    )
    m = metrics(out)
    return {"val_clean": m["clean_acc"], "val_robust": m["robust_acc"], "n_val": m["n_examples"], "key": student["key"]}


def tune(param: str, values: list[str], overrides: list[str], attack_name: str = "pgd_linf") -> dict:
    if not param.startswith("defense."):
        raise ConfigError(f"the tuned parameter must be a defense's (defense.<name>.module.<arg>), got '{param}'")
    results = []
    for value in values:
        # `++`: the parameter may belong to an earlier stage (init_from) that the sweep does not select
        cfg = compose([*overrides, f"attack=[{attack_name}]", "logger=none", f"++{param}={value}"])
        if len(cfg["defense"]) != 1:
            raise ConfigError(f"tune one defense at a time (defense=<name>), got {', '.join(cfg['defense'])}")
        results.append({"value": value, **validation_robustness(cfg, attack_name)})
    best = max(results, key=lambda r: (r["val_robust"], r["val_clean"]))
    (defense,) = cfg["defense"]
    return {
        "experiment": cfg["name"],
        "defense": defense,
        "param": param,
        "attack": f"{attack_name} at {cfg['report']['headline']['linf']}",
        "results": results,
        "chosen": best["value"],
        "out": Path(cfg["results_dir"]) / "tuning",
    }


def markdown(t: dict) -> str:
    lines = [
        f"# Tuning {t['defense']}: {t['param']}",
        "",
        f"Selected on the target **validation** split ({t['results'][0]['n_val']} examples) by robust accuracy under "
        f"{t['attack']}; the test split was not read. Chosen: **{t['chosen']}**.",
        "",
        "| value | val clean % | val robust % | |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['value']} | {100 * r['val_clean']:.1f} | {100 * r['val_robust']:.1f} |"
        + (" chosen |" if r["value"] == t["chosen"] else " |")
        for r in t["results"]
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    grid = [a for a in argv if "=" in a and "," in a.split("=", 1)[1] and not a.split("=", 1)[1].startswith("[")]
    if len(grid) != 1:
        print("usage: python -m benchmark.tune defense.<name>.module.<arg>=V1,V2,... defense=<name> [overrides]")
        return 2
    param, values = grid[0].split("=", 1)
    try:
        t = tune(param, values.split(","), [a for a in argv if a != grid[0]])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t["out"].mkdir(parents=True, exist_ok=True)
    text = markdown(t)
    (t["out"] / f"{t['defense']}.md").write_text(text)
    (t["out"] / f"{t['defense']}.json").write_text(json.dumps({k: v for k, v in t.items() if k != "out"}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
