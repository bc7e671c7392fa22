"""What a training stage's key is made of (benchmark/components.py): the key spec of a job (what the stage computes,
not where it runs), the teacher's module config and the declared kinds of a model. Some tests pin exact values found
by mutation testing (`make mutate`, tests/mutation/mutate.py).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hand_cells import job

from benchmark.records import Job

#: The model configs shipped with the suite (benchmark/configs/model).
MODEL_CONFIGS = Path(__file__).resolve().parents[2] / "benchmark" / "configs" / "model"


# ---- what a training stage's key is made of (benchmark/components.py) ---------------------------------------
def test_the_key_spec_keeps_what_the_stage_computes_and_drops_the_rest(tmp_path):
    from benchmark.components import job_key_spec

    base = job(
        kind="student",
        data={"_target_": "d", "root": "/here", "download": True, "num_workers": 4, "eval_batch_size": 9, "n": 1},
        data_fingerprint="fp",
        domain="target",
        model={"backbone": "small_cnn"},
        module={"lr": 0.1},
        trainer={"max_epochs": 2, "accelerator": "cpu", "enable_progress_bar": False, "log_every_n_steps": 5},
        seed=1,
        teacher_key="t",
        name="finetune",
        cache_dir="/cache",
    )
    assert job_key_spec(base) == {
        "kind": "student",
        "data": {"_target_": "d", "n": 1},
        "data_fingerprint": "fp",
        "domain": "target",
        "model": {"backbone": "small_cnn"},
        "module": {"lr": 0.1},
        "trainer": {"max_epochs": 2},
        "seed": 1,
        "teacher_key": "t",
        "init_key": None,
    }
    import torch

    from lightning_modules.checkpoints import file_digest

    weights = tmp_path / "w.pt"
    torch.save({"conv.weight": torch.ones(2, 1, 3, 3)}, weights)
    full = replace(
        base,
        init_key="i",
        checkpoint={"sha256": "s", "format": "auto", "digest": "d"},
        init_kind="teacher",
        model={"backbone": "b", "pretrained": True, "pretrained_file": str(weights)},
    )
    spec = job_key_spec(full)
    assert spec["init_key"] == "i" and spec["checkpoint"] == "d" and spec["init_kind"] == "teacher"
    assert spec["model"] == {"backbone": "b", "pretrained": True,
                             "pretrained_file": file_digest(str(weights), "model.pretrained_file")}  # fmt: skip
    assert list(spec)[-2:] == ["checkpoint", "init_kind"]
    timm = replace(full, checkpoint={"sha256": "s", "format": "timm", "digest": "d"})
    assert job_key_spec(timm)["checkpoint"] == "d", "the tensors loaded, not the format's spelling"
    assert "checkpoint" not in job_key_spec(replace(base, checkpoint=None, init_kind=""))
    assert "init_kind" not in job_key_spec(replace(base, init_kind=None))


def _job(**changes) -> Job:
    """A student job (as `planner` writes it), with `changes`."""
    fields = {
        "kind": "student",
        "data": {"_target_": "d", "n": 1},
        "data_fingerprint": "fp",
        "domain": "target",
        "model": {"backbone": "small_cnn"},
        "module": {"lr": 0.1},
        "trainer": {"max_epochs": 2},
        "seed": 1,
    }
    return job(**{**fields, **changes})


def test_the_channels_last_layout_enters_the_key_and_the_contiguous_one_keeps_the_old_key():
    from benchmark.components import job_key_spec
    from benchmark.numerics import stage_layout

    channels_last = stage_layout({})  # the default layout
    contiguous = stage_layout({"numerics": {"channels_last": False}})
    assert job_key_spec(_job(numerics=channels_last))["numerics"] == channels_last, "it sums in another order"
    old = job_key_spec(_job(numerics={}))  # a job planned before the layout existed: no layout
    assert "numerics" not in old
    assert job_key_spec(_job(numerics=contiguous)) == old, "the contiguous layout computes what the old jobs did"
    assert job_key_spec(_job(numerics=channels_last)) != old


@pytest.mark.parametrize("name", sorted(p.stem for p in MODEL_CONFIGS.glob("*.yaml")))
def test_the_model_key_leaves_out_the_pretrained_keys_while_they_are_off(name):
    import yaml

    from benchmark.components import PRETRAINED_KEYS, model_key

    shipped = yaml.safe_load((MODEL_CONFIGS / f"{name}.yaml").read_text())
    cfg = {**shipped, "pretrained": False, "pretrained_file": None}  # as they ship: off
    before = {k: v for k, v in cfg.items() if k not in PRETRAINED_KEYS}  # the config before these keys existed
    assert model_key(cfg) == before, "every other field as it is, empty ones (kwargs: {}) included"
    assert model_key({**cfg, "pretrained": True}) == {**before, "pretrained": True}


def test_a_pretrained_file_that_holds_no_tensors_is_named_by_its_config_field(tmp_path):
    from attacks.errors import ConfigError
    from benchmark.components import model_key

    text = tmp_path / "weights.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(ConfigError, match=r"^model\.pretrained_file: '.*weights\.pt' is not a checkpoint file"):
        model_key({"backbone": "small_cnn", "pretrained": True, "pretrained_file": str(text)})


def test_the_teacher_module_and_the_declared_kinds():
    from benchmark.components import TEACHER_MODULE, declared, teacher_module_cfg

    assert teacher_module_cfg({}) == TEACHER_MODULE == teacher_module_cfg({"module": None})
    assert teacher_module_cfg({"module": {"lr": 1, "_target_": "x.Y"}}) == {"_target_": "x.Y", "lr": 1}
    assert teacher_module_cfg({"module": {"lr": 1}}) == {**TEACHER_MODULE, "lr": 1}

    class M:
        randomized, nondifferentiable = True, 0

    assert declared(M()) == frozenset({"randomized"}) and declared(object()) == frozenset()
    M.nondifferentiable = 1
    assert declared(M()) == frozenset({"randomized", "nondifferentiable"})
