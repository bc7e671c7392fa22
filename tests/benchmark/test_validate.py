"""Checking a config (`benchmark.runner.config.validate`) builds nothing real: no tensor with storage, no data; what it
learns of each defense is what the built module declares; and every kind of bad module argument stops there, in
one line that names what is valid (`benchmark.runner.arguments`)."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode

from attacks.errors import ConfigError
from benchmark.components import build, build_datamodule, build_model, declared
from benchmark.runner import config
from benchmark.runner.arguments import accepted, check_arguments
from benchmark.runner.config import compose, validate
from datamodules.base import TransferDataModule
from lightning_modules.modules import StudentModule


class RealTensors(TorchFunctionMode):
    """Records each torch function that returns a tensor off the meta device (one with storage)."""

    def __init__(self):
        super().__init__()
        self.made: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self.made.append(getattr(func, "__qualname__", repr(func)))
        return out


@pytest.mark.parametrize("experiment", config.options("experiment"))
def test_checking_a_config_builds_no_tensor_and_loads_no_data(monkeypatch, experiment):
    cfg = compose([f"experiment={experiment}", "logger=none"])

    def no_data(self, stage=None):
        raise AssertionError("validate loaded a data pair")

    monkeypatch.setattr(TransferDataModule, "setup", no_data)
    with RealTensors() as mode:
        resolved = validate(cfg)
    entries, found = resolved.entries, resolved.declared
    assert mode.made == [], f"validate built tensors with storage: {sorted(set(mode.made))[:5]}"
    assert set(found) == {*cfg["defense"], *cfg["earlier_defenses"]} and entries


def test_what_the_check_learns_is_what_the_built_modules_declare():
    cfg = compose(["logger=none"])  # digits: every defense of the suite
    found = validate(cfg).declared
    dm = build_datamodule(cfg["data"]["digits"])
    teacher = build_model(cfg["model"], dm).state_dict()
    for name, dfn in {**cfg["earlier_defenses"], **cfg["defense"]}.items():
        module = build(dfn["module"], model=build_model(cfg["model"], dm), teacher_state=teacher)
        assert found[name].kinds == declared(module), name
        assert found[name].freezable == hasattr(module.deployed_model(), "frozen"), name
    assert {n for n, d in found.items() if d.kinds} == {"purifier", "atop", "dropout"}


@pytest.mark.parametrize(
    "overrides, expected",
    [
        # a key that no constructor takes: the entry, the class, the closest name, every valid one
        (
            ["+defense.finetune.module.lrr=0.1"],
            "defense.finetune.module: StudentModule has no argument 'lrr' (did you mean 'lr'?); valid: freeze_bn",
        ),
        (
            ["+defense.pgd_at.module.step=3"],
            "defense.pgd_at.module: PGDAT has no argument 'step' (did you mean 'step_size'?)",
        ),
        (
            ["+defense.pgd_at.module.steps=3"],
            "PGDAT has no argument 'steps' (a setting of the training attack: give train_attack.steps)",
        ),
        (
            ["+defense.finetune.module.model=x"],
            "defense.finetune.module: 'model' is given by the runner, not by the config; valid:",
        ),
        (
            ["+teacher.module.momentun=0.5"],
            "teacher.module: TeacherModule has no argument 'momentun' (did you mean 'momentum'?)",
        ),
        (
            ["+data.digits.rotation=10"],
            "data.digits: DigitsShift has no argument 'rotation' (did you mean 'rotation_deg'?)",
        ),
        (
            ["+attack.pgd_linf.attack.stepz=3"],
            "attack.pgd_linf.attack: PGD has no argument 'stepz' (did you mean 'steps'?)",
        ),
        (
            ["+attack.transfer_pgd_linf.attack.attack.restart=2"],
            "attack.transfer_pgd_linf.attack.attack: PGD has no argument 'restart' (did you mean 'restarts'?)",
        ),
        (
            ["experiment=digits_ssl", "+teacher.common.module.temprature=0.1"],
            "teacher.common.module: SimCLR has no argument 'temprature' (did you mean 'temperature'?)",
        ),
        (
            [
                "+defense.atop.module.generator.cnun=4",
                "+defense.atop.module.generator._target_=defenses.atop.GatedGenerator",
            ],
            "defense.atop.module.generator: GatedGenerator has no argument 'cnun' (did you mean 'cnum'?)",
        ),
        # a value that a constructor rejects, checked on the meta device
        (["defense.dropout.module.p=1.5"], "dropout p must be in (0, 1), got 1.5"),
        (["defense.dropout.module.layer=nope"], "dropout layer 'nope' is no layer of the backbone; valid: input"),
        (
            ["defense.differentiator.module.trunk_layers=[nope]"],
            "trunk layer 'nope' is no top-level layer of the backbone; valid:",
        ),
        (["defense.neuron_distance.module.layer=nope"], "'nope'"),
        (["defense.freeze.module.frozen_layers=[nope]"], "frozen layer 'nope' matches no parameter; valid:"),
        (["defense.tla.module.dictionary_size=1"], "dictionary_size must be >= 2, got 1"),
        (["defense.atop.module.transform=rt9"], "unknown transform 'rt9'; valid:"),
        (["defense.genaf.module.fraction=0"], "fraction must be in (0, 1], got 0"),
        (["++defense.pgd_at.module.train_attack.step_size=1"], "exceeds the eps ball's diameter"),
        (["defense.finetune.module.optimizer=adagrad"], "unknown optimizer 'adagrad'; valid: adam, adamw, sgd"),
        (["experiment=digits_ssl", "+teacher.common.module.transform.normalize=true"], "'normalize' is not an option"),
        (["++model.pretrained=true"], "no pretrained weights for 'small_cnn'"),
        # a defense's figure family (its config's `family:`): one of `benchmark.records.HUES`
        (
            ["defense.finetune.family=blue"],
            "unknown defense.finetune.family 'blue'; valid: adversarial, modes, other, paper2, purification, reference",
        ),
    ],
)
def test_each_kind_of_bad_module_argument_is_one_line(monkeypatch, overrides, expected):
    monkeypatch.setattr(TransferDataModule, "setup", lambda *a, **k: pytest.fail("data loaded before the check"))
    with pytest.raises(ConfigError) as e:
        validate(compose(["logger=none", *overrides]))
    assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)


class ReadsAValue(StudentModule):
    """A defense whose constructor reads a tensor's value: a meta tensor has none."""

    def __init__(self, model, **kwargs):
        super().__init__(model, **kwargs)
        self.scale = float(torch.ones(()) * 2)


def test_a_constructor_that_reads_a_value_is_checked_on_the_cpu_instead():
    cfg = compose(["logger=none", "defense=[finetune]", "attack=[fgsm]"])
    cfg["defense"]["finetune"]["module"]["_target_"] = f"{__name__}.ReadsAValue"
    assert validate(cfg).declared["finetune"].kinds == frozenset()
    cfg["defense"]["finetune"]["module"]["mode"] = "half"
    with pytest.raises(ConfigError, match="unknown mode 'half'"):
        validate(cfg)


class _Base:
    def __init__(self, a, b=1):
        pass


class _Child(_Base):
    def __init__(self, c=2, **kwargs):
        super().__init__(**kwargs)


def _open(x, **kwargs):
    pass


def test_the_accepted_arguments_follow_kwargs_down_the_classes():
    named, open_ = accepted(_Child)
    assert set(named) == {"a", "b", "c"} and not open_
    assert set(accepted(_open)[0]) == {"x"} and accepted(_open)[1]
    check_arguments({"_target_": f"{__name__}._Child", "a": 0, "c": 1}, "x")
    check_arguments({"_target_": f"{__name__}._open", "x": 0, "anything": 1}, "x")
    with pytest.raises(ConfigError, match=r"^x: _Child needs 'a'; valid: a, b, c$"):
        check_arguments({"_target_": f"{__name__}._Child", "c": 1}, "x")
    check_arguments({"_target_": f"{__name__}._Child", "c": 1}, "x", runtime=("a",))  # the runner gives it
    check_arguments({"_target_": f"{__name__}._Child", "_partial_": True}, "x")  # given later
    with pytest.raises(ConfigError, match=r"^x: _Child has no argument 'd'; valid: a, b, c$"):
        check_arguments({"_target_": f"{__name__}._Child", "a": 0, "d": 1}, "x")
