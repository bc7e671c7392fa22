"""Gen-AF: the genetic regularizer against an independent computation, the dual-track optimizers, the probe."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from defenses.gen_af import GenAF, GenAFDualTrack, NonLinearClassifier, genetic_regularization
from lightning_modules.classifier import build_classifier

EPS = 1e-7


def reference_gr(clean: np.ndarray, adv: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """The seven steps of papers.md 3.3, element by element in float64, written independently of the suite."""
    n = len(y)

    def unit(z):
        out = np.zeros_like(z)
        for i in range(n):
            norm = math.sqrt(sum(v * v for v in z[i]))
            out[i] = z[i] / (norm + EPS)
        return out

    def dist(z):
        d = np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                d[i, j] = 1e5 if i == j else 1 - float(np.dot(z[i], z[j]))
        for i in range(n):
            m = min(d[i])
            for j in range(n):
                d[i, j] = 0.0 if i == j else d[i, j] - m
        return d

    W = np.array([[math.tanh((w[i] + w[j]) / 32) for j in range(n)] for i in range(n)])
    delta = np.array([[2 * (1 if y[i] != y[j] else -1) * W[i, j] for j in range(n)] for i in range(n)])
    da = np.clip(dist(unit(clean)), EPS, 2 - EPS)
    db = np.clip((1 - W) * dist(unit(adv)) + delta, EPS, 2 - EPS)
    q, p = (1 - da + 1) / 2, (1 - db + 1) / 2
    q = q / q.sum(1, keepdims=True)
    p = p / p.sum(1, keepdims=True)
    total = 0.0
    for i in range(n):
        for j in range(n):
            total += p[i, j] * (math.log(p[i, j] + EPS) - math.log(q[i, j] + EPS))
            total += (1 - p[i, j]) * (math.log(1 - p[i, j] + EPS) - math.log(1 - q[i, j] + EPS))
    return total


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gr_matches_an_independent_computation(seed):
    g = torch.Generator().manual_seed(seed)
    clean, adv = (
        torch.randn(6, 4, generator=g, dtype=torch.float64),
        torch.randn(6, 4, generator=g, dtype=torch.float64),
    )
    y = torch.tensor([0, 1, 0, 2, 1, 3])
    w = F.cross_entropy(clean, y, reduction="none")
    ours = genetic_regularization(clean, adv, y, w).item()
    assert ours == pytest.approx(reference_gr(clean.numpy(), adv.numpy(), y.numpy(), w.numpy()), rel=1e-9)


def test_gr_handles_a_zero_row_and_gives_gradients_to_both_sides_and_the_weights():
    clean = torch.randn(5, 3, requires_grad=True)
    adv = torch.randn(5, 3)
    adv[2] = 0.0  # a zero logit row: normalized to zero, not NaN
    adv.requires_grad_(True)
    y = torch.tensor([0, 0, 1, 1, 2])
    w = F.cross_entropy(clean, y, reduction="none")  # not detached, as in the code
    gr = genetic_regularization(clean, adv, y, w)
    assert torch.isfinite(gr) and gr.item() >= -1e-6
    gr.backward()
    assert clean.grad.abs().sum() > 0 and adv.grad.abs().sum() > 0
    assert reference_gr(clean.detach().numpy(), adv.detach().numpy(), y.numpy(), w.detach().numpy()) == pytest.approx(
        gr.item(), rel=1e-5
    )


def _model():
    return build_classifier("small_cnn", 10, 1, (0.3,), (0.4,))


def test_dual_track_has_an_mlp_head_and_two_disjoint_optimizers():
    m = _model()
    d = GenAFDualTrack(m, teacher_state=_model().state_dict(), train_attack={"eps": 0.1, "steps": 2})
    assert isinstance(d.model.head, NonLinearClassifier) and not d.automatic_optimization
    (opt_e, opt_h), _ = d.configure_optimizers()
    enc = {id(p) for g in opt_e.param_groups for p in g["params"]}
    head = {id(p) for g in opt_h.param_groups for p in g["params"]}
    assert enc.isdisjoint(head) and head == {id(p) for p in d.model.head.parameters()}
    assert enc | head == {id(p) for p in d.model.parameters()}
    assert opt_e.param_groups[0]["lr"] == 1e-4 and opt_h.param_groups[0]["lr"] == 5e-3
    x, y = torch.rand(8, 1, 16, 16), torch.randint(0, 10, (8,))
    loss, logits = d.training_loss(x, y)
    assert torch.isfinite(loss) and logits.shape == (8, 10)


def test_probe_unfreezes_the_least_sensitive_layers(digits):
    stage2 = GenAF(_model(), teacher_state=_model().state_dict(), probe_epochs=2, probe_steps=2)
    meta, tensors = stage2.prepare(digits)
    layers = stage2.probed_layers()
    assert set(meta["sensitivity"]) == set(layers) and len(layers) == 6  # 2 conv, 1 fc, 3 in the MLP head
    ranked = sorted(meta["sensitivity"], key=meta["sensitivity"].get)
    assert meta["chosen_layers"] == ranked[:1], "20 % of 6 layers rounds down to 1 (at least one)"
    stage2.apply_preparation(meta, tensors)
    trainable = {n for n, p in stage2.model.named_parameters() if p.requires_grad}
    chosen = meta["chosen_layers"][0]
    assert trainable == {f"{chosen}.weight", f"{chosen}.bias"} or trainable == {f"{chosen}.weight"}


def test_probe_respects_the_frobenius_bound(digits, monkeypatch):
    """After every epoch ||W - W0||_F <= bound * ||W0||_F, so the recorded loss increase is a bounded worst case."""
    seen = []
    real = GenAF._adv_loss

    def spy(self, model, loader):
        for layer in self.probed_layers():
            seen.append((layer, model.get_submodule(layer).weight.detach().clone()))
        return real(self, model, loader)

    stage2 = GenAF(_model(), teacher_state=_model().state_dict(), probe_epochs=2, probe_steps=2, probe_lr=50.0)
    start = {n: stage2.model.get_submodule(n).weight.detach().clone() for n in stage2.probed_layers()}
    monkeypatch.setattr(GenAF, "_adv_loss", spy)
    stage2.prepare(digits)
    moved = [(layer, w) for layer, w in seen if not torch.equal(w, start[layer])]
    assert moved, "the probe never changed a weight"
    for layer, w in moved:
        assert (w - start[layer]).norm() <= 0.1 * start[layer].norm() * (1 + 1e-5)
