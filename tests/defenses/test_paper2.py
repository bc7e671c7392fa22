"""The defenses against the mimicry attack: neuron-distance patching, test-time dropout, the differentiators
(`digits`: the session's digits pair, tests/conftest.py)."""

from __future__ import annotations

import pytest
import torch

from attacks.errors import ConfigError
from attacks.mimicry import layer_function
from benchmark.components import declared
from defenses.differentiator import DifferentiatorPipeline, DifferentiatorStudent
from defenses.dropout import InferenceDropout
from defenses.neuron_distance import NeuronDistancePatch
from lightning_modules.classifier import build_classifier


def small_cnn(seed: int = 0):
    torch.manual_seed(seed)
    return build_classifier("small_cnn", 10, 1, [0.3], [0.4]).eval()


# ---- neuron-distance patching ------------------------------------------------------------------------------------
def test_neuron_distance_is_the_authors_weighted_distance_to_the_frozen_teacher():
    teacher = small_cnn(0)
    patch = NeuronDistancePatch(small_cnn(1), teacher_state=teacher.state_dict(), layer=["features"])
    x = torch.rand(6, 1, 16, 16)
    assert torch.allclose(patch.distance(x), torch.full((6,), 1e-6), atol=1e-5)  # starts at the teacher
    with torch.no_grad():
        patch.model.backbone.features[0].weight.mul_(1.5)  # the student's layer K moves away
    s = layer_function(patch.model, "features")(x).flatten(1)
    t = layer_function(teacher, "features")(x).flatten(1)
    kernel = patch.model.backbone.fc[1].weight  # the next dense layer (out, in)
    w = 1024 * kernel.abs().sum(0) / kernel.abs().sum(0).norm()
    expected = ((s - t) ** 2 * w).sum(1).sqrt()
    assert torch.allclose(patch.distance(x), expected, rtol=1e-5)
    assert not any(p.requires_grad for p in patch.teacher.parameters())


def test_the_cap_rises_per_epoch_and_the_training_loss_pushes_the_representation_away():
    teacher = small_cnn(0)
    patch = NeuronDistancePatch(small_cnn(1), teacher_state=teacher.state_dict(), cap=1000, cap_step=200, weight=1e-3)
    assert [patch.current_cap(e) for e in (0, 1, 4, 9)] == [200, 400, 1000, 1000]
    with torch.no_grad():
        patch.model.backbone.features[0].weight.mul_(1.01)
    x, y = torch.rand(32, 1, 16, 16), torch.randint(0, 10, (32,))
    before = float(patch.distance(x).mean().detach())
    opt = torch.optim.SGD([p for p in patch.model.parameters() if p.requires_grad], lr=1e-4)
    for _ in range(5):
        loss, _ = patch.training_loss(x, y)  # epoch 0 (no trainer): cap 200
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(patch.distance(x).mean().detach()) > 2 * before
    assert patch.selection_metric == "val/patched_acc"


def test_the_cap_in_teacher_norm_units_is_prepared_from_the_training_split(digits):
    teacher = small_cnn(0)
    patch = NeuronDistancePatch(small_cnn(0), teacher_state=teacher.state_dict(), cap_unit="teacher_norm")
    meta, tensors = patch.prepare(digits)
    patch.apply_preparation(meta, tensors)
    x, _ = digits.tensors("target", "train")
    with torch.no_grad():
        t = layer_function(teacher, "features")(x).flatten(1)
        w = patch.unit_weights(t.shape[1])
    assert float(patch.scale) == pytest.approx(float(((t**2) * w).sum(1).sqrt().mean()), rel=1e-5)
    assert NeuronDistancePatch(small_cnn(0), teacher_state=teacher.state_dict()).prepare_spec() is None


# ---- test-time dropout ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", ["features", "input"])
def test_dropout_is_random_per_pass_and_fixed_when_frozen(layer):
    module = InferenceDropout(small_cnn(0), p=0.5, layer=[layer], mode="scratch")
    deployed, x = module.deployed_model(), torch.rand(8, 1, 16, 16)
    assert declared(module) == frozenset({"randomized"}) and hasattr(deployed, "frozen")
    with torch.no_grad():
        assert not torch.equal(deployed(x), deployed(x))
        with deployed.frozen(3):
            a, b = deployed(x), deployed(x)
        assert torch.equal(a, b)
        assert not torch.equal(a, module.model(x))


def test_dropout_drops_a_fraction_p_and_rescales():
    deployed = InferenceDropout(small_cnn(0), p=0.3, layer="input", mode="scratch").deployed_model()
    t = torch.ones(200, 1000)
    dropped = deployed.drop(t)
    assert float((dropped == 0).float().mean()) == pytest.approx(0.3, abs=0.01)
    assert torch.allclose(dropped[dropped != 0], torch.full_like(dropped[dropped != 0], 1 / 0.7))


def test_dropout_bpda_keeps_the_masks_and_passes_gradients_through_them():
    deployed = InferenceDropout(small_cnn(0), p=0.5, layer="input", mode="scratch").deployed_model()
    x = torch.rand(4, 1, 16, 16, requires_grad=True)
    with deployed.frozen(1):
        out = deployed(x)
        view = deployed.bpda()
        out_bpda = view(x)
        (g_plain,) = torch.autograd.grad(out[:, 0].sum(), x)
        (g_bpda,) = torch.autograd.grad(out_bpda[:, 0].sum(), x)
    assert torch.equal(out, out_bpda)
    dropped = g_plain == 0
    assert dropped.float().mean() > 0.3 and (g_bpda[dropped] != 0).float().mean() > 0.9


def test_dropout_rejects_unknown_layers():
    with pytest.raises(ConfigError, match="valid: input"):
        InferenceDropout(small_cnn(0), layer="nope", mode="scratch")
    with pytest.raises(ConfigError, match=r"\(0, 1\)"):
        InferenceDropout(small_cnn(0), p=1.0, mode="scratch")


# ---- the differentiators -------------------------------------------------------------------------------------------
def prepared(digits, **kwargs) -> DifferentiatorStudent:
    student = small_cnn(0)
    module = DifferentiatorStudent(
        small_cnn(1), teacher_state=student.state_dict(), trunk_layers=["features"], **kwargs
    )
    module.apply_preparation(*module.prepare(digits))
    return module.eval()


def test_masks_prune_each_class_s_most_active_channels_and_selection_starts_with_the_class(digits):
    module = prepared(digits, prune_ratio=0.25)
    x, y = digits.tensors("target", "train")
    act = layer_function(module.model, "features")(x)
    for c in (0, 7):
        mean = act[y == c].mean((0, 2, 3))
        pruned = set(mean.argsort(descending=True)[:16].tolist())
        assert set((module.masks[c].flatten() == 0).nonzero().flatten().tolist()) == pruned
    assert module.selection.shape == (10, 5) and torch.equal(module.selection[:, 0], torch.arange(10))
    assert all(len(set(row.tolist())) == 5 for row in module.selection)


def test_unpruned_differentiators_copy_the_student_and_accept_what_it_says(digits):
    module = prepared(digits, prune_ratio=0.0)
    pipeline, x = module.deployed_model(), digits.tensors("target", "val")[0][:64]
    with torch.no_grad():
        out, student = pipeline(x), module.model(x)
    assert isinstance(pipeline, DifferentiatorPipeline) and out.shape == (64, 11) and pipeline.reject_label == 10
    assert torch.allclose(out[:, :10], student)
    assert (out.argmax(1) == student.argmax(1)).all()  # identical differentiators always agree: no rejection


@pytest.mark.parametrize(
    "rule,agree,rejected",
    [("unanimous", 5, False), ("unanimous", 4, True), ("majority", 3, False), ("majority", 2, True)],
)
def test_the_decision_rule_and_the_reject_logit(digits, rule, agree, rejected):
    pipeline = prepared(digits, rule=rule).deployed_model()
    z = torch.zeros(1, 10)
    z[0, 4] = 5.0  # the student says 4
    d = torch.zeros(1, 5, 10)
    d[0, :agree, 4] = 2.0  # `agree` differentiators say 4, the others 6
    d[0, agree:, 6] = 2.0
    m = pipeline.decision_margin(z, d)
    assert bool(m < 0) == rejected
    out = torch.cat([z, (z[:, 4] - m)[:, None]], dim=1)  # what forward builds
    assert (out.argmax(1) == 10).item() == rejected


def test_mean_prob_rule_compares_the_mean_probability_with_tau(digits):
    pipeline = prepared(digits, rule="mean_prob", tau=0.5).deployed_model()
    z = torch.zeros(1, 10)
    z[0, 2] = 1.0
    d = torch.full((1, 5, 10), -10.0)
    d[0, :, 2] = 10.0
    assert float(pipeline.decision_margin(z, d)) == pytest.approx(0.5, abs=1e-3)
    d[0, :, 2] = -10.0
    assert float(pipeline.decision_margin(z, d)) == pytest.approx(-0.4, abs=1e-3)  # 1/10 each - 0.5


def test_a_trunk_that_is_not_where_forward_features_starts_is_refused(digits):
    student = small_cnn(0)
    module = DifferentiatorStudent(small_cnn(1), teacher_state=student.state_dict(), trunk_layers=["fc", "features"])
    with pytest.raises(ConfigError, match="forward_features"):
        module.prepare(digits)
    with pytest.raises(ConfigError, match="valid: classifier, features, fc"):
        DifferentiatorStudent(small_cnn(1), teacher_state=student.state_dict(), trunk_layers=["nope"])


def test_a_trained_state_loads_back_with_its_masks_and_selection(digits):
    module = prepared(digits, prune_ratio=0.5)
    fresh = DifferentiatorStudent(small_cnn(2), teacher_state=small_cnn(0).state_dict(), trunk_layers=["features"])
    fresh.load_state_dict(module.state_dict())
    x = digits.tensors("target", "val")[0][:16]
    with torch.no_grad():
        assert torch.equal(fresh.eval().deployed_model()(x), module.deployed_model()(x))


def test_training_moves_only_the_differentiators(digits):
    module = prepared(digits)
    x, y = digits.tensors("target", "train")
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert trainable and all(n.startswith("heads.") for n in trainable)
    loss, logits = module.training_loss(x[:32], y[:32])
    loss.backward()
    assert logits.shape == (32, 10)
    assert all(p.grad is None for p in module.model.parameters())
    assert all(h.backbone.features.value is None for h in module.heads)  # no activation left behind


def test_the_preparations_read_the_splits_a_batch_at_a_time_never_whole(digits, monkeypatch):
    """Neuron-distance patching and the differentiators prepare from lazily read batches (at real image sizes a
    stacked float32 split does not fit in memory), with the numbers of the whole-split computation."""
    import copy as copy_module

    dm = copy_module.copy(digits)
    monkeypatch.setattr(dm, "tensors", lambda *a, **k: pytest.fail("a whole split was stacked"))
    teacher = small_cnn(0)
    patch = NeuronDistancePatch(small_cnn(0), teacher_state=teacher.state_dict(), cap_unit="teacher_norm")
    scale = patch.prepare(dm)[1]["scale"]
    x, _ = digits.tensors("target", "train")
    with torch.no_grad():  # the whole-split computation, in the same batches
        t = [layer_function(teacher, "features")(x[i : i + 256]).flatten(1) for i in range(0, len(x), 256)]
        norms = torch.cat([(b.pow(2) * patch.unit_weights(b.shape[1])).sum(1).sqrt() for b in t])
    assert torch.equal(scale, norms.mean())
    module = DifferentiatorStudent(small_cnn(1), teacher_state=small_cnn(0).state_dict(), trunk_layers=["features"])
    masks = module.prepare(dm)[1]["masks"]
    assert masks.shape[0] == module.num_classes and bool(((masks == 0) | (masks == 1)).all())
