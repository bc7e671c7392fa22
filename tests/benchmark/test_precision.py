"""Attacks under autocast (`eval.precision`): robust accuracy within noise of fp32, fp32 logits and input
gradients, fp16's gradient scaling, the precision in the cell's cache key, the eval batch-size search."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import benchmark.runner.stages.attack as stage
from attacks.pgd import PGD
from benchmark.runner.batch_size import find_batch_size
from benchmark.runner.checks import tolerance
from benchmark.runner.stages.attack import precision, predict, run_attack

CPU = torch.device("cpu")
#: A budget at which PGD breaks about half of the session model's examples: where flags are most sensitive.
EPS = 16 / 255


def _robust(model, x, y, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example robust flags of PGD-Linf EPS crafted in `name` (scored in fp32), and x_adv."""
    torch.manual_seed(0)
    x_adv, _ = run_attack(PGD(EPS, steps=10, early_stop=False), model, x, y, 128, CPU, precision_name=name)
    x_adv = x_adv[torch.arange(len(x_adv))]  # read back from its file
    return (predict(model, x, 128, CPU) == y) & (predict(model, x_adv, 128, CPU) == y), x_adv


def test_bf16_robust_accuracy_is_within_noise_of_fp32(model, digits_source_test, one_thread):
    x, y = digits_source_test
    fp32, adv32 = _robust(model, x, y, "fp32")
    bf16, adv16 = _robust(model, x, y, "bf16")
    assert not torch.equal(adv32, adv16), "bf16 changed nothing: the attack did not run under autocast"
    n = len(y)
    clean = (predict(model, x, 128, CPU) == y).float().mean().item()
    assert fp32.float().mean().item() < clean - 0.2, "the attack must do real work for the comparison to mean much"
    # Noise of a paired comparison: the examples on which the two runs disagree, either way (McNemar).
    discordant = int((fp32 != bf16).sum())
    bound = max(tolerance(n), 3 * math.sqrt(max(discordant, 1)) / n)
    diff = abs(fp32.float().mean().item() - bf16.float().mean().item())
    assert diff <= bound, f"bf16 robust accuracy differs by {diff:.3f} > noise {bound:.3f} ({discordant} discordant)"


def test_under_bf16_the_network_runs_in_bf16_and_the_attack_sees_fp32(model, digits_source_test):
    x = digits_source_test[0][:8].clone().requires_grad_(True)
    seen = []
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    handle = conv.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    try:
        with precision(model, CPU, "bf16"):
            logits = model(x)
            (grad,) = torch.autograd.grad(logits.logsumexp(1).sum(), x)
    finally:
        handle.remove()
    assert seen == [torch.bfloat16], "the convolution did not run in bf16"
    assert logits.dtype == torch.float32 and grad.dtype == torch.float32
    assert model(x).dtype == torch.float32, "the hooks outlived the context"


def _confident() -> nn.Module:
    """Logits (20, 1, 1) on x = 1: class 0 has p ~ 1 - 1e-8, so the loss gradient of the others is ~ 6e-9."""
    m = nn.Linear(4, 3, bias=False)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([[20.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 1.0, 0]]))
    return m


def test_fp16_scales_the_gradient_so_small_ones_keep_their_sign():
    """fp16 underflows below 6e-8: without the scale, the confident example's input gradient is all zeros (a
    sign attack would not move), with it, the fp32 gradient's nonzero entries survive with their sign."""
    m, x, y = _confident(), torch.ones(2, 4, requires_grad=True), torch.zeros(2, dtype=torch.long)
    (exact,) = torch.autograd.grad(F.cross_entropy(m(x), y, reduction="sum"), x)
    with precision(m, CPU, "fp16"):
        (scaled,) = torch.autograd.grad(F.cross_entropy(m(x), y, reduction="sum"), x)
    assert exact.abs().max() > 0 and torch.equal(scaled.sign(), exact.sign())
    assert torch.allclose(scaled, exact, rtol=0.01)


def test_fp16_without_the_scale_loses_the_gradient(monkeypatch):
    """The reason for the scale (and the check that the test above tests it)."""
    monkeypatch.setattr(stage, "FP16_GRAD_SCALE", 1.0)
    m, x, y = _confident(), torch.ones(2, 4, requires_grad=True), torch.zeros(2, dtype=torch.long)
    with precision(m, CPU, "fp16"):
        (grad,) = torch.autograd.grad(F.cross_entropy(m(x), y, reduction="sum"), x)
    assert grad.abs().max() == 0


def test_an_unknown_precision_is_one_line():
    from attacks.errors import ConfigError

    with (
        pytest.raises(ConfigError, match="unknown eval.precision 'fp8'; valid: bf16, fp16, fp32"),
        precision(nn.Linear(2, 2), CPU, "fp8"),
    ):
        pass


def test_the_precision_enters_the_cells_cache_key(tmp_path):
    from benchmark.runner.config import compose
    from benchmark.runner.planner import make_plan

    base = ["logger=none", "defense=finetune", "attack=[pgd_linf,transfer_pgd_linf]", f"cache_dir={tmp_path}"]
    keys = {}
    for name in ("fp32", "bf16"):
        plan = make_plan(compose([*base, f"eval.precision={name}"]))[0]
        keys[name] = {s.id: (s.kind, s.key) for s in plan.stages}
    for sid, (kind, key) in keys["fp32"].items():
        attacked = kind in ("craft", "cell")
        assert (keys["bf16"][sid][1] != key) == attacked, f"{sid}: training keys stay, attack keys change"


# ---- eval.batch_size=auto: a doubling search -------------------------------------------------------------
def test_the_batch_size_search_doubles_until_it_does_not_fit_and_keeps_headroom():
    tried = []

    def fits(size: int) -> bool:
        tried.append(size)
        return size <= 300

    assert find_batch_size(fits, 32, 10_000) == 128, "half of 256, the largest size that fitted"
    assert tried == [32, 64, 128, 256, 512]


def test_the_batch_size_search_stops_at_the_number_of_examples():
    assert find_batch_size(lambda size: True, 32, 100) == 100
    assert find_batch_size(lambda size: False, 32, 100) == 1


# ---- every entry point an attack reads the model through ------------------------------------------------
class _QuietEncoder(nn.Module):
    """An encoder whose features are small (x 1e-4): the fp32 input gradient of an MSE on them is ~1e-9, below
    fp16's smallest number, so only the scaled backward pass keeps it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.enc, self.head = nn.Linear(8, 8), nn.Linear(8, 2)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return 1e-4 * self.enc(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _ssp_moves(model, x) -> bool:
    """Whether SSP (an encoder attack: it reads `model.features`) crafted in fp16 leaves its random start."""
    from attacks.universal import SSP

    attack = SSP(0.1, steps=3, step_size=0.01)
    torch.manual_seed(0)
    start = attack.project(torch.randn_like(x), x)  # SSP's own start, drawn from the same seed
    torch.manual_seed(0)
    x_adv, _ = run_attack(attack, model, x, torch.zeros(len(x), dtype=torch.long), 64, CPU, precision_name="fp16")
    return not torch.equal(x_adv[torch.arange(len(x))], start)


def test_an_encoder_attack_in_fp16_gets_the_scaled_gradient_of_the_features():
    from attacks.universal import encoder_of

    m, x = _QuietEncoder(), torch.rand(4, 1, 2, 4)
    clean = m.features(x).detach()
    xa = (x + 0.06).requires_grad_(True)
    (exact,) = torch.autograd.grad(F.mse_loss(m.features(xa), clean, reduction="sum"), xa)
    with precision(m, CPU, "fp16"):
        (scaled,) = torch.autograd.grad(F.mse_loss(encoder_of(m)(xa), clean, reduction="sum"), xa)
        assert encoder_of(m)(x).dtype == torch.float32
    assert exact.abs().max() < 6e-8 and torch.equal(scaled.sign(), exact.sign())
    assert "features" not in vars(m), "the wrapper outlived the context"
    assert _ssp_moves(m, x)


def test_without_wrapping_features_the_encoder_attack_silently_gets_no_gradient(monkeypatch):
    """What the wrapper prevents (and the check that the test above tests it): `forward` alone is wrapped."""
    monkeypatch.setattr(stage, "ENTRY_POINTS", ())
    m, x = _QuietEncoder(), torch.rand(4, 1, 2, 4)
    assert not _ssp_moves(m, x)


@pytest.mark.parametrize("read", [True, False])
def test_a_captured_layer_is_read_in_fp32_with_the_scale(read, monkeypatch):
    """Attacks that read an intermediate layer (mimicry's layer K, L4A) capture it with a hook inside the model's
    forward pass: the hook's value is read like an entry point's output (without that: no gradient at all)."""
    from contextlib import nullcontext

    from attacks.mimicry import layer_function

    if not read:
        monkeypatch.setattr(stage, "readout", lambda fn: nullcontext())

    m, x = _QuietEncoder(), torch.rand(4, 1, 2, 4)
    m.enc.weight.data.mul_(1e-4)  # the layer read is the small one
    xa = x.clone().requires_grad_(True)
    (exact,) = torch.autograd.grad(layer_function(m, "enc")(xa).pow(2).sum() * 1e-4, xa)
    with precision(m, CPU, "fp16"):
        out = layer_function(m, "enc")(xa)
        (scaled,) = torch.autograd.grad(out.pow(2).sum() * 1e-4, xa)
    assert exact.abs().max() < 6e-8
    if not read:
        assert scaled.abs().max() == 0
        return
    nonzero = scaled != 0
    assert out.dtype == torch.float32 and nonzero.float().mean() > 0.8
    assert torch.equal(scaled.sign()[nonzero], exact.sign()[nonzero])
