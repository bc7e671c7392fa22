"""Choose a defense hyper-parameter on the validation split:
`python -m benchmark.devtools.tune PARAM=V1,V2,... [overrides]`.

Each candidate value is trained (cached like any stage), then its deployed model is attacked on the target
domain's **validation** split with the sweep's attack at the headline budget; the value with the best validation
robust accuracy wins (ties: the better validation clean accuracy). The test split is never read, so a choice made
here can be reported on the test split afterwards without selection bias.

With `--attacks a,b,...` the criterion is the per-example worst case over those attacks at the headline budget (a
crafted attack, e.g. a downstream-agnostic one, is crafted once on its surrogate from the attacker's data and
applied to the validation images; each attack's own robust accuracy is reported beside it).

Examples:
    python -m benchmark.devtools.tune defense.trades.module.beta=1,3,6 defense=trades
    python -m benchmark.devtools.tune defense.genaf_stage1.module.gr_weight=0,1,5,20 defense=genaf
    python -m benchmark.devtools.tune defense.genaf_stage1.module.gr_weight=0,1,5,20 defense=genaf \
        experiment=digits_ssl --attacks uap_feature,ssp_universal,l4a,advencoder_per,ssp

Writes `results/<experiment>/tuning/<defense>.md` and `.json`, and prints the table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from attacks.errors import ConfigError
from benchmark.components import build_datamodule
from benchmark.numerics import stage_numerics
from benchmark.runner.config import compose
from benchmark.runner.execute import Executor
from benchmark.runner.plan import make_attack
from benchmark.runner.planner import make_plan
from benchmark.runner.stages.attack import compute_cell, predict_draws, run_attack
from benchmark.runner.stages.score import metrics, per_example
from benchmark.runner.stages.train import load_trained
from datamodules.base import LazyImages


def validation_split(dm) -> tuple[LazyImages, torch.Tensor]:
    """The target validation split: its images read a batch at a time (`LazyImages`, never stacked whole), labels."""
    return dm.lazy_tensors("target", "val")


def _val_split(cfg: dict) -> tuple[LazyImages, torch.Tensor, object]:
    pair = next(iter(cfg["data"]))
    dm = build_datamodule(cfg["data"][pair])  # not the executor's: it loads the test split for its cells
    dm.setup()
    return (*validation_split(dm), dm)


def crafted_on_val(cfg: dict, plan, ex: Executor, attack_name: str) -> LazyImages:
    """A crafted attack's examples for the validation images: crafted on its surrogate (trained or cached) at the
    headline budget, fitted on the attacker's data (never the test split) as the sweep does. They are kept in a
    temporary file (`run_attack`), read a batch at a time by every candidate."""
    headline = plan.headline["linf"]
    stage = next(
        (s for s in plan.stages if s.kind == "craft" and f"/craft/{attack_name}/" in s.id
         and abs(s.attack["eps"] - headline) < 1e-9),
        None,
    )  # fmt: skip
    if stage is None:
        raise ConfigError(f"{attack_name} is not crafted at the headline budget {headline:.4g} in this experiment")
    surrogate = ex.surrogate(stage)[0]
    attack = make_attack(stage.attack)
    x, y, dm = _val_split(cfg)
    attack.surrogate = surrogate
    attack.attacker_data = dm.lazy_tensors(getattr(attack, "attacker_domain", "target"), "train")
    torch.manual_seed(cfg["eval"]["seed"])
    return run_attack(attack, surrogate, x, y, cfg["eval"]["batch_size"], ex.device)[0]


def validation_robustness(cfg: dict, attack_names: list[str], crafted: dict | None = None) -> dict:
    """Train the sweep's only defense (cached) and score it on the target validation split under each attack;
    `val_robust` is the per-example worst case over them, `per_example` each attack's per-example robust outcomes.
    `crafted` keeps crafted examples across candidates."""
    crafted = {} if crafted is None else crafted
    plan, _, _ = make_plan(cfg)
    ex = Executor(cfg, plan)
    for stage in plan.stages:
        if stage.kind in ("teacher", "student"):
            with stage_numerics(cfg):  # the cached models are the sweep's: the same threads as its stages
                ex._train(stage)
    (defense,) = cfg["defense"]
    pair = next(iter(cfg["data"]))
    student = plan.stage(f"{pair}/{defense}/seed{cfg['seeds'][0]}")
    module = load_trained(student.job).to(ex.device)
    model = module.deployed_model()
    x, y, _ = _val_split(cfg)
    randomized = bool(getattr(module, "randomized", False))
    draws = cfg["eval"]["draws"] if randomized else 1
    bs = cfg["eval"]["batch_size"]
    torch.manual_seed(cfg["eval"]["seed"])  # a randomized model's clean draws: seeded, as the runner's
    pred = predict_draws(model, x, draws, bs, ex.device)
    per_attack, robust, examples = {}, None, {}
    for name in attack_names:
        attack = make_attack({"cfg": cfg["attack"][name]["attack"], "eps": plan.headline["linf"]})
        if randomized and getattr(attack, "early_stop", False):
            attack = attack.replace(early_stop=False)
        x_adv = None
        if attack.crafted:
            if name not in crafted:
                crafted[name] = crafted_on_val(cfg, plan, ex, name)
            x_adv = crafted[name]
        out, _ = compute_cell(
            attack, model, x, y, pred, randomized=randomized, batch_size=bs, device=ex.device,
            seed=cfg["eval"]["seed"], x_adv=x_adv,
        )  # fmt: skip
        m = metrics(out)
        per_attack[name] = m["robust_acc"]
        examples[name] = per_example(out)["robust"].tolist()
        robust = out["adv"] if robust is None else robust & out["adv"]
    m = metrics({**out, "adv": robust})
    return {"val_clean": m["clean_acc"], "val_robust": m["robust_acc"], "n_val": m["n_examples"], "key": student.key,
            "per_attack": per_attack, "per_example": examples}  # fmt: skip


def tune(param: str, values: list[str], overrides: list[str], attack_names: list[str] | None = None) -> dict:
    if not param.startswith("defense."):
        raise ConfigError(f"the tuned parameter must be a defense's (defense.<name>.module.<arg>), got '{param}'")
    attack_names = attack_names or ["pgd_linf"]
    results, crafted = [], {}
    for value in values:
        # `++`: the parameter may belong to an earlier stage (init_from) that the sweep does not select
        cfg = compose([*overrides, f"attack=[{','.join(attack_names)}]", "logger=none", f"++{param}={value}"])
        if len(cfg["defense"]) != 1:
            raise ConfigError(f"tune one defense at a time (defense=<name>), got {', '.join(cfg['defense'])}")
        results.append({"value": value, **validation_robustness(cfg, attack_names, crafted)})
    best = max(results, key=lambda r: (r["val_robust"], r["val_clean"]))
    (defense,) = cfg["defense"]
    worst = "the per-example worst case of " if len(attack_names) > 1 else ""
    return {
        "experiment": cfg["name"],
        "defense": defense,
        "param": param,
        "attack": f"{worst}{', '.join(attack_names)} at {cfg['report']['headline']['linf']}",
        "attacks": attack_names,
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
        "| value | val clean % | val robust % | " + "".join(f"{a} % | " for a in t.get("attacks", [])) + "|",
        "|---|---|---|" + "---|" * len(t.get("attacks", [])) + "---|",
    ]
    lines += [
        f"| {r['value']} | {100 * r['val_clean']:.1f} | {100 * r['val_robust']:.1f} | "
        + "".join(f"{100 * r['per_attack'][a]:.1f} | " for a in t.get("attacks", []))
        + ("chosen |" if r["value"] == t["chosen"] else "|")
        for r in t["results"]
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    attack_names = None
    if "--attacks" in argv:
        i = argv.index("--attacks")
        attack_names, argv = argv[i + 1].split(","), argv[:i] + argv[i + 2 :]
    grid = [a for a in argv if "=" in a and "," in a.split("=", 1)[1] and not a.split("=", 1)[1].startswith("[")]
    if len(grid) != 1:
        print(
            "usage: python -m benchmark.devtools.tune defense.<name>.module.<arg>=V1,V2,... defense=<name> [overrides]"
        )
        return 2
    param, values = grid[0].split("=", 1)
    try:
        t = tune(param, values.split(","), [a for a in argv if a != grid[0]], attack_names)
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
