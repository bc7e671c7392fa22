"""The self-supervised teachers: their losses go down on a tiny run, labels never reach the encoder, the views,
and the momentum copies follow a common initialization."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F

from attacks.errors import ConfigError
from lightning_modules.classifier import build_classifier
from lightning_modules.ssl import BYOL, MoCoV2, SimCLR

#: Digits settings: 16 px crops of 50-100 %, no flips (as benchmark/configs/experiment/digits_ssl.yaml).
TRANSFORM = {"min_scale": 0.5, "hf_prob": 0.0, "cj_strength": 0.5, "gaussian_blur": 0.0}
METHODS = {
    "simclr": (SimCLR, {"hidden_dim": 128, "output_dim": 64}),
    "byol": (BYOL, {"hidden_dim": 128, "output_dim": 64}),
    "mocov2": (MoCoV2, {"hidden_dim": 128, "output_dim": 64, "memory_bank_size": 256, "batch_norm": True}),
}


def make(method: str, seed: int = 0, **extra):
    torch.manual_seed(seed)
    cls, kwargs = METHODS[method]
    model = build_classifier("small_cnn", 10, 1, (0.3,), (0.4,))
    return cls(model, transform=TRANSFORM, lr=0.06, **{**kwargs, **extra})


@torch.no_grad()
def held_out_loss(module, v1: torch.Tensor, v2: torch.Tensor) -> float:
    """The method's loss on fixed views of held-out images, with batch statistics (train mode, no update of the
    weights): eval mode would read batch-norm running statistics, which change in training even when no weight
    learns. MoCo's own loss depends on what its queue holds (random keys at first, easier negatives than real
    ones), so its InfoNCE is taken with the other held-out images' keys as the negatives."""
    module.train()
    if isinstance(module, MoCoV2):
        query = F.normalize(module.projection(module.model.features(v1)), dim=1)
        key = F.normalize(module.key_projection(module.key_model.features(v2)), dim=1)
        logits = query @ key.T / module.criterion.temperature
        return float(F.cross_entropy(logits, torch.arange(len(v1))))
    return float(module.ssl_loss(v1, v2))


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_the_ssl_loss_decreases_on_a_tiny_run(method, digits):
    x, y = digits.tensors("source", "train", 256)
    held_out, _ = digits.tensors("source", "val", 64)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=True)
    L.seed_everything(0, verbose=False)
    module = make(method)
    v1, v2 = module.views(held_out)
    before = held_out_loss(module, v1, v2)
    trainer = L.Trainer(
        max_epochs=6,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, loader)
    after = held_out_loss(module, v1, v2)
    assert after < before - 0.05 * abs(before), f"{method}: held-out SSL loss {before:.3f} -> {after:.3f}"


@pytest.mark.parametrize("method", sorted(METHODS))
def test_labels_reach_only_the_probe_head(method, digits):
    """The online linear probe learns from labels on detached features: the encoder gets no gradient from them."""
    x, y = digits.tensors("source", "train", 32)
    module = make(method)
    module.ssl_loss = lambda x1, x2: torch.zeros((), requires_grad=True)  # keep only the probe's cross-entropy
    module.log = lambda *a, **k: None
    loss, _ = module.training_loss(x, y)
    loss.backward()
    head = {n for n, _ in module.model.named_parameters() if n.startswith("backbone.classifier.")}
    for n, p in module.model.named_parameters():
        if n in head:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None or p.grad.abs().sum() == 0, f"label gradient reached the encoder at {n}"


def test_views_are_two_independent_augmentations_in_range(digits):
    x, _ = digits.tensors("source", "train", 16)
    module = make("simclr")
    v1, v2 = module.views(x)
    assert v1.shape == v2.shape == x.shape
    assert v1.min() >= 0 and v1.max() <= 1 and v2.min() >= 0 and v2.max() <= 1
    assert not torch.allclose(v1, v2) and not torch.allclose(v1, x)


def test_the_model_normalizes_so_the_transform_must_not():
    with pytest.raises(ConfigError, match="normalize"):
        SimCLR(build_classifier("small_cnn", 10, 1, (0.3,), (0.4,)), transform={"normalize": None})


def test_a_bad_transform_argument_is_one_line(digits):
    x, _ = digits.tensors("source", "train", 4)
    module = SimCLR(build_classifier("small_cnn", 10, 1, (0.3,), (0.4,)), transform={"min_scal": 0.5})
    with pytest.raises(ConfigError, match="min_scal"):
        module.views(x)


@pytest.mark.parametrize("method", ["byol", "mocov2"])
def test_momentum_copies_start_from_a_common_initialization(method):
    common = make(method, seed=1)
    module = make(method, seed=2)
    state = {k: v for k, v in common.state_dict().items() if k.startswith("model.")}
    module.load_init_state(state)
    for online, target in module.momentum_pairs():
        for (n, a), (_, b) in zip(online.state_dict().items(), target.state_dict().items()):
            assert torch.equal(a, b), n
    assert torch.equal(module.model.backbone.features[0].weight, common.model.backbone.features[0].weight)


def test_students_get_the_encoder_and_probe_not_the_ssl_heads():
    module = make("byol")
    keys = [k for k in module.state_dict() if k.startswith("model.")]
    assert keys and all(not k.startswith(("model.projection", "target")) for k in keys)
    assert any(k.startswith("projection.") for k in module.state_dict())
    assert any(k.startswith("target_model.") for k in module.state_dict())
