"""The mimicry attack's parts: MS-SSIM against a NumPy transcription of the authors' TF code, the DSSIM budget check,
target selection from the attacker's data, and the attack lowering the layer-K distance within its budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.signal import correlate2d

from attacks.base import AttackConstraintError, check_adversarial
from attacks.errors import ConfigError
from attacks.mimicry import MimicryAttack, feature_distance, layer_function, resolve_layer
from attacks.ms_ssim import avg_pool_same, dssim, ms_ssim
from lightning_modules.classifier import build_classifier


def mean_feature_distance(model: torch.nn.Module, layer: str, x: torch.Tensor, x_t: torch.Tensor) -> float:
    """Mean layer-K distance between two batches on `model`."""
    phi = layer_function(model, resolve_layer(layer))
    with torch.no_grad():
        return float(feature_distance(phi(x), phi(x_t)).mean())


# ---- a NumPy transcription of `msssim_tf.py` (bolunwang/translearn), one NHWC image at a time, 0..255 -------------
def _np_fspecial_gauss(size, sigma):
    radius = size // 2
    offset = 0.0
    start, stop = -radius, radius + 1
    if size % 2 == 0:
        offset = 0.5
        stop -= 1
    x, y = np.mgrid[offset + start : stop, offset + start : stop]
    g = np.exp(-((x**2 + y**2) / (2.0 * sigma**2)))
    return g / g.sum()


def _np_conv_valid(img, window):  # tf.nn.conv2d(..., padding='VALID') per channel (a cross-correlation)
    return np.stack([correlate2d(img[0, :, :, c], window, mode="valid") for c in range(img.shape[3])], -1)[None]


def _np_ssim_for_multiscale(img1, img2, max_val=255, filter_size=11, filter_sigma=1.5, k1=0.01, k2=0.03):
    _, height, width, _ = img1.shape
    size = min(filter_size, height, width)
    sigma = size * filter_sigma / filter_size if filter_size else 0
    window = _np_fspecial_gauss(size, sigma)
    mu1, mu2 = _np_conv_valid(img1, window), _np_conv_valid(img2, window)
    sigma11 = _np_conv_valid(img1 * img1, window)
    sigma22 = _np_conv_valid(img2 * img2, window)
    sigma12 = _np_conv_valid(img1 * img2, window)
    mu11, mu22, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    sigma11 -= mu11
    sigma22 -= mu22
    sigma12 -= mu12
    c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
    v1 = 2.0 * sigma12 + c2
    v2 = sigma11 + sigma22 + c2
    ssim = np.mean(((2.0 * mu12 + c1) * v1) / ((mu11 + mu22 + c1) * v2))
    cs = np.mean(v1 / v2)
    return ssim, cs


def _np_avg_pool_same(img):  # tf.nn.avg_pool(ksize 2, strides 2, 'SAME'): pad at the end, average the valid cells
    _, h, w, _ = img.shape
    out = np.zeros((1, (h + 1) // 2, (w + 1) // 2, img.shape[3]))
    for i in range(out.shape[1]):
        for j in range(out.shape[2]):
            out[0, i, j] = img[0, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean((0, 1))
    return out


def np_multiscale_ssim(img1, img2, max_val=255, weights=(0.0448, 0.2856, 0.3001, 0.2363, 0.1333)):
    weights = np.array(weights)
    mssim, mcs = [], []
    for _ in range(len(weights)):
        ssim, cs = _np_ssim_for_multiscale(img1, img2, max_val=max_val)
        mssim.append(ssim)
        mcs.append(cs)
        img1, img2 = _np_avg_pool_same(img1), _np_avg_pool_same(img2)
    return np.prod(np.power(mcs[:-1], weights[:-1])) * (mssim[-1] ** weights[-1])


def _pair(rng, n, c, h, w):
    """n source images on the 0..255 grid and perturbed copies (correlated, as mimicry produces)."""
    a = rng.integers(0, 256, size=(n, c, h, w)).astype(np.float64)
    b = np.clip(a + rng.normal(0, 12, size=a.shape), 0, 255)
    return a, b


@pytest.mark.parametrize("shape", [(1, 16, 16), (3, 32, 32), (1, 28, 28), (3, 13, 21), (3, 224, 224)])
def test_ms_ssim_matches_a_numpy_transcription_of_the_authors_tf_code(shape):
    rng = np.random.default_rng(sum(shape))
    n = 1 if shape[-1] == 224 else 3
    a, b = _pair(rng, n, *shape)
    ours = ms_ssim(torch.from_numpy(a / 255), torch.from_numpy(b / 255), max_val=1.0)  # scale-invariant: [0, 1]
    for i in range(n):
        ref = np_multiscale_ssim(a[i : i + 1].transpose(0, 2, 3, 1), b[i : i + 1].transpose(0, 2, 3, 1))
        assert float(ours[i]) == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert torch.equal(dssim(torch.from_numpy(a / 255), torch.from_numpy(a / 255)), torch.zeros(n, dtype=torch.float64))


def test_avg_pool_same_leaves_padding_out_of_the_average():
    x = torch.arange(9.0).view(1, 1, 3, 3)
    # rows/cols {0,1} and {2}: the last cell averages only itself, the edge cells two values
    expected = torch.tensor([[[[2.0, 3.5], [6.5, 8.0]]]])
    assert torch.equal(avg_pool_same(x), expected)


def test_check_adversarial_learns_the_dssim_budget():
    rng = np.random.default_rng(0)
    a, b = _pair(rng, 4, 1, 16, 16)
    x, x_adv = torch.from_numpy(a / 255).float(), torch.from_numpy(b / 255).float()
    d = float(dssim(x_adv.double(), x.double()).max())
    check_adversarial(x, x_adv, "dssim", d)  # exactly at the budget passes
    with pytest.raises(AttackConstraintError, match="DSSIM"):
        check_adversarial(x, x_adv, "dssim", d / 2)
    with pytest.raises(ConfigError, match="valid: dssim, l2, linf"):
        check_adversarial(x, x_adv, "l3", 1.0)


# ---- the attack -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return build_classifier("small_cnn", 10, 1, [0.3], [0.4]).eval()


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(12, 1, 16, 16, generator=g), torch.randint(0, 10, (12,), generator=g)
    ax, ay = torch.rand(40, 1, 16, 16, generator=g), torch.arange(40) % 10
    return x, y, ax, ay


def _targets(attack, model, x, y):
    return attack._targets(layer_function(model, attack.layer), x, y, 10)


@pytest.mark.parametrize(
    "norm,eps,steps",
    [("linf", 8 / 255, 20), ("l2", 0.5, 20), ("dssim", 0.003, 150), ("dssim", 0.0005, 150)],
)
@pytest.mark.parametrize("targeted", [True, False])
def test_mimicry_lowers_the_layer_k_distance_and_stays_in_budget(teacher, data, norm, eps, steps, targeted):
    x, y, ax, ay = data
    attack = MimicryAttack(eps, norm=norm, steps=steps, targeted=targeted)
    attack.attacker_data = (ax, ay)
    target = _targets(attack, teacher, x, y)
    x_adv = attack(teacher, x, y)
    check_adversarial(x, x_adv, attack.norm, attack.eps)
    if norm == "dssim":
        assert float(dssim(x_adv, x).max()) < eps  # strictly, as the authors keep iterates
    before = mean_feature_distance(teacher, "features", x, target)
    after = mean_feature_distance(teacher, "features", x_adv, target)
    assert after < 0.97 * before
    assert attack.forward_passes > 0 and attack.backward_passes == steps * len(x)


@pytest.mark.parametrize("norm,eps", [("dssim", 0.003), ("linf", 8 / 255), ("l2", 0.5)])
def test_quantize_rounds_to_the_8_bit_grid_within_budget(teacher, data, norm, eps):
    x, y, ax, ay = data
    x = torch.round(x * 255) / 255
    attack = MimicryAttack(eps, norm=norm, steps=60, quantize=True)
    attack.attacker_data = (ax, ay)
    x_adv = attack(teacher, x, y)
    assert torch.equal(torch.round(x_adv * 255) / 255, x_adv)
    check_adversarial(x, x_adv, norm, eps)
    assert (x_adv != x).flatten(1).any(1).float().mean() > 0.5  # most examples keep a perturbation


def test_targets_come_from_the_attackers_data_and_do_not_depend_on_batching(teacher, data):
    x, y, ax, ay = data
    attack = MimicryAttack(8 / 255, targeted=True)
    attack.attacker_data = (ax, ay)
    classes = attack.target_classes(x, y, 10)
    assert (classes != y).all()
    parts = torch.cat([attack.target_classes(x[i : i + 5], y[i : i + 5], 10) for i in range(0, len(x), 5)])
    assert torch.equal(classes, parts)
    images = _targets(attack, teacher, x, y)
    rows = [(ax == img).flatten(1).all(1).nonzero().flatten() for img in images]
    assert all(len(r) == 1 for r in rows)  # every target is one of the attacker's images ...
    assert torch.equal(ay[torch.cat(rows)], classes)  # ... of the chosen class
    other_seed = MimicryAttack(8 / 255, seed=1).target_classes(x, y, 10)
    assert not torch.equal(other_seed, classes)


def test_untargeted_targets_are_the_nearest_other_class_images(teacher, data):
    x, y, ax, ay = data
    attack = MimicryAttack(8 / 255, targeted=False)
    attack.attacker_data = (ax, ay)
    images = _targets(attack, teacher, x, y)
    phi = layer_function(teacher, "features")
    with torch.no_grad():
        d = torch.cdist(phi(x).flatten(1), phi(ax).flatten(1))
    d[y[:, None] == ay[None, :]] = float("inf")
    assert torch.equal(images, ax[d.argmin(1)])


def test_bad_configurations_are_one_line_errors(teacher, data):
    x, y, ax, _ = data
    with pytest.raises(ConfigError, match="valid: dssim, l2, linf"):
        MimicryAttack(0.1, norm="l1")
    with pytest.raises(ConfigError, match="valid: pre_logits"):
        layer_function(teacher, "nope")
    attack = MimicryAttack(8 / 255)
    attack.attacker_data = (ax[:3], torch.zeros(3, dtype=torch.long))  # holds class 0 only
    with pytest.raises(ConfigError, match="no image of class"):
        attack(teacher, x[y != 0], y[y != 0])
    assert MimicryAttack(8 / 255, layer=["stem", "features"]).layer == "features"  # a feature_layers list
