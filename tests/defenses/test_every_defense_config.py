"""Every defense config, as timm's tests iterate its model registry: each YAML in benchmark/configs/defense/ composes
and passes the config check with its family and its claims, trains one step on a tiny slice of the embedded digits
the way the runner trains a stage (after the stages it starts from, one step each), and is drawn in its family's hue.

A new defense is its class and its config: this file tests the config without a line of its own."""

from __future__ import annotations

import lightning as L
import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch
from fake_runs import fake_row

from benchmark.components import build_datamodule, build_module
from benchmark.records import HUES
from benchmark.results.claims import claims_from_config
from benchmark.results.figure_style import model_styles
from benchmark.results.figures import figures
from benchmark.results.report import report_inputs
from benchmark.runner.cache import Cache
from benchmark.runner.config import compose, options, report_defenses, validate
from benchmark.runner.planner import make_plan
from benchmark.runner.stages.train import train_stage

DEFENSES = options("defense")
#: The default experiment, made tiny: 2 target training images and 1 validation image per class, one training step
#: per stage (the teacher's and those of the stages the defense starts from included), on the CPU.
TINY = ["logger=none", "progress=false", "attack=[fgsm]", "eval.detection=false", "trainer.accelerator=cpu",
        "data.digits.target_train_per_class=2", "data.digits.target_val_per_class=1", "++trainer.max_steps=1",
        "++trainer.limit_train_batches=1", "++trainer.limit_val_batches=1"]  # fmt: skip


def composed(name: str, *more: str) -> dict:
    """The defense alone in the tiny sweep; one that starts from the common model (CommonInit) gets digits_ssl's."""
    cfg = compose([*TINY, f"defense=[{name}]", *more])
    if cfg["defense"][name].get("start_from") == "common":
        cfg = compose([*TINY, f"defense=[{name}]", "+teacher@teacher.common=simclr", *more])
    return cfg


@pytest.mark.parametrize("name", DEFENSES)
def test_it_composes_and_passes_the_check_with_its_family_and_claims(name):
    cfg = composed(name)
    declared = validate(cfg).declared
    assert name in declared
    assert cfg["defense"][name].get("family") in HUES, "a shipped defense names its figure family (family:)"
    claims, families = report_inputs({"defenses": report_defenses(cfg)})  # what the run hands the report
    assert families[name] == cfg["defense"][name]["family"]
    own = claims_from_config(cfg["defense"][name].get("claims") or [])
    assert set(own) <= set(claims)
    assert all(name in {getattr(c, side, None) for side in ("higher", "lower", "defense", "base")} for c in own)


@pytest.mark.parametrize("name", DEFENSES)
def test_it_trains_one_step_as_the_runner_trains_it(name, tmp_path, one_thread):
    cfg = composed(name, f"cache_dir={tmp_path}")
    plan, _, _ = make_plan(cfg)
    stages = [s for s in plan.stages if s.kind in ("teacher", "student")]
    assert stages[-1].defense == name, "the stages it starts from come first"
    for stage in stages:  # as the executor runs them: a stage's weights start from those it starts from
        train_stage(stage.job, progress=False)
    job = stages[-1].job
    cache = Cache(job.cache_dir)
    L.seed_everything(job.seed, verbose=False)  # as the training stage builds it
    module = build_module(job, cache, build_datamodule(job.data))
    after = cache.tensors("student", job.key, "state")
    moved = [k for k, p in module.named_parameters() if p.requires_grad and not torch.equal(p, after[k])]
    assert moved, "a training step changed no weight"


@pytest.mark.parametrize("name", DEFENSES)
def test_it_is_drawn_in_its_familys_hue(name):
    cfg = composed(name)
    _, families = report_inputs({"defenses": report_defenses(cfg)})  # as the run writes them
    colors, _ = model_styles(["teacher", name], families)
    assert colors[name] == matplotlib.colormaps[HUES[cfg["defense"][name]["family"]]](0.75), "its family's hue"
    rows = [
        fake_row("digits", d, 0, "pgd_linf", "linf", eps, "white-box", [1.0] * 4, robust, False)
        for d, robust in (("teacher", [0.0, 0.0, 0.0, 1.0]), (name, [1.0, 1.0, 0.0, 1.0]))
        for eps in (8 / 255, 16 / 255)
    ]
    figs, drawn = figures(rows, {"linf": 16 / 255}, None, families)
    try:
        lines = {ln.get_label(): ln.get_color() for ax in figs["robust_vs_eps"].axes for ln in ax.get_lines()}
        assert drawn[name] == colors[name] and lines[name] == colors[name]
    finally:
        for fig in figs.values():
            plt.close(fig)
