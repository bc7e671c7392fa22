"""TLA's mining and TRADES's inner maximization (their losses against independent formulas: test_losses.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from defenses.tla import TLA, cos_distance
from defenses.trades import TRADES
from lightning_modules.classifier import build_classifier


def _model():
    return build_classifier("small_cnn", 10, 1, (0.3,), (0.4,))


def test_cos_distance_ignores_the_sign():
    u = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    v = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])
    assert cos_distance(u, v).tolist() == pytest.approx([0.0, 0.0, 1.0], abs=1e-6)


def _tla(**kwargs):
    t = TLA(_model(), teacher_state=_model().state_dict(), train_attack={"eps": 0.1, "steps": 2}, **kwargs)
    t.model.features = lambda x: x.flatten(1)  # a known representation: the pixels themselves
    return t


def test_hard_negative_is_the_nearest_example_of_another_class():
    t = _tla(dictionary_size=8)
    g = torch.Generator().manual_seed(0)
    dict_x = torch.randn(8, 1, 2, 2, generator=g)
    dict_y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    y = dict_y[:3]
    anchors = dict_x[:3].flatten(1) + 0.01 * torch.randn(3, 4, generator=g)
    negative, positive = t.mine(anchors, y, dict_x, dict_y)
    flat = F.normalize(dict_x.flatten(1), dim=1)
    for i in range(3):
        sims = (F.normalize(anchors[i], dim=0) @ flat.T).abs()
        others = [j for j in range(8) if dict_y[j] != y[i]]
        assert negative[i].item() == max(others, key=lambda j: sims[j].item())
        assert dict_y[positive[i]] == y[i] and positive[i] != i, "the other positive: same class, not itself"


def test_random_negatives_are_of_another_class():
    t = _tla(negative="random")
    dict_x, dict_y = torch.randn(20, 1, 2, 2), torch.arange(20) % 4
    negative, _ = t.mine(dict_x[:5].flatten(1), dict_y[:5], dict_x, dict_y)
    assert (dict_y[negative] != dict_y[:5]).all()


def test_trades_adversary_stays_in_the_ball_and_raises_the_kl():
    d = TRADES(_model(), teacher_state=_model().state_dict(), train_attack={"eps": 0.1, "steps": 5})
    d.model.eval()
    x = torch.rand(16, 1, 16, 16)
    x_adv = d.adversary(x)
    assert (x_adv - x).abs().max() <= 0.1 + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        p = F.softmax(d.model(x), 1)
        kl = lambda z: F.kl_div(F.log_softmax(d.model(z), 1), p, reduction="batchmean").item()  # noqa: E731
        assert kl(x_adv) > kl((x + 0.001 * torch.randn_like(x)).clamp(0, 1))
    assert all(p.grad is None for p in d.parameters())
