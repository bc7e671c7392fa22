"""AToP: the random transforms, the gated-conv purifier, the deployed purified classifier and the training module."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from attacks.errors import ConfigError
from defenses.atop import AToP, GatedConv, GatedGenerator, PatchDiscriminator, PurifiedClassifier, RandomTransform
from lightning_modules.classifier import build_classifier
from lightning_modules.training import fit

TINY_G = {"_target_": "defenses.atop.GatedGenerator", "channels": 1, "cnum": 4}
TINY_D = {"_target_": "defenses.atop.PatchDiscriminator", "channels": 1, "cnum": 8}
CPU = {"accelerator": "cpu"}

pytestmark = pytest.mark.filterwarnings("ignore:Found .* module\\(s\\) in eval mode:UserWarning")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _blocks(mask: torch.Tensor, grid: int) -> torch.Tensor:
    """(n, 1, H, W) pixel mask -> (n, grid, grid) block values, asserting that every block is constant."""
    n, _, h, w = mask.shape
    bh, bw = h // grid, w // grid
    tiles = mask.view(n, grid, bh, grid, bw).permute(0, 1, 3, 2, 4).reshape(n, grid, grid, bh * bw)
    assert torch.equal(tiles.amax(-1), tiles.amin(-1)), "a block's pixels do not share one mask value"
    return tiles[..., 0]


# ---- RandomTransform --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rt1", "rt2"])
@pytest.mark.parametrize("size", [16, 32])
@pytest.mark.parametrize("fraction", [0.25, 0.3])
def test_single_mask_covers_the_configured_number_of_whole_blocks(kind, size, fraction):
    t = RandomTransform(kind, grid=8, mask_fraction=fraction)
    x = torch.rand(6, 1, size, size)
    (m,) = t.masks(x, None)
    assert m.shape == (6, 1, size, size)
    assert set(m.unique().tolist()) <= {0.0, 1.0}
    blocks = _blocks(m, 8)
    assert blocks.flatten(1).sum(1).tolist() == [round(fraction * 64)] * 6  # 16 and 19 of 64 blocks
    assert m.flatten(1).sum(1).tolist() == [round(fraction * 64) * (size // 8) ** 2] * 6


@pytest.mark.parametrize("size", [16, 32])
def test_rt3_masks_are_disjoint_cover_every_block_and_split_evenly(size):
    t = RandomTransform("rt3", grid=8, num_masks=4)
    masks = t.masks(torch.rand(5, 1, size, size), None)
    assert len(masks) == 4
    assert torch.equal(sum(masks), torch.ones(5, 1, size, size)), "not disjoint, or a pixel is never masked"
    for m in masks:
        assert _blocks(m, 8).flatten(1).sum(1).tolist() == [16] * 5


def test_rt3_gives_num_masks_masks_when_the_blocks_do_not_divide_evenly():
    masks = RandomTransform("rt3", grid=8, num_masks=9).masks(torch.rand(2, 1, 16, 16), None)
    assert len(masks) == 9
    assert torch.equal(sum(masks), torch.ones(2, 1, 16, 16))


@pytest.mark.parametrize("kind", ["rt1", "rt2", "rt3"])
def test_masks_are_drawn_per_example_and_per_call(kind):
    t = RandomTransform(kind, grid=8)
    x = torch.rand(8, 1, 16, 16)
    first, second = torch.cat(t.masks(x, None), 1), torch.cat(t.masks(x, None), 1)
    for i, j in itertools.combinations(range(8), 2):
        assert not torch.equal(first[i], first[j]), f"examples {i} and {j} share a mask"
    assert not torch.equal(first, second), "two calls drew the same masks"


@pytest.mark.parametrize("kind", ["rt1", "rt2", "rt3"])
def test_the_same_generator_seed_gives_the_same_masks_and_noise(kind):
    t = RandomTransform(kind, grid=8)
    x = torch.rand(4, 1, 16, 16)

    def draw(seed):
        g = _gen(seed)
        return t.noise(x, g), torch.cat(t.masks(x, g), 1)

    (n1, m1), (n2, m2), (n3, m3) = draw(3), draw(3), draw(4)
    assert torch.equal(n1, n2) and torch.equal(m1, m2)
    assert not torch.equal(m1, m3)
    if kind != "rt1":
        assert not torch.equal(n1, n3)


def test_rt1_adds_no_noise():
    x = torch.rand(4, 1, 16, 16)
    assert torch.equal(RandomTransform("rt1", noise_std=0.25).noise(x, None), x)
    assert torch.equal(RandomTransform("rt1", noise_std=0.25).noise(x, _gen(0)), x)


def test_rt2_noise_is_clipped_to_the_unit_interval_with_the_configured_std():
    x = torch.full((64, 1, 32, 32), 0.5)
    small = RandomTransform("rt2", noise_std=0.1).noise(x, _gen(0)) - x  # 5 sigma from the bounds: no clipping
    assert small.mean().abs() < 0.003 and small.std().item() == pytest.approx(0.1, rel=0.03)
    wide = RandomTransform("rt2", noise_std=0.25).noise(x, _gen(1))
    assert wide.min() >= 0 and wide.max() <= 1
    clipped = (wide == 0) | (wide == 1)
    assert clipped.float().mean().item() == pytest.approx(0.0455, abs=0.01)  # P(|z| > 2)
    # Where not clipped the noise is N(0, 0.25^2) truncated at +-2 sigma: std 0.25 * 0.8796.
    assert (wide[~clipped] - 0.5).std().item() == pytest.approx(0.25 * 0.8796, rel=0.03)
    digits = (torch.rand(16, 1, 16, 16) > 0.7).float()  # mostly 0, some 1: clipping on both sides
    noisy = RandomTransform("rt2", noise_std=0.25).noise(digits, None)
    assert noisy.min() >= 0 and noisy.max() <= 1 and not torch.equal(noisy, digits)


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"kind": "rt4"}, "rt1, rt2, rt3"),
        ({"mask_fraction": 0.0}, "0 < mask_fraction < 1"),
        ({"mask_fraction": 1.0}, "0 < mask_fraction < 1"),
        ({"grid": 1}, "grid >= 2"),
        ({"num_masks": 1}, "2 <= num_masks <= grid"),
        ({"num_masks": 65}, "2 <= num_masks <= grid"),
    ],
)
def test_bad_transform_arguments_raise_a_config_error_naming_what_is_valid(kwargs, names):
    with pytest.raises(ConfigError, match=names):
        RandomTransform(**kwargs)


# ---- networks ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [16, 32])
def test_generator_and_discriminator_shapes(channels, size):
    x = torch.rand(3, channels, size, size)
    (m,) = RandomTransform("rt1").masks(x, _gen(0))
    out = GatedGenerator(channels, cnum=4)(x * (1 - m), m)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    scores = PatchDiscriminator(channels, cnum=8)(out, m)
    assert scores.shape == (3, (size // 8) ** 2)  # three stride-2 layers: one score per 8x8 patch
    assert GatedConv(channels, 5, 3, stride=2)(x).shape == (3, 5, size // 2, size // 2)


def test_generator_output_stays_in_the_unit_interval_for_extreme_inputs():
    g = GatedGenerator(1, cnum=4)
    x = 100 * torch.randn(4, 1, 16, 16)
    out = g(x, torch.ones(4, 1, 16, 16))
    assert out.min() >= 0 and out.max() <= 1


def test_generator_keeps_an_odd_spatial_size():
    x = torch.rand(2, 1, 15, 15)
    assert GatedGenerator(1, cnum=4)(x, torch.zeros_like(x)).shape == x.shape


# ---- PurifiedClassifier -----------------------------------------------------------------------------------------


def _classifier():
    return build_classifier("small_cnn", 10, 1, (0.3,), (0.4,)).eval()


def _deployed(kind="rt2", **kwargs):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return PurifiedClassifier(RandomTransform(kind, **kwargs), GatedGenerator(1, cnum=4), _classifier())


def test_randomness_is_fresh_outside_frozen_and_fixed_inside():
    model = _deployed()
    x = torch.rand(4, 1, 16, 16)
    assert model.randomized
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))
        with model.frozen(7):
            a, b = model(x), model(x)
            pa, ma = model.purify(x)
        with model.frozen(7):
            c = model(x)
            pc, mc = model.purify(x)
        with model.frozen(8):
            d = model(x)
        after = model(x), model(x)
    assert torch.equal(a, b) and torch.equal(a, c) and torch.equal(pa, pc) and torch.equal(ma, mc)
    assert not torch.equal(a, d)
    assert not torch.equal(*after), "randomness did not come back after leaving frozen()"


def test_frozen_restores_randomness_after_an_exception():
    model = _deployed()
    with pytest.raises(KeyError), model.frozen(1):
        raise KeyError
    x = torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        assert not torch.equal(model.purify(x)[0], model.purify(x)[0])


@pytest.mark.parametrize("kind", ["rt1", "rt2", "rt3"])
def test_purify_returns_an_image_in_the_unit_interval_and_the_mask(kind):
    model = _deployed(kind)
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        out, mask = model.purify(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert mask.shape == x.shape
    if kind == "rt3":
        assert torch.equal(mask, torch.ones_like(x))  # every pixel is regenerated
    else:
        assert _blocks(mask, 8).flatten(1).sum(1).tolist() == [16] * 3


class Recorder(nn.Module):
    """A purifier we control: call k returns the constant k + 1 everywhere, and its inputs are recorded."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, masked, mask):
        self.calls.append((masked.clone(), mask.clone()))
        return torch.full_like(masked, float(len(self.calls)))


def test_rt3_takes_each_block_from_the_copy_in_which_it_was_masked():
    purifier = Recorder()
    model = PurifiedClassifier(RandomTransform("rt3", grid=8, num_masks=4), purifier, _classifier())
    x = torch.rand(3, 1, 16, 16)
    with model.frozen(5):
        out, _ = model.purify(x)
    assert len(purifier.calls) == 4
    masks = [m for _, m in purifier.calls]
    assert torch.equal(sum(masks), torch.ones_like(x))
    expected = sum((k + 1) * m for k, m in enumerate(masks))
    assert torch.equal(out, expected)
    assert set(out.unique().tolist()) == {1.0, 2.0, 3.0, 4.0}
    # Each copy is the noisy image with its own blocks blanked; the same noise in every copy.
    g = _gen(5)
    noisy = model.transform.noise(x, g)
    assert torch.equal(torch.cat(masks, 1), torch.cat(model.transform.masks(x, g), 1))
    for masked, m in purifier.calls:
        assert torch.equal(masked, noisy * (1 - m))
    assert not torch.equal(noisy, x)


def test_rt1_feeds_the_clean_image_with_the_mask_blanked():
    purifier = Recorder()
    model = PurifiedClassifier(RandomTransform("rt1", grid=8), purifier, _classifier())
    x = torch.rand(2, 1, 16, 16)
    out, mask = model.purify(x)
    ((masked, m),) = purifier.calls
    assert torch.equal(m, mask) and torch.equal(masked, x * (1 - mask)) and torch.equal(out, torch.ones_like(x))


def test_bpda_view_has_the_same_forward_and_the_classifier_gradient_at_the_purified_image():
    model = _deployed()
    x = torch.rand(4, 1, 16, 16)
    y = torch.tensor([0, 1, 2, 3])
    view = model.bpda()
    with model.frozen(3):
        xv = x.clone().requires_grad_(True)
        logits_view = view(xv)
        (g_view,) = torch.autograd.grad(F.cross_entropy(logits_view, y), xv)
        purified = model.purify(x)[0].detach().requires_grad_(True)
        logits_clf = model.classifier(purified)
        (g_clf,) = torch.autograd.grad(F.cross_entropy(logits_clf, y), purified)
        xt = x.clone().requires_grad_(True)
        logits_true = model(xt)
        (g_true,) = torch.autograd.grad(F.cross_entropy(logits_true, y), xt)
    assert torch.allclose(logits_view, logits_true) and torch.allclose(logits_view, logits_clf)
    # The view's input is x + (purified - x), equal to the purified image up to float32 rounding (~1e-7).
    assert torch.allclose(g_view, g_clf, atol=1e-6)
    assert not torch.allclose(g_true, g_clf, atol=1e-5), "the true gradient should differ from BPDA's"


def test_features_are_the_classifiers_features_of_the_purified_image():
    model = _deployed()
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad(), model.frozen(2):
        feats = model.features(x)
        expected = model.classifier.features(model.purify(x)[0])
    assert feats.shape == (4, 128) and torch.equal(feats, expected)


# ---- the AToP module --------------------------------------------------------------------------------------------


def _atop(digits, teacher, **kwargs) -> AToP:
    """As the runner builds it: a freshly built classifier (train mode) and the teacher's state."""
    model = build_classifier("small_cnn", digits.num_classes, 1, digits.mean, digits.std)
    kwargs.setdefault("generator", TINY_G)
    kwargs.setdefault("discriminator", TINY_D)
    return AToP(model, teacher_state=teacher.state_dict(), **kwargs)


def _clone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_module_freezes_the_classifier_and_keeps_it_in_eval_mode(digits, digits_classifier):
    m = _atop(digits, digits_classifier)
    assert not any(p.requires_grad for p in m.model.parameters())
    assert all(p.requires_grad for p in m.purifier.parameters())
    assert all(p.requires_grad for p in m.discriminator.parameters())
    m.train()
    assert m.training and m.purifier.training and m.discriminator.training and not m.model.training
    assert not any(mod.training for mod in m.model.modules())
    m.eval()
    assert not m.purifier.training
    opt_g, opt_d = m.configure_optimizers()
    assert {id(p) for g in opt_g.param_groups for p in g["params"]} == {id(p) for p in m.purifier.parameters()}
    assert {id(p) for g in opt_d.param_groups for p in g["params"]} == {id(p) for p in m.discriminator.parameters()}


def test_load_init_state_takes_the_classifier_and_keeps_the_purifier_init(digits, digits_classifier):
    m = _atop(digits, build_classifier("small_cnn", 10, 1, digits.mean, digits.std))  # another teacher first
    purifier_before = _clone_state(m.purifier)
    m.load_init_state({"model." + k: v for k, v in digits_classifier.state_dict().items()})
    for k, v in digits_classifier.state_dict().items():
        assert torch.equal(m.model.state_dict()[k], v), k
    for k, v in m.purifier.state_dict().items():
        assert torch.equal(purifier_before[k], v), k
    assert not any(p.requires_grad for p in m.model.parameters())


def test_load_init_state_with_foreign_weights_and_an_unknown_transform_raise(digits, digits_classifier):
    m = _atop(digits, digits_classifier)
    state = {"model." + k: v for k, v in digits_classifier.state_dict().items()}
    with pytest.raises(ConfigError, match="cannot start from"):
        m.load_init_state({**state, "projector.weight": torch.zeros(3, 3)})
    with pytest.raises(ConfigError, match="rt1, rt2, rt3"):
        _atop(digits, digits_classifier, transform="rt9")


def test_deployed_model_and_val_attack_model(digits, digits_classifier):
    m = _atop(digits, digits_classifier).eval()
    assert m.val_attack_model() is m.model
    deployed = m.deployed_model()
    assert isinstance(deployed, PurifiedClassifier) and deployed.randomized and m.randomized
    assert deployed.classifier is m.model and deployed.purifier is m.purifier
    x, _ = digits.test_tensors("target")
    with torch.no_grad():
        a, b = deployed(x[:6]), deployed(x[:6])
        assert m.representation(x[:6]).shape == (6, 128)
    assert a.shape == (6, 10) and not torch.equal(a, b)


def test_fit_trains_purifier_and_discriminator_and_not_the_classifier(digits, digits_classifier, one_thread):
    m = _atop(digits, digits_classifier)
    before = {name: _clone_state(getattr(m, name)) for name in ("model", "purifier", "discriminator")}
    with torch.random.fork_rng():
        torch.manual_seed(0)
        info = fit(m, digits.domain("target"), {**CPU, "max_epochs": 2}, progress=False)
    assert info["selection_metric"] == "val/acc" and len(info["val_history"]) == 2
    metrics = info["trainer"].callback_metrics
    assert {"train/d", "train/g_gan", "train/l1", "val/acc"} <= set(metrics)
    assert "train/cls" not in metrics and "val/robust_acc" not in metrics
    for k, v in m.model.state_dict().items():
        assert torch.equal(before["model"][k], v), f"the classifier's {k} changed"
    for name in ("purifier", "discriminator"):
        params = dict(getattr(m, name).named_parameters())
        assert any(not torch.equal(before[name][k], p) for k, p in params.items()), f"{name} did not train"


class _ZeroThatTrainsTheDiscriminator(float):
    """GAN weight 0 that still takes the discriminator's steps: the training step before the skip."""

    def __bool__(self) -> bool:
        return True


@pytest.mark.parametrize("adversarial", [False, True])
def test_gan_weight_zero_skips_the_discriminator_and_trains_the_same_purifier(
    digits, digits_classifier, one_thread, adversarial
):
    short = {**CPU, "max_epochs": 2, "limit_train_batches": 3, "limit_val_batches": 1}
    kwargs = {"adversarial": adversarial, "cls_start_epoch": 1, "train_attack": {"eps": "16/255"}}
    states = {}
    for name, weight in (("skip", 0.0), ("reference", _ZeroThatTrainsTheDiscriminator(0.0))):
        with torch.random.fork_rng():
            torch.manual_seed(0)  # the same initial purifier and discriminator
            m = _atop(digits, digits_classifier, gan_weight=weight, **kwargs)
            before = _clone_state(m.discriminator)
            info = fit(m, digits.domain("target"), short, progress=False)
        moved = any(not torch.equal(before[k], v) for k, v in m.discriminator.state_dict().items())
        states[name] = (_clone_state(m.purifier), moved, set(info["trainer"].callback_metrics))
    (skip, skip_moved, skip_metrics), (ref, ref_moved, ref_metrics) = states["skip"], states["reference"]
    assert ref_moved and "train/d" in ref_metrics, "the reference did not train its discriminator"
    assert not skip_moved and "train/d" not in skip_metrics and "train/l1" in skip_metrics
    for k, v in ref.items():
        assert torch.equal(skip[k], v), f"the purifier's {k} differs when the discriminator is skipped"


def test_fit_as_the_runner_does_leaves_the_classifier_batch_norm_buffers_unchanged(
    digits, digits_classifier, one_thread
):
    m = _atop(digits, digits_classifier)  # no m.train() call, as in benchmark/stages.run_train_job
    before = _clone_state(m.model)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        fit(m, digits.domain("target"), {**CPU, "max_epochs": 1, "limit_val_batches": 1}, progress=False)
    changed = [k for k, v in m.model.state_dict().items() if not torch.equal(before[k], v)]
    assert not changed, f"the frozen classifier's {changed} changed in training"


def test_adversarial_stage_adds_the_ce_term_and_selects_on_robust_accuracy(digits, digits_classifier, one_thread):
    # gan and L1 weights 0: the purifier can only move through the classifier's cross-entropy.
    kwargs = {
        "adversarial": True,
        "cls_weight": 1.0,
        "gan_weight": 0.0,
        "l1_weight": 0.0,
        "train_attack": {"eps": "16/255"},
    }
    short = {**CPU, "max_epochs": 1, "limit_train_batches": 1, "limit_val_batches": 1}
    on = _atop(digits, digits_classifier, cls_start_epoch=0, **kwargs).train()
    off = _atop(digits, digits_classifier, cls_start_epoch=1, **kwargs).train()
    assert on.val_attack_model() is on.model and on.val_attack is not None
    results = {}
    for name, m in (("on", on), ("off", off)):
        start = _clone_state(m.purifier)
        with torch.random.fork_rng():
            torch.manual_seed(0)
            info = fit(m, digits.domain("target"), short, progress=False)
        moved = any(not torch.equal(start[k], v) for k, v in m.purifier.state_dict().items())
        results[name] = (info, moved)
    info_on, moved_on = results["on"]
    info_off, moved_off = results["off"]
    assert info_on["selection_metric"] == "val/robust_acc" and info_on["val_history"]
    assert "val/robust_acc" in info_on["trainer"].callback_metrics
    assert "train/cls" in info_on["trainer"].callback_metrics and moved_on
    assert "train/cls" not in info_off["trainer"].callback_metrics and not moved_off


@pytest.mark.slow
def test_l1_pretraining_lowers_the_reconstruction_error(digits, digits_classifier, one_thread):
    m = _atop(digits, digits_classifier, generator=None, discriminator=None, gan_weight=0.0, lr=2e-3).train()
    x, _ = digits.test_tensors("target")
    x = x[:256]

    def l1() -> float:
        deployed = m.deployed_model()
        with torch.no_grad(), deployed.frozen(0):
            return (deployed.purify(x)[0] - x).abs().mean().item()

    untrained = l1()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        fit(m, digits.domain("target"), {**CPU, "max_epochs": 30}, progress=False)
    m.eval()
    trained = l1()
    assert trained < 0.5 * untrained, f"L1 {untrained:.3f} -> {trained:.3f}"
