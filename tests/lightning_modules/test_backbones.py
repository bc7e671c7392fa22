"""Every registered backbone builds through timm and follows the classifier interface the suite relies on."""

from __future__ import annotations

import pytest
import timm
import torch

from attacks.errors import ConfigError
from lightning_modules.backbones import OUR_BACKBONES
from lightning_modules.classifier import ImageClassifier, build_classifier

SHAPES = {"small_cnn": (1, 16, 16), "dtn": (3, 32, 32), "resnet18_cifar": (3, 32, 32), "wrn_28_10": (3, 32, 32)}


def test_registry_holds_ours():
    assert set(OUR_BACKBONES) <= set(timm.list_models())
    assert set(SHAPES) == set(OUR_BACKBONES), "add the new backbone's input shape to SHAPES"


@pytest.mark.parametrize("name", OUR_BACKBONES)
def test_backbone_interface(name):
    c, h, w = SHAPES[name]
    net = timm.create_model(name, num_classes=7, in_chans=c).eval()
    x = torch.rand(2, c, h, w)
    feats = net.forward_head(net.forward_features(x), pre_logits=True)
    assert feats.shape == (2, net.num_features)
    assert net(x).shape == (2, 7)
    assert net.get_classifier().out_features == 7
    net.reset_classifier(3)
    assert net(x).shape == (2, 3) and net.num_classes == 3


def test_pretrained_weights_are_refused():
    with pytest.raises(ValueError, match="no pretrained weights"):
        timm.create_model("small_cnn", pretrained=True)


def test_normalization_lives_inside_the_model():
    model = build_classifier("small_cnn", 10, 1, (0.3,), (0.4,)).eval()
    x = torch.rand(4, 1, 16, 16)
    expected = model.backbone((x - 0.3) / 0.4)
    assert torch.allclose(model(x), expected)
    assert model.features(x).shape == (4, model.backbone.num_features)
    assert isinstance(model, ImageClassifier) and model.num_classes == 10


def test_grey_normalization_broadcasts_to_rgb():
    model = build_classifier("resnet18_cifar", 9, 3, (0.5,), (0.25,))
    assert model.mean.flatten().tolist() == [0.5] * 3 and model.std.flatten().tolist() == [0.25] * 3


def test_any_timm_model_works():
    model = build_classifier("resnet10t", 10, 3, (0.5,) * 3, (0.5,) * 3).eval()
    assert model(torch.rand(1, 3, 32, 32)).shape == (1, 10)


def test_unknown_model_is_one_line_naming_ours():
    with pytest.raises(ConfigError) as e:
        build_classifier("no_such_net", 10, 1, (0.5,), (0.5,))
    msg = str(e.value)
    assert "\n" not in msg and "no_such_net" in msg and all(n in msg for n in OUR_BACKBONES)


def test_resnet18_cifar_is_torchvisions_resnet18_with_the_cifar_stem():
    """solo-learn's CIFAR backbone (torchvision's resnet18, 3x3 stride-1 conv1, no max-pool) loads as it is."""
    from benchmark.devtools.checkpoint_layouts import cifar_resnet18

    tv = cifar_resnet18(num_classes=10).eval()
    net = timm.create_model("resnet18_cifar", num_classes=10).eval()
    net.load_state_dict(tv.state_dict())  # strict: the same names and shapes
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(net(x), tv(x), atol=1e-5)
