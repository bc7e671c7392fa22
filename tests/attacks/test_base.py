"""The attack core's base (attacks/base.py) on linear float64 models whose gradients are known
(tests/attacks/linear_models.py): the attack losses and norms, the steps and projections, the constraint check and its
budgets, the call contract (attack mode, no-grad, EOT, BPDA, the loss followed), the labels and config values, the
captured layers' read-out and the patch budget. Every expected value has a closed form computed here with numpy; no
trained model, no data set: the file runs in about a second.

Some tests pin exact values found by mutation testing (`make mutate`, tests/mutation/mutate.py). Each of those pins a
value that a one-token change in the attack code moves (a step size, a sign, a projection radius, a tolerance, a pass
count).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from linear_models import D, Linear, flat, images, two_class

from attacks import FGSM, PGD, AttackConstraintError, attack_mode, check_adversarial
from attacks.base import attack_loss, lp_norm

# ---------------------------------------------------------------------------------------------------------------
# attacks/base.py: losses, norms, steps, projections, the constraint check, the contract
# ---------------------------------------------------------------------------------------------------------------


def test_attack_losses_are_batch_sums_of_their_formulas():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(5, 4, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 1, 2])
    zn = z.numpy()
    log_p = zn - zn.max(1, keepdims=True) - np.log(np.exp(zn - zn.max(1, keepdims=True)).sum(1, keepdims=True))
    assert attack_loss(z, y, "ce").item() == pytest.approx(-log_p[np.arange(5), y.numpy()].sum(), rel=1e-12)
    others = np.where(np.eye(4)[y.numpy()] == 1, -np.inf, zn).max(1)
    assert attack_loss(z, y, "margin").item() == pytest.approx((others - zn[np.arange(5), y.numpy()]).sum())
    target = torch.softmax(torch.randn(5, 4, generator=g, dtype=torch.float64), 1)
    t = target.numpy()
    assert attack_loss(z, target, "kl").item() == pytest.approx((t * (np.log(t) - log_p)).sum(), rel=1e-12)


def test_lp_norms():
    t = torch.tensor([[[[3.0, -4.0]]], [[[-0.5, 0.25]]]], dtype=torch.float64)
    assert lp_norm(t, "linf").tolist() == [4.0, 0.5]
    assert lp_norm(t, "l2").tolist() == pytest.approx([5.0, math.sqrt(0.3125)])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_check_adversarial_tolerances_are_tight(norm):
    x = torch.full((1, 1, 1, 2), 0.5, dtype=torch.float64)
    eps, atol = 0.1, 1e-6
    unit = torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 1, 1, 2)
    edge = eps * (1 + 1e-5) + atol
    check_adversarial(x, x + (edge - 0.5 * atol) * unit, norm, eps)  # within the round-off allowance
    with pytest.raises(AttackConstraintError, match=f"leaves the {norm} ball"):
        check_adversarial(x, x + (edge + atol) * unit, norm, eps)
    box = torch.tensor([0.0, 1.0], dtype=torch.float64).view(1, 1, 1, 2)
    check_adversarial(box, box + torch.tensor([-0.5 * atol, 0.5 * atol]).view(1, 1, 1, 2), norm, eps)
    for outside in ([-2 * atol, 0.0], [0.0, 2 * atol]):
        with pytest.raises(AttackConstraintError, match=r"leaves \[0, 1\]"):
            check_adversarial(box, box + torch.tensor(outside).view(1, 1, 1, 2), norm, eps)
    with pytest.raises(AttackConstraintError, match="shape"):
        check_adversarial(x, x[:, :, :, :1], norm, eps)
    with pytest.raises(AttackConstraintError, match="2 non-finite"):
        check_adversarial(x, torch.full_like(x, math.nan), norm, eps)


def test_steps_and_projections():
    x = torch.full((2, 1, 1, 4), 0.5, dtype=torch.float64)
    grad = torch.tensor([[3.0, -1e-9, 0.0, 4.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64).view(2, 1, 1, 4)
    linf, l2 = PGD(0.2), PGD(0.2, norm="l2")
    assert np.allclose(flat(linf.step(x, grad, 0.1)), [[0.6, 0.4, 0.5, 0.6], [0.5] * 4])
    # L2: along grad / ||grad|| per example; a zero gradient leaves the example where it is (no NaN).
    assert np.allclose(flat(l2.step(x, grad, 0.1)), [[0.56, 0.5, 0.5, 0.58], [0.5] * 4])
    far = x + torch.tensor([[0.3, -0.05, 0.0, 0.6], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64).view(2, 1, 1, 4)
    # L-inf: clip to x +- eps, then to [0, 1].
    assert np.allclose(flat(linf.project(far, x)), [[0.7, 0.45, 0.5, 0.7], [0.5] * 4])
    # L2: shrink to radius eps when outside the ball, untouched inside it.
    delta = np.array([0.3, -0.05, 0.0, 0.6])
    assert flat(l2.project(far, x))[0] == pytest.approx(0.5 + delta * 0.2 / np.linalg.norm(delta))
    inside = x + 0.05
    assert torch.equal(l2.project(inside, x), inside) and torch.equal(linf.project(inside, x), inside)
    edge = torch.tensor([[0.95, 0.05]], dtype=torch.float64).view(1, 1, 1, 2)
    pushed = edge + torch.tensor([0.1, -0.1], dtype=torch.float64).view(1, 1, 1, 2)
    for attack in (linf, l2):
        assert flat(attack.project(pushed, edge)).tolist() == [[1.0, 0.0]], "then clipped to [0, 1]"


def margin_model() -> tuple[Linear, torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """Three classes where the CE gradient and the margin gradient disagree in sign on the first pixel."""
    w = np.array([[0.0, 0.0], [1.0, 1.0], [-3.0, 0.1]])
    b = np.array([2.0, 0.0, 2.4])
    x = torch.full((1, 1, 1, 2), 0.5, dtype=torch.float64)
    z = w @ np.full(2, 0.5) + b
    p = np.exp(z) / np.exp(z).sum()
    ce_grad = w.T @ (p - np.eye(3)[0])
    margin_grad = w[1 + np.argmax(z[1:])] - w[0]
    return Linear(w, b), x, torch.tensor([0]), ce_grad, margin_grad


@pytest.mark.parametrize("cls", [FGSM, PGD])
def test_the_margin_loss_is_followed(cls):
    model, x, y, ce_grad, margin_grad = margin_model()
    assert np.sign(ce_grad[0]) != np.sign(margin_grad[0])
    kwargs = {} if cls is FGSM else {"steps": 1, "step_size": 0.05, "random_start": False}
    ce = cls(0.05, loss="ce", **kwargs)(model, x, y)
    margin = cls(0.05, loss="margin", **kwargs)(model, x, y)
    assert np.allclose(flat(ce), flat(x) + 0.05 * np.sign(ce_grad))
    assert np.allclose(flat(margin), flat(x) + 0.05 * np.sign(margin_grad))


class Cycling(nn.Module):
    """A randomized model with known draws: the k-th forward pass scales the logits by SCALES[k % 3]."""

    SCALES = (1.0, 2.0, -1.5)

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        s = self.SCALES[self.calls % 3]
        self.calls += 1
        return s * self.inner(x)


def test_eot_averages_gradients_and_logits_over_draws():
    x, y = images([0.3, 0.7]), torch.tensor([0, 1])
    attack = FGSM(0.1, eot=3)
    logits, grad = attack.loss_and_grad(Cycling(two_class()), x, y)
    model, grads, outs = Cycling(two_class()), [], []
    for _ in range(3):
        xr = x.clone().requires_grad_(True)
        out = model(xr)
        grads.append(torch.autograd.grad(attack_loss(out, y, "ce"), xr)[0])
        outs.append(out.detach())
    assert torch.allclose(grad, sum(grads) / 3) and torch.allclose(logits, sum(outs) / 3)
    assert (attack.forward_passes, attack.backward_passes) == (6, 6)


class WithBPDA(Linear):
    """A deployed model with a BPDA view: another linear model, whose gradient the attack must follow."""

    def bpda(self):
        view = two_class()
        with torch.no_grad():
            view.weight.neg_()
        return view


def test_bpda_takes_gradients_through_the_view():
    model, x, y = WithBPDA(np.stack([np.zeros(4), D]), [1.5, 0.0]), images([0.5]), torch.tensor([0])
    assert np.allclose(flat(FGSM(0.1, bpda=True)(model, x, y)), 0.5 - 0.1 * np.sign(D))
    assert np.allclose(flat(FGSM(0.1)(model, x, y)), 0.5 + 0.1 * np.sign(D))
    with pytest.raises(AttackConstraintError, match="BPDA needs"):
        FGSM(0.1, bpda=True)(two_class(), x, y)


def test_attack_mode_freezes_and_restores_every_submodule():
    net = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.BatchNorm1d(4))
    net.train()
    net[1].eval()
    net[0].bias.requires_grad_(False)
    with attack_mode(net):
        assert not any(m.training for m in net.modules())
        assert not any(p.requires_grad for p in net.parameters())
    assert [m.training for m in net.modules()] == [True, True, False, True]
    assert [p.requires_grad for p in net.parameters()] == [True, False, True, True]
    with pytest.raises(RuntimeError), attack_mode(net):
        raise RuntimeError("an attack failed")
    assert [m.training for m in net.modules()] == [True, True, False, True]
    assert [p.requires_grad for p in net.parameters()] == [True, False, True, True]


def test_the_call_works_under_no_grad_and_returns_a_detached_copy():
    model, x, y = two_class(), images([0.5, 0.4]), torch.tensor([0, 1])
    expected = FGSM(0.1)(model, x, y)
    with torch.no_grad():
        x_adv = FGSM(0.1)(model, x, y)
    assert torch.equal(x_adv, expected) and not x_adv.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_labels():
    assert PGD("8/255").label == "pgd_linf_8"
    assert FGSM(0.5, norm="l2", eot=2, bpda=True).label == "bpda_eot_fgsm_l2_0.5"
    assert FGSM(0.5, eot=1, bpda=False).label == "fgsm_linf_127.5"


def test_check_adversarial_accepts_the_exact_bounds():
    atol, eps = 1e-6, 0.1
    x = torch.zeros(1, 1, 1, 2, dtype=torch.float64)
    bound = torch.tensor([eps * (1 + 1e-5) + atol, 0.0], dtype=torch.float64).view(1, 1, 1, 2)
    check_adversarial(x, x + bound, "linf", eps)
    box = torch.tensor([0.0, 1.0], dtype=torch.float64).view(1, 1, 1, 2)
    check_adversarial(box, torch.tensor([-atol, 1 + atol], dtype=torch.float64).view(1, 1, 1, 2), "linf", eps)


def test_eps_labels_round_to_their_digits():
    from attacks.base import eps_tag

    assert eps_tag(0.12345 / 255, "linf") == "0.123" and eps_tag(0.123456, "l2") == "0.1235"


def test_config_values_and_their_errors():
    import functools

    from attacks.base import jsonable
    from attacks.errors import ConfigError

    # A factory's config: its own arguments, parsed ("8/255" -> a number), positional ones included.
    partial = jsonable(functools.partial(PGD, "8/255", steps=5))
    assert partial["name"] == "pgd" and partial["eps"] == 8 / 255 and partial["steps"] == 5
    with pytest.raises(ConfigError, match=r"argument value\.a\[1\]=.*valid: numbers, strings, booleans, None, lists"):
        jsonable({"a": [1, object()]})

    class Varargs(FGSM):
        def __init__(self, eps, *more):
            super().__init__(eps)

    with pytest.raises(TypeError, match="need names"):
        Varargs(0.1, 2)


def test_check_adversarial_budgets():
    from attacks.base import DSSIM_ATOL, Attack
    from attacks.errors import ConfigError
    from attacks.ms_ssim import dssim

    x = torch.zeros(1, 1, 1, 2, dtype=torch.float64)
    with pytest.raises(ConfigError, match="^unknown budget 'l3'; valid: dssim, l2, linf, patch$"):
        check_adversarial(x, x, "l3", 1.0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 16, 16, generator=g, dtype=torch.float64)
    x_adv = (x + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    d = float(dssim(x_adv, x).max())
    eps = d - DSSIM_ATOL
    while eps + DSSIM_ATOL < d:  # the budget whose allowance is exactly d: the bound itself passes
        eps = math.nextafter(eps, math.inf)
    assert eps + DSSIM_ATOL == d
    check_adversarial(x, x_adv, "dssim", eps)
    with pytest.raises(AttackConstraintError, match="DSSIM"):
        check_adversarial(x, x_adv, "dssim", math.nextafter(eps, 0.0))
    assert Attack(0.1).arguments["norm"] == "linf"


# ---- captured layers' read-out, the patch budget ------------------------------------------------------------
def test_read_out_applies_the_blocks_function_to_floating_tensors_only():
    from attacks.base import read_out, readout

    f, i = torch.tensor([1.0, -2.0]), torch.tensor([3])
    assert read_out(f) is f, "outside a block: as captured"
    seen = []

    def double(t):
        seen.append(t)
        return 2 * t

    with readout(double):
        assert torch.equal(read_out(f), torch.tensor([2.0, -4.0])) and seen[0] is f
        assert read_out(i) is i and read_out("layer") == "layer", "integer tensors and non-tensors pass as they are"
    assert read_out(f) is f and len(seen) == 1, "the block's function is gone after it"


@pytest.mark.parametrize(
    "area, h, w, side",
    [(0.03, 64, 64, 11), (0.25, 8, 32, 8), (0.25, 32, 8, 8), (0.5, 4, 8, 4), (0.01, 8, 8, 0), (1.0, 5, 5, 5)],
)
def test_patch_side_is_the_floor_of_the_square_root_of_the_area(area, h, w, side):
    from attacks.base import patch_side

    assert patch_side(area, h, w) == side  # 0.25 * 8 * 32 = 64: exactly 8, not 7 by round-off


def test_patch_extent_is_the_side_of_the_smallest_square_holding_every_change():
    from attacks.base import patch_extent

    x = torch.zeros(4, 2, 6, 7)
    x_adv = x.clone()
    x_adv[0, 1, 2:5, 1:3] = 0.5  # rows 2..4, columns 1..2, in the second channel only: 3
    x_adv[1, 0, 0, 0] = x_adv[1, 0, 0, 6] = 1.0  # one row, columns 0 and 6: 7
    x_adv[2, 0, 1, 3] = x_adv[2, 1, 5, 3] = 1.0  # rows 1 and 5 in different channels, one column: 5
    assert patch_extent(x, x_adv).tolist() == [3, 7, 5, 0], "no change: 0"
    assert patch_extent(x, x).tolist() == [0, 0, 0, 0]
    one = x[:1].clone()
    one_adv = one.clone()
    one_adv[0, 0, 5, 6] = 1.0  # the last row and column: a 1-px patch
    assert patch_extent(one, one_adv).tolist() == [1]
    corner = one.clone()
    corner[0, 0, 0, 0] = 1.0  # the first row and column: a 1-px patch too
    assert patch_extent(one, corner).tolist() == [1]


def test_check_adversarial_holds_a_patch_to_its_side():
    x = torch.full((2, 1, 8, 8), 0.5)
    side = 4  # floor(sqrt(0.25 * 64))
    ok = x.clone()
    ok[0, 0, 1 : 1 + side, 2 : 2 + side] = 1.0  # exactly the side: allowed
    ok[1, 0, 7, 7] = 0.0
    check_adversarial(x, ok, "patch", 0.25)
    wide = ok.clone()
    wide[1] = x[1]
    wide[1, 0, 3, 0] = wide[1, 0, 3, side] = 1.0  # columns 0..4 in the second example: 5 px
    with pytest.raises(AttackConstraintError, match=r"^x_adv leaves the patch budget: changes span 5 px > side 4 px$"):
        check_adversarial(x, wide, "patch", 0.25)
    with pytest.raises(AttackConstraintError, match="> side 0 px"):
        check_adversarial(x, ok, "patch", 0.01)
    with pytest.raises(AttackConstraintError, match=r"leaves \[0, 1\]"):
        check_adversarial(x, ok + 1.0, "patch", 1.0)  # the range is checked before the patch


def test_an_attack_is_linf_by_default():
    class Still(FGSM):
        pass

    assert Still(0.1).norm == "linf" and FGSM(0.1).norm == "linf"
