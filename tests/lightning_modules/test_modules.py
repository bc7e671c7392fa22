"""The student modes of paper 1, model selection on the validation split, and the defense hook."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from attacks.errors import ConfigError
from datamodules.base import DomainDataModule, LabeledTensors, Splits
from defenses.pgd_at import PGDAT
from lightning_modules.classifier import build_classifier
from lightning_modules.modules import StudentModule
from lightning_modules.training import fit


def make():
    return build_classifier("small_cnn", 10, 1, (0.3,), (0.4,))


@pytest.fixture()
def teacher_state():
    torch.manual_seed(1)
    return make().state_dict()


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.detach().cpu(), b.detach().cpu())


def test_scratch_ignores_the_teacher(teacher_state):
    s = StudentModule(make(), teacher_state, mode="scratch")
    assert not same(s.model.state_dict()["backbone.features.0.weight"], teacher_state["backbone.features.0.weight"])
    assert all(p.requires_grad for p in s.parameters())


def test_finetune_copies_everything_and_trains_everything(teacher_state):
    s = StudentModule(make(), teacher_state, mode="finetune")
    assert all(same(v, teacher_state[k]) for k, v in s.model.state_dict().items())
    assert all(p.requires_grad for p in s.parameters())
    r = StudentModule(make(), teacher_state, mode="finetune", reset_head=True)
    assert not same(r.model.head.weight, teacher_state["backbone.classifier.weight"])


def test_freeze_freezes_the_given_layers_and_reinitializes_the_rest(teacher_state):
    s = StudentModule(make(), teacher_state, mode="freeze", frozen_layers=["features"])
    for n, p in s.model.named_parameters():
        frozen = n.startswith("backbone.features.")
        assert p.requires_grad != frozen, n
        if frozen:
            assert same(p, teacher_state[n])
        else:
            assert not same(p, teacher_state[n]), f"{n} was not re-initialized"
    kept = StudentModule(make(), teacher_state, mode="freeze", frozen_layers=["features"], reinit_trainable=False)
    assert same(kept.model.backbone.fc[1].weight, teacher_state["backbone.fc.1.weight"])


def test_linear_probe_trains_only_a_new_head(teacher_state):
    s = StudentModule(make(), teacher_state, mode="linear_probe")
    trainable = [n for n, p in s.model.named_parameters() if p.requires_grad]
    assert trainable == ["backbone.classifier.weight", "backbone.classifier.bias"]
    assert not same(s.model.head.weight, teacher_state["backbone.classifier.weight"])


def test_frozen_batchnorm_statistics_stay_fixed(teacher_state):
    s = StudentModule(make(), teacher_state, mode="freeze", frozen_layers=["features"])
    s.train()
    bn = s.model.backbone.features[1]
    assert not bn.training and s.model.backbone.fc.training
    before = bn.running_mean.clone()
    s.model(torch.rand(8, 1, 16, 16))
    assert torch.equal(bn.running_mean, before)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"mode": "freeze", "frozen_layers": ["nope"]}, "valid: classifier, fc, features"),
        ({"mode": "freeze"}, "needs frozen_layers"),
        ({"mode": "sideways"}, "valid: finetune, freeze, linear_probe, scratch"),
        ({"mode": "finetune", "optimizer": "rmsprop"}, "valid: adam, adamw, sgd"),
        ({"mode": "finetune", "lr": 0}, "lr must be > 0"),
    ],
)
def test_bad_arguments_are_one_line(teacher_state, kwargs, match):
    with pytest.raises(ConfigError, match=match) as e:
        StudentModule(make(), teacher_state, **kwargs)
    assert "\n" not in str(e.value)


def test_non_scratch_needs_a_teacher():
    with pytest.raises(ConfigError, match="needs a teacher"):
        StudentModule(make(), None, mode="finetune")


def _separable_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 10
    x = torch.rand(n, 1, 16, 16, generator=g) * 0.2
    x[torch.arange(n), 0, y, y] = 1.0  # the class is a bright pixel on the diagonal
    return LabeledTensors(x, y)


def test_model_selection_uses_validation_only(teacher_state):
    """The kept weights are those of the best validation epoch; the test split is never consulted."""
    train, val = _separable_data(64, 0), _separable_data(40, 1)
    poisoned_test = LabeledTensors(torch.full((8, 1, 16, 16), float("nan")), torch.zeros(8, dtype=torch.long))
    dm = DomainDataModule(Splits(train, val, poisoned_test), batch_size=16, eval_batch_size=64)
    s = StudentModule(make(), teacher_state, mode="finetune", lr=0.05)
    info = fit(s, dm, {"max_epochs": 4, "accelerator": "cpu"}, progress=False)
    assert len(info["val_history"]) == 4
    assert info["best_value"] == max(info["val_history"])
    assert info["best_epoch"] == info["val_history"].index(max(info["val_history"]))
    s.eval()
    with torch.no_grad():
        acc = (s.model(val.images).argmax(1) == val.labels).float().mean().item()
    assert acc == pytest.approx(info["best_value"], abs=1e-6), "the best validation epoch's weights were not restored"


def test_pgd_at_trains_on_adversarial_examples(teacher_state):
    d = PGDAT(make(), teacher_state=teacher_state, mode="finetune", train_attack={"eps": 0.1, "steps": 3})
    assert d.selection_metric == "val/robust_acc" and d.val_attack is not None
    d.model.eval()
    x, y = torch.rand(16, 1, 16, 16), torch.randint(0, 10, (16,))
    adv_loss, _ = d.training_loss(x, y)
    clean_loss = nn.functional.cross_entropy(d.model(x), y)
    assert adv_loss > clean_loss
    assert not any(p.grad is not None for p in d.parameters()), "crafting left gradients on the weights"
    zero = copy.deepcopy(d)
    zero.attack = zero.attack.replace(eps=0.0)
    assert torch.allclose(zero.training_loss(x, y)[0], clean_loss, atol=1e-6)


def test_step_scheduler_takes_its_own_step_size(teacher_state):
    # `hparams` merges every class's arguments; the scheduler reads the ClassifierModule's own.
    s = StudentModule(make(), teacher_state, scheduler="step", step_size=7, gamma=0.3)
    sched = s.configure_optimizers()["lr_scheduler"]["scheduler"]
    assert (sched.step_size, sched.gamma) == (7, 0.3)
    # A defense's attack step lives under train_attack: the module's step_size stays the scheduler's.
    d = PGDAT(make(), teacher_state=teacher_state, scheduler="step", step_size=9, train_attack={"step_size": "2/255"})
    assert d.configure_optimizers()["lr_scheduler"]["scheduler"].step_size == 9 and d.attack.step_size == 2 / 255
    with pytest.raises(ConfigError, match="step scheduler's step_size must be an integer >= 1"):
        StudentModule(make(), teacher_state, scheduler="step", step_size=0)
    # An attack's step given where the scheduler's goes is an error under any scheduler, not a silent no-op.
    with pytest.raises(ConfigError, match="got '2/255'; a training attack's step is train_attack.step_size$"):
        PGDAT(make(), teacher_state=teacher_state, scheduler="cosine", step_size="2/255")
