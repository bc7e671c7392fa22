"""Tests of the transfer-attack families: `attacks.transfer_families.MIFGSM` (MI, DI, TI, VMI and their combinations)
and `attacks.ila.ILA`.

What is checked, and why it matters for an honest transfer number:
- parity with torchattacks 3.5.1: `MIFGSM`, `DIFGSM`, `TIFGSM` and `VMIFGSM` give the same iterates as ours, bit for
  bit, on the same model, inputs and seed (DI and VMI draw the global RNG in torchattacks' order), so the families
  are the field's attacks and not look-alikes; TI's kernel is torchattacks', and ours also runs on grey images;
- ILA's first iterate equals the paper's update worked by hand on a two-layer ReLU network (with a real FGSM base
  and with a base whose feature change points against the loss's gradient, which ILA must follow);
- the attack contract (as tests/attacks/test_attacks.py checks it for the exported attacks): the threat model for
  eps 0 and eps > 0, the inputs untouched, device and dtype kept, the model's modes, flags and gradients restored,
  the pass counts, seeded reproducibility;
- the config: every argument in it, each one changing it, `replace`, Hydra's spelling, one-line `ConfigError`s;
- every `transfer_*` config of these families composes through Hydra into a `TransferAttack` that crafts on its
  surrogate without touching the target.

Models: the session `digits_classifier` (tests/conftest.py, 1 x 16 x 16), and for TI's parity an RGB copy of it
whose first convolution averages three channels.
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hydra.utils import instantiate
from toy_models import UnqueryableTarget

from attacks.base import Attack, Eps, attack_mode, check_adversarial, parse_eps
from attacks.errors import ConfigError
from attacks.fgsm import FGSM
from attacks.ila import ILA
from attacks.pgd import PGD
from attacks.transfer import TransferAttack
from attacks.transfer_families import MIFGSM, gaussian_kernel, l1_normalized

#: One intra-op thread per test (tests/conftest.py): the batches are tiny.
pytestmark = pytest.mark.usefixtures("one_thread")

torchattacks = pytest.importorskip("torchattacks")


# ---------------------------------------------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def target_test(digits) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits pair's target test split (rotated digits the classifier gets about 60 % of): the largest split."""
    return digits.test_tensors("target")


@pytest.fixture
def batch(digits_source_test) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = digits_source_test
    return x[:32].clone(), y[:32].clone()


@pytest.fixture(scope="module")
def rgb_classifier(digits_classifier) -> nn.Module:
    """The digits classifier on 3 channels: its first convolution takes the mean of three copies of its weights."""
    net = copy.deepcopy(digits_classifier)
    conv = net.backbone.features[0]
    rgb = nn.Conv2d(3, conv.out_channels, conv.kernel_size, padding=conv.padding, bias=False)
    with torch.no_grad():
        rgb.weight.copy_(conv.weight.repeat(1, 3, 1, 1) / 3)
    net.backbone.features[0] = rgb
    net.mean, net.std = net.mean.repeat(1, 3, 1, 1), net.std.repeat(1, 3, 1, 1)
    return net.eval()


def to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Three different channels from a grey image, all in [0, 1]."""
    return torch.cat([x, x**2, x.sqrt()], 1)


def run(attack, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """An attack (ours or torchattacks') under a fixed seed; torchattacks' gets a private copy of the model."""
    torch.manual_seed(seed)
    return attack(model, x, y) if isinstance(attack, Attack) else attack(x, y)


def assert_same_iterates(ours: torch.Tensor, theirs: torch.Tensor, name: str) -> None:
    differ = int((ours != theirs).sum())
    print(f"{name}: {differ} of {ours.numel()} entries differ, max |diff| {(ours - theirs).abs().max().item():.3g}")
    assert torch.equal(ours, theirs), f"{name}: {differ} entries differ from torchattacks"


def error_rate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model.eval()(x).argmax(1) != y).float().mean().item()


# ---------------------------------------------------------------------------------------------------------------
# 1. Parity with torchattacks 3.5.1
# ---------------------------------------------------------------------------------------------------------------


def pair(family: str, model: nn.Module, eps: float, steps: int, **settings) -> tuple[MIFGSM, object]:
    """Our attack and torchattacks' for one family, at the same settings (torchattacks' alpha = our step eps / steps).

    settings: decay, and per family: DI resize_rate; TI kernel, diversity_prob; VMI samples, beta."""
    decay = settings.get("decay", 0.0 if family in ("di", "ti") else 1.0)
    common = {"eps": eps, "alpha": eps / steps, "steps": steps, "decay": decay}
    net = copy.deepcopy(model)
    if family == "mi":
        return MIFGSM(eps, steps=steps, decay=decay), torchattacks.MIFGSM(net, **common)
    if family == "di":
        rate = settings.get("resize_rate", 0.9)
        ours = MIFGSM(eps, steps=steps, decay=decay, diversity_prob=0.5, resize_rate=rate)
        return ours, torchattacks.DIFGSM(net, **common, resize_rate=rate, diversity_prob=0.5)
    if family == "ti":
        kernel, prob = settings.get("kernel", 5), settings.get("diversity_prob", 0.0)
        ours = MIFGSM(eps, steps=steps, decay=decay, diversity_prob=prob, ti_kernel_size=kernel)
        return ours, torchattacks.TIFGSM(net, **common, len_kernel=kernel, nsig=3, diversity_prob=prob)
    samples, beta = settings.get("samples", 5), settings.get("beta", 1.5)
    ours = MIFGSM(eps, steps=steps, decay=decay, vmi_samples=samples, vmi_beta=beta)
    return ours, torchattacks.VMIFGSM(net, **common, N=samples, beta=beta)


#: (id, family, n examples, settings): each family at torchattacks' 10 steps (VMI: 5) on the 519 target test images
#: or their first 64-256; the slow test below runs the configs' settings.
PARITY = [
    ("mi", "mi", 519, {}),
    ("mi-decay0.5", "mi", 128, {"decay": 0.5}),
    ("di-shrink-0.9", "di", 256, {}),
    ("di-grow-1.1-momentum", "di", 128, {"resize_rate": 1.1, "decay": 1.0}),
    # torchattacks' TIFGSM applies DI by default (0.5); with 0 it still draws DI's RNG, which nothing else uses.
    ("ti-5px-momentum", "ti", 128, {"decay": 1.0}),
    ("ti-15px-di", "ti", 128, {"kernel": 15, "diversity_prob": 0.5}),
    ("vmi-5", "vmi", 128, {}),
    ("vmi-3-beta1", "vmi", 64, {"samples": 3, "beta": 1.0}),
]


def check_parity(family, n, settings, eps, steps, digits_classifier, rgb_classifier, target_test) -> None:
    x, y = target_test
    x, y = x[:n], y[:n]
    model = digits_classifier
    if family == "ti":  # torchattacks' TI convolves 3 channels (groups=3)
        x, model = to_rgb(x), rgb_classifier
    ours, theirs = pair(family, model, eps, steps, **settings)
    x_ours, x_theirs = run(ours, model, x, y), run(theirs, None, x, y)
    name = f"{ours.family} {settings} eps {eps * 255:g}/255, {steps} steps (n={n})"
    assert_same_iterates(x_ours, x_theirs, name)
    print(f"{name}: error rate clean {error_rate(model, x, y):.4f}, ours {error_rate(model, x_ours, y):.4f}")
    assert error_rate(model, x_ours, y) > error_rate(model, x, y)


@pytest.mark.parametrize(("family", "n", "settings"), [p[1:] for p in PARITY], ids=[p[0] for p in PARITY])
def test_same_iterates_as_torchattacks(family, n, settings, digits_classifier, rgb_classifier, target_test):
    # DI and VMI draw the global RNG in torchattacks' order (DI: size, padding, coin; VMI: the neighbours as a normal
    # tensor overwritten with uniform values), so one seed gives the same transforms and neighbours.
    check_parity(
        family, n, settings, 8 / 255, 5 if family == "vmi" else 10, digits_classifier, rgb_classifier, target_test
    )


@pytest.mark.slow
@pytest.mark.parametrize(("family", "n"), [("mi", 256), ("di", 256), ("ti", 256), ("vmi", 16)])
def test_same_iterates_as_torchattacks_at_the_configs_settings(
    family, n, digits_classifier, rgb_classifier, target_test
):
    # The transfer configs' 20 steps at 16/255 with the papers' settings: MI's decay 1.0, M-DI2's 0.5 and 0.9 with
    # momentum, TI-DIM's input diversity and momentum with a 5-px kernel, VMI's N = 20 neighbours (21 gradients a
    # step, hence 16 examples).
    settings = {"mi": {}, "di": {"decay": 1.0}, "ti": {"diversity_prob": 0.5, "decay": 1.0}, "vmi": {"samples": 20}}
    check_parity(family, n, settings[family], 16 / 255, 20, digits_classifier, rgb_classifier, target_test)


def test_without_a_family_the_iterates_differ(digits_classifier, batch):
    # Each option changes the attack (the parity tests would pass vacuously if an option were ignored on both sides).
    x, y = batch
    eps = 16 / 255
    plain = run(MIFGSM(eps, steps=5), digits_classifier, x, y)
    for settings in ({"decay": 0.0}, {"diversity_prob": 0.5}, {"ti_kernel_size": 5}, {"vmi_samples": 2}):
        assert not torch.equal(run(MIFGSM(eps, steps=5, **settings), digits_classifier, x, y), plain), settings


@pytest.mark.parametrize("size", [3, 5, 7, 15])
@pytest.mark.parametrize("nsig", [3, 2.5])
def test_ti_kernel_is_torchattacks(size, nsig):
    reference = torchattacks.TIFGSM(nn.Linear(1, 1), len_kernel=size, nsig=nsig).stacked_kernel  # (3, 1, k, k)
    assert torch.equal(gaussian_kernel(size, nsig).float(), reference[0, 0])
    assert gaussian_kernel(size, nsig).sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_ti_smooths_each_channel_alone(channels):
    # groups = channels: each channel convolved with the kernel, no mixing (torchattacks' groups=3 is RGB only).
    g = torch.randn(2, channels, 9, 11, generator=torch.Generator().manual_seed(channels))
    smoothed = MIFGSM(0.1, ti_kernel_size=5, ti_nsig=2.0)._smooth(g)
    kernel = gaussian_kernel(5, 2.0).float()[None, None]
    expected = torch.cat([F.conv2d(g[:, c : c + 1], kernel, padding=2) for c in range(channels)], 1)
    torch.testing.assert_close(smoothed, expected, atol=1e-6, rtol=0)


def test_ti_runs_on_grey_images(digits_classifier, batch):
    x, y = batch
    eps = 16 / 255
    x_adv = MIFGSM(eps, steps=5, ti_kernel_size=5)(digits_classifier, x, y)
    check_adversarial(x, x_adv, "linf", eps)
    assert not torch.equal(x_adv, MIFGSM(eps, steps=5)(digits_classifier, x, y))
    assert error_rate(digits_classifier, x_adv, y) > error_rate(digits_classifier, x, y)


def test_default_step_is_eps_over_steps():
    assert MIFGSM(0.1, steps=20).step_size == pytest.approx(0.005)
    assert MIFGSM("8/255", steps=10).step_size == pytest.approx(0.8 / 255)
    assert MIFGSM(0.1, steps=20, step_size=0.01).step_size == 0.01


def test_zero_gradient_is_not_nan():
    # torchattacks divides an all-zero gradient by its zero mean (NaN); ours keeps it zero.
    g = torch.zeros(2, 1, 4, 4)
    g[1, 0, 0, 0] = -3.0
    out = l1_normalized(g)
    assert torch.isfinite(out).all() and torch.equal(out[0], g[0])
    assert out[1].abs().mean().item() == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------------
# 2. DI's transform
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "rate", "out"),
    [((16, 16), 0.9, (16, 16)), ((16, 16), 1.1, (17, 17)), ((12, 16), 0.9, (12, 16)), ((12, 16), 1.3, (15, 20))],
)
def test_diversity_output_size(shape, rate, out):
    attack = MIFGSM(0.1, diversity_prob=1.0, resize_rate=rate)
    x = torch.rand(2, 3, *shape, generator=torch.Generator().manual_seed(0))
    for seed in range(20):
        torch.manual_seed(seed)
        t = attack._diverse(x)
        assert t.shape == (2, 3, *out)


def test_diversity_probability_zero_and_one():
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    never = MIFGSM(0.1, diversity_prob=1e-9)
    assert all(never._diverse(x) is x for _ in range(20))
    always = MIFGSM(0.1, diversity_prob=1.0)
    changed = [always._diverse(x) for _ in range(20)]
    assert all(not torch.equal(t, x) for t in changed)
    # Shrunk to 14 or 15 px and zero-padded back to 16: torchattacks draws the top and left padding in [0, rem), so
    # the last row and column are always padding.
    for t in changed:
        assert t.shape == x.shape and not t[..., -1, :].any() and not t[..., :, -1].any()


def test_diversity_rate_without_sizes_is_a_config_error(digits_classifier, batch):
    x, y = batch
    with pytest.raises(ConfigError, match="resize_rate 1.05 leaves no sizes to draw on 16-px images") as info:
        MIFGSM(8 / 255, diversity_prob=0.5, resize_rate=1.05)(digits_classifier, x, y)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# 3. ILA against its update rule worked by hand
# ---------------------------------------------------------------------------------------------------------------


class TwoLayer(nn.Module):
    """x (1 x 2 x 2, flattened to 4) -> hidden = W1 x + b1 -> act = ReLU -> head = W2 h (2 logits)."""

    def __init__(self):
        super().__init__()
        self.flat = nn.Flatten()
        self.hidden = nn.Linear(4, 3)
        self.act = nn.ReLU()
        self.head = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.hidden.weight.copy_(
                torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0], [1.0, 1.0, -1.0, -1.0]])
            )
            self.hidden.bias.copy_(torch.tensor([0.1, -0.8, -0.05]))
            self.head.weight.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, -1.0]]))

    def forward(self, x):
        return self.head(self.act(self.hidden(self.flat(x))))


class Shift(Attack):
    """A base attack that adds a fixed perturbation (to choose the base's feature change at will)."""

    name = "shift"

    def __init__(self, eps: Eps, delta: tuple = (0.0, 0.0, 0.0, 0.0)):
        super().__init__(eps)
        self.delta = delta

    def perturb(self, model, x, y):
        return (x + torch.tensor(self.delta, dtype=x.dtype).view(1, 1, 2, 2)).clamp(0, 1)


X0 = torch.full((1, 1, 2, 2), 0.5)
Y0 = torch.tensor([0])


def test_ila_first_iterate_by_hand_with_fgsm_base():
    # x = (.5, .5, .5, .5): pre-activations W1 x + b1 = (.1, .2, -.05), h = (.1, .2, 0) (unit 3 off); logits (.1, .2).
    # FGSM base, eps .1: dCE/dz = softmax(z) - e_0 = (-.525, .525); W2^T that = (-.525, .525, -1.05), masked
    # (-.525, .525, 0); W1^T -> (-.525, .525, .525, .525): x' = (.4, .6, .6, .6).
    # At x': pre-activations (-.1, .4, -.25), h' = (0, .4, 0), dy' = h' - h = (-.1, .2, 0).
    # ILA's gradient at x of (h(x'') - h(x)) . dy' is W1^T (mask(x) * dy') = W1^T (-.1, .2, 0) = (-.1, .1, .2, .2),
    # so its first iterate (step eps) is x + .1 * sign = (.4, .6, .6, .6).
    model = TwoLayer()
    eps = 0.1
    attack = ILA(eps, layer="act", steps=1, base=functools.partial(FGSM))
    x_base = FGSM(eps)(model, X0, Y0)
    torch.testing.assert_close(x_base.flatten(), torch.tensor([0.4, 0.6, 0.6, 0.6]), atol=1e-6, rtol=0)
    x1 = attack(model, X0, Y0)
    torch.testing.assert_close(x1.flatten(), torch.tensor([0.4, 0.6, 0.6, 0.6]), atol=1e-6, rtol=0)


def test_ila_follows_the_base_feature_change_by_hand():
    # A base that moves x by (+.1, -.1, -.1, 0): x' = (.6, .4, .4, .5), pre-activations (.3, .1, .05), h' = (.3, .1,
    # .05), dy' = h' - h = (.2, -.1, .05). Unit 3 is off at x, so ILA's gradient there is W1^T (.2, -.1, 0) =
    # (.2, -.2, -.1, -.1): the first iterate (step .1) is (.6, .4, .4, .4) -- opposite to the cross-entropy's sign
    # (-1, 1, 1, 1) in every pixel: ILA follows the base's feature change, not the loss.
    model = TwoLayer()
    attack = ILA(0.1, layer="act", steps=1, base=functools.partial(Shift, delta=(0.1, -0.1, -0.1, 0.0)))
    x1 = attack(model, X0, Y0)
    torch.testing.assert_close(x1.flatten(), torch.tensor([0.6, 0.4, 0.4, 0.4]), atol=1e-6, rtol=0)
    # The same from an autograd transcription of the projection loss (a second check of the hand numbers).
    h = lambda x: model.act(model.hidden(model.flat(x)))  # noqa: E731
    x_base = Shift(0.1, delta=(0.1, -0.1, -0.1, 0.0))(model, X0, Y0)
    xg = X0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(((h(xg) - h(X0)) * (h(x_base) - h(X0)).detach()).sum(), xg)
    torch.testing.assert_close(grad.flatten(), torch.tensor([0.2, -0.2, -0.1, -0.1]), atol=1e-6, rtol=0)


def test_ila_second_iterate_by_hand_is_projected_onto_the_ball():
    # eps .15, steps of .1. FGSM base: x' = (.35, .65, .65, .65), pre-activations (-.2, .5, -.35), dy' = (-.1, .3, 0).
    # Step 1 at x: W1^T (-.1, .3, 0) = (-.1, .1, .3, .3) -> x1 = (.4, .6, .6, .6), pre-activations (-.1, .4, -.25).
    # Step 2 at x1, only unit 2 on: W1^T (0, .3, 0) = (0, 0, .3, .3) -> (.4, .6, .7, .7), clipped to x +- .15:
    # (.4, .6, .65, .65); a zero gradient entry leaves its pixel where it is.
    model = TwoLayer()
    attack = ILA(0.15, layer="act", steps=2, step_size=0.1, base=functools.partial(FGSM))
    x2 = attack(model, X0, Y0)
    torch.testing.assert_close(x2.flatten(), torch.tensor([0.4, 0.6, 0.65, 0.65]), atol=1e-6, rtol=0)
    check_adversarial(X0, x2, "linf", 0.15)


def test_ila_layer_by_name(digits_classifier, batch):
    x, y = batch
    eps = 16 / 255
    # A model's feature_layers list (its last entry), a module of the backbone, the penultimate representation.
    outs = {}
    for layer in (["features"], "backbone.features.2", "pre_logits"):
        attack = ILA(eps, layer=layer, steps=3, base=functools.partial(MIFGSM, steps=3))
        torch.manual_seed(0)
        outs[str(layer)] = attack(digits_classifier, x, y)
        check_adversarial(x, outs[str(layer)], "linf", eps)
    assert ILA(eps, layer=["features"]).config() == ILA(eps, layer="features").config()
    assert not torch.equal(outs["['features']"], outs["backbone.features.2"])
    with pytest.raises(ConfigError, match="layer 'nope' is no module of SmallCNN; valid: ") as info:
        ILA(eps, layer="nope")(digits_classifier, x, y)
    assert "\n" not in str(info.value)


def test_ila_moves_the_features_along_the_base_change(surrogate, target_test):
    # Not a claim of the paper on these tiny models, only a sanity check: ILA at the feature boundary keeps the
    # surrogate's error well above clean and moves the layer's features along the base's change.
    x, y = target_test
    x, y = x[:128], y[:128]
    eps = 16 / 255
    ila = ILA(eps, layer="features", steps=10, base=functools.partial(MIFGSM, steps=10, decay=0.0))
    x_adv = run(ila, surrogate, x, y)
    check_adversarial(x, x_adv, "linf", eps)
    assert error_rate(surrogate, x_adv, y) > error_rate(surrogate, x, y) + 0.2
    base_adv = run(ila.base, surrogate, x, y)
    feats = surrogate.backbone.features
    with torch.no_grad():
        f0 = feats(surrogate.normalize(x)).flatten(1)
        d_base = feats(surrogate.normalize(base_adv)).flatten(1) - f0
        d_ila = feats(surrogate.normalize(x_adv)).flatten(1) - f0
    projection = (d_ila * d_base).sum(1) / d_base.norm(dim=1).clamp_min(1e-12)
    # ILA maximizes this projection: on average it exceeds the base's own feature change.
    assert projection.mean().item() > d_base.norm(dim=1).mean().item()


# ---------------------------------------------------------------------------------------------------------------
# 4. The attack contract
# ---------------------------------------------------------------------------------------------------------------

#: (id, class, constructor arguments without eps): each family alone, the main combinations and ILA's bases.
VARIANTS = [
    ("mi", MIFGSM, {"steps": 3}),
    ("i-margin", MIFGSM, {"steps": 3, "decay": 0.0, "loss": "margin"}),
    ("di", MIFGSM, {"steps": 3, "decay": 0.0, "diversity_prob": 1.0}),
    ("mi-di-grow", MIFGSM, {"steps": 3, "diversity_prob": 0.5, "resize_rate": 1.1}),
    ("ti", MIFGSM, {"steps": 3, "decay": 0.0, "ti_kernel_size": 5}),
    ("vmi", MIFGSM, {"steps": 2, "vmi_samples": 2}),
    ("mi-di-ti", MIFGSM, {"steps": 3, "diversity_prob": 0.5, "ti_kernel_size": 3}),
    ("vmi-di-ti", MIFGSM, {"steps": 2, "diversity_prob": 0.5, "ti_kernel_size": 5, "vmi_samples": 2}),
    ("ila", ILA, {"steps": 3}),
    ("ila-low-layer", ILA, {"steps": 2, "layer": "backbone.features.2"}),
    ("ila-mi-di", ILA, {"steps": 2, "base": functools.partial(MIFGSM, steps=2, diversity_prob=0.5)}),
    ("ila-pgd", ILA, {"steps": 2, "base": functools.partial(PGD, steps=2)}),
    (
        "transfer-vmi-di-ti",
        TransferAttack,
        {"attack": functools.partial(MIFGSM, steps=2, vmi_samples=2, ti_kernel_size=5)},
    ),
    ("transfer-ila", TransferAttack, {"attack": functools.partial(ILA, steps=2, layer=["features"])}),
]
CASES = [pytest.param(cls, kwargs, id=vid) for vid, cls, kwargs in VARIANTS]
CASE_EPS = [
    pytest.param(cls, kwargs, eps, id=f"{vid}-eps{round(eps * 255)}")
    for vid, cls, kwargs in VARIANTS
    for eps in (0.0, 8 / 255, 0.3)
]


def make(cls, kwargs: dict, eps: float, surrogate: nn.Module) -> Attack:
    attack = cls(eps, **kwargs)
    if isinstance(attack, TransferAttack):
        attack.surrogate = surrogate
    return attack


def snapshot(net: nn.Module) -> dict:
    return {
        "modes": {name: m.training for name, m in net.named_modules()},
        "flags": {name: p.requires_grad for name, p in net.named_parameters()},
        "grads": {name: p.grad for name, p in net.named_parameters() if p.grad is not None},
        "buffers": {name: b.clone() for name, b in net.named_buffers()},
    }


@pytest.mark.parametrize(("cls", "kwargs", "eps"), CASE_EPS)
def test_output_in_threat_model_and_state_restored(cls, kwargs, eps, model, surrogate, batch):
    x, y = batch
    x_before = x.clone()
    nets = {"target": model, "surrogate": surrogate}
    for net in nets.values():
        net.train()
        net.backbone.features[1].eval()  # one submodule in eval (a frozen BN)
        net.backbone.features[0].weight.requires_grad_(False)  # one frozen parameter
    before = {k: snapshot(net) for k, net in nets.items()}
    seen = {k: [] for k in nets}
    hooks = [
        m.register_forward_pre_hook(
            lambda mod, args, k=k: seen[k].append((mod.training, any(p.requires_grad for p in mod.parameters(False))))
        )
        for k, net in nets.items()
        for m in net.modules()
    ]
    try:
        x_adv = make(cls, kwargs, eps, surrogate)(model, x, y)
    finally:
        for h in hooks:
            h.remove()
    check_adversarial(x, x_adv, "linf", eps)
    d = (x_adv.double() - x.double()).abs().max().item()
    assert d <= eps * (1 + 1e-6) + 1e-6 and x_adv.min().item() >= 0 and x_adv.max().item() <= 1
    if eps == 0:
        assert torch.equal(x_adv, x)
    else:
        assert not torch.equal(x_adv, x), "the attack did not move any example"
    assert torch.equal(x, x_before) and x_adv.data_ptr() != x.data_ptr() and not x_adv.requires_grad
    for k, net in nets.items():
        after = snapshot(net)
        assert after["modes"] == before[k]["modes"] and after["flags"] == before[k]["flags"], k
        assert not after["grads"], f"{k}: gradients left on {sorted(after['grads'])}"
        assert all(torch.equal(after["buffers"][n], b) for n, b in before[k]["buffers"].items()), k
        assert not any(training or trainable for training, trainable in seen[k]), f"{k}: ran in train mode or unfrozen"
    attacked, other = ("surrogate", "target") if cls is TransferAttack else ("target", "surrogate")
    assert seen[attacked] and not seen[other]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize(("cls", "kwargs"), CASES)
def test_device_and_dtype_kept(cls, kwargs, dtype, model, surrogate, batch):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, y = batch
    model.to(device=device, dtype=dtype)
    surrogate.to(device=device, dtype=dtype)
    x, y = x.to(device=device, dtype=dtype), y.to(device)
    x_adv = make(cls, kwargs, 8 / 255, surrogate)(model, x, y)
    assert x_adv.device == x.device and x_adv.dtype == x.dtype
    check_adversarial(x, x_adv, "linf", 8 / 255)


@pytest.mark.parametrize(("cls", "kwargs"), CASES)
def test_seeded_runs_repeat_and_no_grad_is_no_matter(cls, kwargs, model, surrogate, batch):
    x, y = batch
    attack = make(cls, kwargs, 8 / 255, surrogate)
    first = run(attack, model, x, y, seed=3)
    with torch.no_grad():
        again = run(attack, model, x, y, seed=3)
        assert not torch.is_grad_enabled()
    assert torch.equal(first, again)


def test_randomized_families_draw_the_global_rng(model, batch):
    x, y = batch
    for kwargs in ({"diversity_prob": 0.5}, {"vmi_samples": 2}):
        attack = MIFGSM(16 / 255, steps=3, **kwargs)
        assert not torch.equal(run(attack, model, x, y, seed=0), run(attack, model, x, y, seed=1)), kwargs


def test_pass_counts(model, surrogate, batch):
    x, y = batch
    n = len(x)
    mi = MIFGSM(8 / 255, steps=4, diversity_prob=0.5, ti_kernel_size=5)
    mi(model, x, y)
    assert (mi.forward_passes, mi.backward_passes) == (4 * n, 4 * n)
    vmi = MIFGSM(8 / 255, steps=3, vmi_samples=5)
    vmi(model, x, y)
    assert (vmi.forward_passes, vmi.backward_passes) == (3 * 6 * n, 3 * 6 * n)
    ila = ILA(8 / 255, steps=3, base=functools.partial(MIFGSM, steps=2))
    ila(model, x, y)
    assert (ila.forward_passes, ila.backward_passes) == ((2 + 2 + 3) * n, (2 + 3) * n)
    transfer = TransferAttack(8 / 255, functools.partial(ILA, steps=3))
    transfer.surrogate = surrogate
    transfer(model, x, y)
    assert (transfer.forward_passes, transfer.backward_passes) == ((3 + 2 + 3) * n, (3 + 3) * n)


def test_attack_mode_is_the_callers_business(model, batch):
    # ILA calls its base's `perturb` inside its own attack mode: the base must not need a second one.
    x, y = batch
    ila = ILA(8 / 255, steps=2)
    with attack_mode(model), torch.enable_grad():
        direct = ila.perturb(model, x, y)
    assert torch.equal(direct, ila(model, x, y))


# ---------------------------------------------------------------------------------------------------------------
# 5. Config, replace, errors
# ---------------------------------------------------------------------------------------------------------------

# Every argument of MIFGSM and ILA in the config, and `replace`: tests/attacks/test_config.py (CHANGES).


def test_switched_off_families_share_a_key():
    # A family's settings do not matter while it is off: the key records them as None.
    plain = MIFGSM(0.1).config()
    assert MIFGSM(0.1, resize_rate=1.1, ti_nsig=2.0, vmi_beta=1.0).config() == plain
    assert plain["resize_rate"] is None and plain["ti_nsig"] is None and plain["vmi_beta"] is None
    assert MIFGSM(0.1, step_size=0.01).config() == plain  # the default step is eps / steps
    assert MIFGSM("1/10", norm="LINF").config() == plain


@pytest.mark.parametrize("cls", [MIFGSM, ILA], ids=lambda c: c.__name__)
def test_the_default_step_follows_eps_on_replace(cls):
    assert cls(0.1).replace(eps=0.2).step_size == pytest.approx(0.02)  # eps / steps at the default 10 steps


def test_ila_config_holds_its_base_as_it_runs():
    ila = ILA(0.1, steps=4)
    assert ila.config()["base"] == MIFGSM(0.1, steps=4, decay=0.0).config()
    assert ila.replace(eps=0.2).config()["base"]["eps"] == 0.2
    pgd = ILA(0.1, base=functools.partial(PGD, steps=3))
    assert pgd.config()["base"] == PGD(0.1, steps=3, early_stop=False).config()
    transfer = TransferAttack(0.1, functools.partial(ILA, steps=4))
    assert transfer.config()["attack"] == ila.config()


def test_hydra_spelling_gives_the_direct_config():
    cfg = {
        "_target_": "attacks.transfer.TransferAttack",
        "surrogate": "teacher",
        "attack": {
            "_target_": "attacks.ila.ILA",
            "_partial_": True,
            "layer": ["features"],
            "steps": 10,
            "base": {"_target_": "attacks.transfer_families.MIFGSM", "_partial_": True, "steps": 10, "decay": 0.0},
        },
    }
    built = instantiate(cfg, _partial_=True)(eps="16/255")
    direct = TransferAttack(16 / 255, functools.partial(ILA, layer="features", base=functools.partial(MIFGSM, decay=0)))
    assert built.config() == direct.config()


BAD = {
    "norm-l2": (lambda: MIFGSM(0.1, norm="l2"), "MIFGSM supports norm linf only"),
    "norm-l3": (lambda: MIFGSM(0.1, norm="l3"), "unknown norm 'l3'; valid: l2, linf"),
    "eps-negative": (lambda: MIFGSM(-0.1), "epsilon must be"),
    "steps-0": (lambda: MIFGSM(0.1, steps=0), "steps must be an integer >= 1"),
    "steps-fractional": (lambda: MIFGSM(0.1, steps=2.5), "steps must be an integer >= 1"),
    "step-size-0": (lambda: MIFGSM(0.1, step_size=0), "step_size must be > 0"),
    "decay-negative": (lambda: MIFGSM(0.1, decay=-1), "decay must be a finite number >= 0"),
    "decay-nan": (lambda: MIFGSM(0.1, decay=float("nan")), "decay must be a finite number >= 0"),
    "prob-above-1": (lambda: MIFGSM(0.1, diversity_prob=1.5), r"diversity_prob must be in \[0, 1\]"),
    "resize-1": (lambda: MIFGSM(0.1, resize_rate=1.0), "resize_rate must be a finite number > 0 other than 1"),
    "resize-0": (lambda: MIFGSM(0.1, resize_rate=0), "resize_rate must be a finite number > 0 other than 1"),
    "kernel-even": (lambda: MIFGSM(0.1, ti_kernel_size=4), "ti_kernel_size must be 0 .no TI. or an odd integer >= 3"),
    "kernel-1": (lambda: MIFGSM(0.1, ti_kernel_size=1), "ti_kernel_size must be 0 .no TI. or an odd integer >= 3"),
    "kernel-negative": (lambda: MIFGSM(0.1, ti_kernel_size=-3), "ti_kernel_size must be 0"),
    "nsig-0": (lambda: MIFGSM(0.1, ti_nsig=0), "ti_nsig must be a finite number > 0"),
    "vmi-negative": (lambda: MIFGSM(0.1, vmi_samples=-1), "vmi_samples must be an integer >= 0"),
    "vmi-fractional": (lambda: MIFGSM(0.1, vmi_samples=1.5), "vmi_samples must be an integer >= 0"),
    "beta-0": (lambda: MIFGSM(0.1, vmi_beta=0), "vmi_beta must be a finite number > 0"),
    "loss": (lambda: MIFGSM(0.1, loss="kl"), "unknown loss 'kl'; valid: ce, margin"),
    "ila-norm": (lambda: ILA(0.1, norm="l2"), "ILA supports norm linf only"),
    "ila-steps": (lambda: ILA(0.1, steps=0), "steps must be an integer >= 1"),
    "ila-step-size": (lambda: ILA(0.1, step_size=-1), "epsilon must be"),
    "ila-layer-list": (lambda: ILA(0.1, layer=[]), "layer must be a module name or a non-empty list"),
    "ila-base-l2": (lambda: ILA(0.1, base=functools.partial(PGD, norm="l2")), "ILA's base attack must be linf"),
    "ila-base-bad": (lambda: ILA(0.1, base=functools.partial(MIFGSM, steps=0)), "steps must be an integer >= 1"),
    "transfer-inner": (lambda: TransferAttack(0.1, functools.partial(MIFGSM, decay=-1)), "decay must be"),
}


@pytest.mark.parametrize(("build", "message"), list(BAD.values()), ids=list(BAD))
def test_bad_hyperparameters_are_one_line_config_errors(build, message):
    with pytest.raises(ConfigError, match=message) as info:
        build()
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------------------
# 6. The configs: composed through Hydra, crafted on a surrogate
# ---------------------------------------------------------------------------------------------------------------

CONFIGS = [
    "transfer_mi_fgsm",
    "transfer_di_fgsm",
    "transfer_ti_fgsm",
    "transfer_vmi_fgsm",
    "transfer_mi_di_fgsm",
    "transfer_mi_di_ti_fgsm",
    "transfer_vmi_di_ti_fgsm",
    "transfer_ila",
]


@pytest.fixture(scope="module")
def composed() -> dict:
    from benchmark.runner.config import compose

    return compose([f"attack=[{','.join(CONFIGS)}]"])["attack"]


@pytest.mark.parametrize("name", CONFIGS)
def test_config_composes_and_crafts_on_the_surrogate(name, composed, surrogate, batch):
    from benchmark.components import build

    entry = composed[name]
    assert entry["epsilons"] == ["4/255", "8/255", "16/255", "32/255"]
    inner = entry["attack"]["attack"]
    assert inner["_target_"] in ("attacks.transfer_families.MIFGSM", "attacks.ila.ILA")
    attacks = [build(entry["attack"], eps=parse_eps(e)) for e in entry["epsilons"]]
    assert all(isinstance(a, TransferAttack) and a.surrogate_name == "teacher" for a in attacks)
    # Equal iterations with transfer PGD: 20 steps (ILA: 10 of its base, then 10 of its own).
    runs = attacks[2].base
    assert (runs.steps + runs.base.steps if isinstance(runs, ILA) else runs.steps) == 20
    if isinstance(runs, MIFGSM):  # the families switched on are those the file is named after
        assert attacks[2].label == f"{name}_linf_16"
    x, y = batch
    transfer = attacks[2]
    if isinstance(runs, MIFGSM) and runs.vmi_samples:  # 20 x 21 gradients: the composition is what is tested here
        settings = {k: v for k, v in runs.arguments.items() if k != "eps"}
        transfer = TransferAttack(transfer.eps, functools.partial(MIFGSM, **{**settings, "steps": 2}))
    transfer.surrogate = surrogate
    x_adv = run(transfer, UnqueryableTarget(), x, y)
    check_adversarial(x, x_adv, "linf", transfer.eps)
    assert torch.equal(x_adv, run(transfer.base, surrogate, x, y))
    assert error_rate(surrogate, x_adv, y) > error_rate(surrogate, x, y)
