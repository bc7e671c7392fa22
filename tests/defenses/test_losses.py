"""The training losses of TRADES, TLA and Gen-AF stage 1, each against a computation written here from the papers.

Each test fixes the adversarial example (the defense's inner maximization is replaced by a given x'), so the loss
is a known function of the model's outputs, and chooses a model and data where a one-line slip in the loss (a KL
turned around, a hinge reversed, GR's two logit sets swapped) changes the value by far more than the tolerance:
every test also asserts that the wrong formula is far from the right one on its data.

The references are written with numpy in float64 from the formulas (papers.md sections 3.3 and 5.2, and the
TRADES paper, arXiv 1901.08573, eq. 5), independently of the suite's code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from attacks.pgd import PGD
from defenses.gen_af import GenAFDualTrack, genetic_regularization
from defenses.tla import TLA
from defenses.trades import TRADES
from lightning_modules.classifier import ImageClassifier

# ---------------------------------------------------------------------------------------------------------------
# A model whose representation and logits are known: features = W x (flattened), logits = fc(features).
# ---------------------------------------------------------------------------------------------------------------


class LinearBackbone(nn.Module):
    """The part of timm's backbone interface `ImageClassifier` uses, around a linear map and a linear head."""

    def __init__(self, in_features: int, num_features: int, num_classes: int):
        super().__init__()
        self.body = nn.Linear(in_features, num_features, bias=False)
        self.fc = nn.Linear(num_features, num_classes)
        self.num_features, self.num_classes = num_features, num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.flatten(1))

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return f if pre_logits else self.fc(f)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def linear_model(body: torch.Tensor, fc_weight: torch.Tensor, fc_bias: torch.Tensor) -> ImageClassifier:
    """An `ImageClassifier` (identity normalization) with the given weights, in float64."""
    backbone = LinearBackbone(body.shape[1], body.shape[0], fc_weight.shape[0]).double()
    with torch.no_grad():
        backbone.body.weight.copy_(body)
        backbone.fc.weight.copy_(fc_weight)
        backbone.fc.bias.copy_(fc_bias)
    return ImageClassifier(backbone, (0.0,), (1.0,)).double()


class FixedAdversary:
    """Stands in for a defense's training attack (`attack(model, x, y) -> x'`): returns a given x' and records
    what it was called with."""

    def __init__(self, x_adv: torch.Tensor):
        self.x_adv, self.calls = x_adv, []

    def __call__(self, model, x, y):
        self.calls.append((model, x.clone(), y.clone()))
        return self.x_adv.clone()


def capture_logs(module) -> dict:
    """What the module logs from `training_loss` ({name: value}), without a trainer."""
    logged = {}
    module.log = lambda name, value, **kwargs: logged.__setitem__(name, float(value))
    module.log_dict = lambda values, **kwargs: logged.update({k: float(v) for k, v in values.items()})
    return logged


def outputs(model: nn.Module, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(features, logits) of the model as float64 numpy arrays."""
    with torch.no_grad():
        return model.features(x).numpy(), model(x).numpy()


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def cross_entropy(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-example -log softmax(z)_y."""
    return -log_softmax(z)[np.arange(len(y)), y]


def kl_batchmean(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """KL(softmax p || softmax q) summed over classes, averaged over the batch."""
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return float((np.exp(lp) * (lp - lq)).sum() / len(lp))


# ---------------------------------------------------------------------------------------------------------------
# TRADES: CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x')), batch mean.
# ---------------------------------------------------------------------------------------------------------------


def peaked_model_and_data(seed: int = 0):
    """A linear model (no bias) that is confident on x and nearly uniform on x' = x / 10: KL(p || q) and
    KL(q || p) then differ several-fold (q puts mass where p has almost none)."""
    g = torch.Generator().manual_seed(seed)
    n, d, c = 8, 6, 5
    x = torch.rand(n, 1, 1, d, generator=g, dtype=torch.float64)
    x_adv = x / 10
    model = linear_model(
        torch.eye(d, dtype=torch.float64), 4 * torch.randn(c, d, generator=g, dtype=torch.float64), torch.zeros(c)
    )
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:2] = (y[:2] + 1) % c  # two examples the model gets wrong, so the CE is not negligible either
    return model, x, x_adv, y


@pytest.mark.parametrize("beta", [1.0, 6.0])
def test_trades_loss_is_ce_plus_beta_kl_of_clean_to_adversarial(beta, monkeypatch):
    model, x, x_adv, y = peaked_model_and_data()
    d = TRADES(model, teacher_state=model.state_dict(), beta=beta, train_attack={"eps": 0.5})
    d.model.eval()
    # The inner maximization is the public `adversary(x)`; a fixed x' makes the loss a known function.
    assert callable(getattr(d, "adversary", None)), "TRADES no longer has adversary(x): adapt this test"
    seen = []
    monkeypatch.setattr(d, "adversary", lambda xx: seen.append(xx.clone()) or x_adv.clone())
    logged = capture_logs(d)
    loss, logits = d.training_loss(x, y)
    assert len(seen) == 1 and torch.equal(seen[0], x), "x' is crafted from the clean batch"

    _, z = outputs(d.model, x)
    _, z_adv = outputs(d.model, x_adv)
    ce = cross_entropy(z, y.numpy()).mean()
    forward_kl, reverse_kl = kl_batchmean(z, z_adv), kl_batchmean(z_adv, z)
    expected = ce + beta * forward_kl
    # The data must tell the formulas apart: the reversed KL, a sum or a per-element mean would all be far off.
    assert abs(reverse_kl - forward_kl) > 0.5 * forward_kl and forward_kl > 0.2 * ce
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert logged == {"train/kl": pytest.approx(forward_kl, rel=1e-9)}
    assert np.allclose(logits.detach().numpy(), z), "the returned logits are the clean ones"
    loss.backward()  # the loss trains the model through both the clean and the adversarial branch
    assert d.model.backbone.fc.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------------------
# TLA: CE(f(x'_a), y) + l1 * sum over positives of mean_i [D(a, p) - D(a, n) + m]_+ + l2 * sum_f mean(f^2).
# ---------------------------------------------------------------------------------------------------------------


def cos_dist(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """D(u, v) = 1 - |cos(u, v)| row-wise."""
    return 1 - np.abs((u * v).sum(1)) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))


def tla_reference(feat_adv, logits_adv, feat_clean, y, margin, l1, l2, positive_clean, positive_other, reverse=False):
    """TLA's loss for a batch that is its own dictionary, with two examples per class (the other positive of an
    anchor is then the other example of its class). `reverse` computes the hinge turned around."""
    n = len(y)
    unit = lambda f: f / np.linalg.norm(f, axis=1, keepdims=True)  # noqa: E731
    sim = np.abs(unit(feat_adv) @ unit(feat_clean).T)
    sim[y[:, None] == y[None, :]] = -1.0  # negatives come from another class
    neg = feat_clean[sim.argmax(1)]
    other = np.array([next(j for j in range(n) if j != i and y[j] == y[i]) for i in range(n)])
    positives = ([feat_clean] if positive_clean else []) + ([feat_clean[other]] if positive_other else [])
    triplet = 0.0
    for pos in positives:
        gap = cos_dist(feat_adv, pos) - cos_dist(feat_adv, neg)
        triplet += np.maximum(-gap + margin if reverse else gap + margin, 0).mean()
    norm = sum((f**2).mean() for f in [feat_adv, neg, *positives])
    return cross_entropy(logits_adv, y).mean() + l1 * triplet + l2 * norm


def tla_case(seed: int):
    """Six examples, two per class, 4-d features; anchors pushed toward another class so the hinge is active."""
    g = torch.Generator().manual_seed(seed)
    n, d, c = 6, 4, 3
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    centres = torch.eye(c, d, dtype=torch.float64) + 0.1
    x = (centres[y] + 0.15 * torch.rand(n, d, generator=g, dtype=torch.float64)).view(n, 1, 1, d)
    x_adv = (0.25 * centres[y] + 0.75 * centres[(y + 1) % c]).view(n, 1, 1, d)
    x_adv = x_adv + 0.05 * torch.rand(x_adv.shape, generator=g, dtype=torch.float64)
    body = torch.eye(d, dtype=torch.float64) + 0.2 * torch.rand(d, d, generator=g, dtype=torch.float64)
    model = linear_model(body, torch.randn(c, d, generator=g, dtype=torch.float64), torch.zeros(c).double())
    return model, x, x_adv, y


@pytest.mark.parametrize(
    ("positive_clean", "positive_other"), [(True, False), (False, True), (True, True)], ids=["clean", "other", "both"]
)
@pytest.mark.parametrize("seed", [0, 1])
def test_tla_loss_matches_the_triplet_formula(positive_clean, positive_other, seed):
    model, x, x_adv, y = tla_case(seed)
    margin, l1, l2 = 0.3, 2.0, 0.5
    t = TLA(
        model,
        teacher_state=model.state_dict(),
        margin=margin,
        lambda_triplet=l1,
        lambda_norm=l2,
        dictionary_size=len(y),
        positive_clean=positive_clean,
        positive_other=positive_other,
    )
    t.model.eval()
    t.attack = FixedAdversary(x_adv)  # the PGD anchor, fixed
    logged = capture_logs(t)
    loss, logits = t.training_loss(x, y)
    ((model_seen, x_seen, y_seen),) = t.attack.calls
    assert model_seen is t.model and torch.equal(x_seen, x) and torch.equal(y_seen, y)

    feat_adv, logits_adv = outputs(t.model, x_adv)
    feat_clean, _ = outputs(t.model, x)
    args = (feat_adv, logits_adv, feat_clean, y.numpy(), margin, l1, l2, positive_clean, positive_other)
    expected = tla_reference(*args)
    reversed_hinge = tla_reference(*args, reverse=True)
    without_triplet = tla_reference(*args[:5], 0.0, l2, positive_clean, positive_other)
    assert expected - without_triplet > 0.05, "the hinge must be active on this data"
    assert abs(reversed_hinge - expected) > 0.05, "the data must tell D(a,p) - D(a,n) from D(a,n) - D(a,p)"
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    ce = cross_entropy(logits_adv, y.numpy()).mean()
    triplet = (expected - without_triplet) / l1
    assert logged == {"train/ce_adv": pytest.approx(ce), "train/triplet": pytest.approx(triplet)}
    assert np.allclose(logits.detach().numpy(), logits_adv), "TLA's CE and accuracy are on the anchors"


# ---------------------------------------------------------------------------------------------------------------
# Gen-AF stage 1: CE(f(x'), y) + gr_weight * GR(clean logits, adversarial logits, y, per-example clean CE).
# ---------------------------------------------------------------------------------------------------------------

EPS = 1e-7


def gr_reference(clean: np.ndarray, adv: np.ndarray, y: np.ndarray, w: np.ndarray) -> float:
    """GR, vectorized from the seven steps of papers.md 3.3 (clean logits: the "model" side, Q; adversarial: P)."""
    n = len(y)
    weight = np.tanh((w[:, None] + w[None, :]) / 32)
    delta = 2 * np.where(y[:, None] != y[None, :], 1.0, -1.0) * weight

    def distance(z):
        z = z / (np.linalg.norm(z, axis=1, keepdims=True) + EPS)
        dist = 1 - z @ z.T
        dist[np.diag_indices(n)] = 1e5
        dist = dist - dist.min(axis=1, keepdims=True)
        dist[np.diag_indices(n)] = 0
        return dist

    s_a = 1 - np.clip(distance(clean), EPS, 2 - EPS)
    s_b = 1 - np.clip((1 - weight) * distance(adv) + delta, EPS, 2 - EPS)
    q, p = (s_a + 1) / 2, (s_b + 1) / 2
    q, p = q / q.sum(1, keepdims=True), p / p.sum(1, keepdims=True)
    kl = lambda a, b: (a * (np.log(a + EPS) - np.log(b + EPS))).sum()  # noqa: E731
    return float(kl(p, q) + kl(1 - p, 1 - q))


def gr_case(seed: int):
    g = torch.Generator().manual_seed(seed)
    clean = 3 * torch.randn(8, 5, generator=g, dtype=torch.float64)
    adv = clean + 2 * torch.randn(8, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    return clean, adv, y


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gr_matches_the_formula_and_is_not_symmetric(seed):
    clean, adv, y = gr_case(seed)
    w = torch.nn.functional.cross_entropy(clean, y, reduction="none")
    expected = gr_reference(clean.numpy(), adv.numpy(), y.numpy(), w.numpy())
    assert genetic_regularization(clean, adv, y, w).item() == pytest.approx(expected, rel=1e-9)
    swapped = gr_reference(adv.numpy(), clean.numpy(), y.numpy(), w.numpy())
    assert abs(swapped - expected) > 0.05 * expected, "the two logit sets play different roles"


def test_gen_af_stage1_loss_uses_clean_logits_as_the_model_side():
    g = torch.Generator().manual_seed(3)
    n, d, c = 8, 6, 5
    x = torch.rand(n, 1, 1, d, generator=g, dtype=torch.float64)
    x_adv = (x + 0.4 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    y = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    model = linear_model(
        torch.eye(d, dtype=torch.float64), 4 * torch.randn(c, d, generator=g, dtype=torch.float64), torch.zeros(c)
    )
    gr_weight = 20.0
    d_ = GenAFDualTrack(
        model, teacher_state=model.state_dict(), head="linear", gr_weight=gr_weight, train_attack={"eps": 0.5}
    )
    d_.model.eval()
    d_.attack = FixedAdversary(x_adv)
    logged = capture_logs(d_)
    loss, logits = d_.training_loss(x, y)
    ((model_seen, x_seen, y_seen),) = d_.attack.calls
    assert model_seen is d_.model and torch.equal(x_seen, x) and torch.equal(y_seen, y)

    _, z = outputs(d_.model, x)
    _, z_adv = outputs(d_.model, x_adv)
    w = cross_entropy(z, y.numpy())
    ce_adv = cross_entropy(z_adv, y.numpy()).mean()
    expected = ce_adv + gr_weight * gr_reference(z, z_adv, y.numpy(), w)
    swapped = ce_adv + gr_weight * gr_reference(z_adv, z, y.numpy(), w)
    assert abs(swapped - expected) > 0.05 * expected, "on this data the order of the logit sets matters"
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    gr = gr_reference(z, z_adv, y.numpy(), w)
    assert logged == {"train/gr": pytest.approx(gr, rel=1e-9), "train/ce_adv": pytest.approx(ce_adv, rel=1e-9)}
    assert np.allclose(logits.detach().numpy(), z_adv), "stage 1's CE and accuracy are on the adversarial examples"


def test_gr_clamps_both_sides_below_two():
    """Parallel and antipodal rows put a distance at 2 - 4e-9, inside the clamp [1e-7, 2 - 1e-7]: the clamp counts."""
    a, b = torch.tensor([60.0, 80.0, 0.0]), torch.tensor([0.0, 30.0, 40.0])
    clean = torch.stack([a, a, -a, b, -b]).double()
    adv = torch.stack([a, 2 * a, -a, -b, b]).double()
    y = torch.tensor([0, 0, 1, 2, 3])
    w = torch.full((5,), 0.1, dtype=torch.float64)  # small weights: the adversarial side stays near 2 too
    expected = gr_reference(clean.numpy(), adv.numpy(), y.numpy(), w.numpy())
    assert genetic_regularization(clean, adv, y, w).item() == pytest.approx(expected, rel=1e-12, abs=0)


# ---------------------------------------------------------------------------------------------------------------
# The defenses' training attacks and TLA's inputs, dictionary and mining
# ---------------------------------------------------------------------------------------------------------------


def test_paper_defaults_and_given_budgets_reach_the_training_attack():
    model, _, _, _ = peaked_model_and_data()
    state = model.state_dict()
    trades, tla = TRADES(model, teacher_state=state), TLA(model, teacher_state=state)
    assert trades.beta == 6.0 and (trades.attack.eps, trades.attack.steps) == (8 / 255, 10)
    assert trades.attack.step_size == pytest.approx(8 / 255 / 4), "TRADES's inner step: eps / 4"
    three = TRADES(model, teacher_state=state, train_attack={"eps": 0.1, "steps": 3})
    assert three.attack.step_size == pytest.approx(0.025), "eps / 4 at any steps (PGD's default: 2.5 * eps / steps)"
    validation = PGD(8 / 255, steps=10, early_stop=False)
    assert trades.val_attack.config() == validation.config(), "validation: PGD at the budget, its default step"
    assert (tla.margin, tla.lambda_triplet, tla.lambda_norm, tla.dictionary_size) == (0.05, 0.5, 1e-4, 100)
    assert tla.positive_clean and tla.positive_other and (tla.attack.eps, tla.attack.steps) == (8 / 255, 10)
    for cls in (TRADES, TLA):
        d = cls(model, teacher_state=state, train_attack={"eps": 0.1, "steps": 3, "step_size": 0.02})
        assert (d.attack.eps, d.attack.steps, d.attack.step_size) == (0.1, 3, 0.02), cls.__name__
    assert TLA(model, teacher_state=state, dictionary_size=2).dictionary_size == 2
    for kwargs, message in (
        ({"negative": "far"}, "unknown negative 'far'"),
        ({"dictionary_size": 1}, "dictionary_size must be >= 2, got 1"),
        (
            {"positive_clean": False, "positive_other": False},
            "^at least one of positive_clean and positive_other must be on$",
        ),
    ):
        with pytest.raises(ValueError, match=message):
            TLA(model, teacher_state=state, **kwargs)


def test_trades_starts_its_inner_maximization_next_to_x():
    model, x, _, _ = peaked_model_and_data()
    d = TRADES(model, teacher_state=model.state_dict(), train_attack={"eps": 0.3, "steps": 1})
    seen = []
    d.model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    torch.manual_seed(0)
    d.adversary(x)
    start = (seen[1] - x).abs()  # seen[0] is the clean forward pass that fixes the target distribution
    assert 0 < start.max() < 0.005, "x + 0.001 * N(0, I), not a random point of the ball"


def test_tla_noises_the_clean_inputs_within_the_budget():
    model, x, x_adv, y = tla_case(0)
    x = x.clamp(0, 1)
    x[0], x[1] = 0.0, 1.0  # the noisy inputs must be clipped to [0, 1]
    t = TLA(model, teacher_state=model.state_dict(), dictionary_size=6, clean_noise=0.1)
    t.attack = FixedAdversary(x_adv)
    torch.manual_seed(0)
    t.training_loss(x, y)
    noise = t.attack.calls[0][1] - x
    assert noise.abs().max() <= 0.1 + 1e-12 and noise.min() < -0.05 and noise.max() > 0.05
    assert t.attack.calls[0][1].min() >= 0 and t.attack.calls[0][1].max() <= 1


def test_tla_dictionary_is_a_queue_of_recent_clean_batches(monkeypatch):
    model, x, x_adv, y = tla_case(0)
    t = TLA(model, teacher_state=model.state_dict(), dictionary_size=8)
    t.attack = FixedAdversary(x_adv)
    dictionaries, real_mine = [], t.mine
    monkeypatch.setattr(t, "mine", lambda a, yy, dx, dy: dictionaries.append((dx, dy)) or real_mine(a, yy, dx, dy))
    t.training_loss(x, y)
    t.training_loss(x.flip(0), y.flip(0))
    assert torch.equal(dictionaries[0][0], x) and torch.equal(dictionaries[1][1], torch.cat([y.flip(0), y[:2]]))
    other = torch.rand(6, 1, 2, 2, dtype=torch.float64)  # another image shape: the queue starts afresh
    t.attack = FixedAdversary(other)
    t.model.backbone.body = nn.Linear(4, 4, bias=False).double()
    t.training_loss(other, y)
    assert torch.equal(dictionaries[2][0], other)


@pytest.mark.parametrize("positive_other", [False, True])
def test_tla_without_negatives_is_ce_only(positive_other):
    model, x, x_adv, _ = tla_case(0)
    y = torch.zeros(6, dtype=torch.long)  # one class: no negative anywhere, so no triplet term
    t = TLA(model, teacher_state=model.state_dict(), margin=0.5, lambda_norm=0.0, positive_other=positive_other)
    t.attack = FixedAdversary(x_adv)
    loss, _ = t.training_loss(x, y)
    assert loss.item() == pytest.approx(cross_entropy(outputs(t.model, x_adv)[1], y.numpy()).mean(), rel=1e-9)


def test_tla_mining_edge_cases():
    model, _, _, _ = tla_case(0)
    t = TLA(model, teacher_state=model.state_dict(), negative="random")
    g = torch.Generator().manual_seed(0)
    dict_x, dict_y = torch.rand(40, 1, 1, 4, generator=g, dtype=torch.float64), torch.arange(40) % 4
    anchors = t.model.features(dict_x[:20]).detach()
    negative, _ = t.mine(anchors, dict_y[:20], dict_x, dict_y)
    assert len(set(negative[dict_y[:20] == 0].tolist())) > 1, "each anchor draws its own random negative"
    y, only = torch.tensor([0, 1]), torch.tensor([0, 0, 0])  # anchor 0: only its class; anchor 1: none of it
    for mode in ("random", "hard"):
        t.negative = mode
        negative, positive = t.mine(anchors[:2], y, dict_x[:3], only)
        assert negative[0] == -1 and negative[1] >= 0 and positive[1] == -1 and positive[0] in (1, 2)
