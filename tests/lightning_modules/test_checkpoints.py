"""Public checkpoints in each project's real key layout (built with torchvision / timm / lightly, saved the way that
project saves them, no network) load into the suite's classifier: the format is detected, the backbone tensors
land where they belong, a head of other classes is replaced by a fresh one, the rest is reported in one line."""

from __future__ import annotations

import argparse

import pytest
import torch

from attacks.errors import ConfigError
from benchmark.devtools import checkpoint_layouts as layouts
from lightning_modules.checkpoints import load_into
from lightning_modules.classifier import build_classifier

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def classifier(backbone="resnet18_cifar", num_classes=10, **kwargs):
    torch.manual_seed(0)
    return build_classifier(backbone, num_classes, 3, MEAN, STD, **kwargs)


def file_state(path, drop_prefix="", key="state_dict"):
    obj = torch.load(path, weights_only=True)
    state = obj.get(key, obj) if isinstance(obj, dict) else obj
    return {k[len(drop_prefix) :]: v for k, v in state.items() if k.startswith(drop_prefix)}


def assert_backbone_from(model, state, head="fc."):
    own = model.backbone.state_dict()
    body = [k for k in own if not k.startswith(head)]
    for k in body:
        assert torch.equal(own[k], state[k]), k


def test_solo_learn_cifar_checkpoint_loads_without_remapping(tmp_path):
    path = layouts.solo_learn_file(tmp_path / "byol.ckpt", num_classes=10)
    model = classifier()
    report = load_into(model, str(path))
    state = file_state(path)
    assert report.format == "solo-learn" and report.matched == report.backbone_total == 120
    assert_backbone_from(model, file_state(path, "backbone."))
    assert torch.equal(model.backbone.fc.weight, state["classifier.weight"])  # the online probe: same classes
    assert report.head.startswith("loaded")
    # projector, predictor and momentum copies are reported, not loaded; the model computes what the file's does
    assert any(k.startswith("momentum_backbone.") for k in report.unmatched)
    assert len(report.unmatched) == len(state) - 120 - 2
    net = layouts.cifar_resnet18()
    net.fc = torch.nn.Identity()
    net.load_state_dict(file_state(path, "backbone."))
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(model.eval().features(x), net.eval()((x - 0.5) / 0.25), atol=1e-5)


def test_solo_learn_probe_of_other_classes_is_replaced_by_a_fresh_head(tmp_path):
    path = layouts.solo_learn_file(tmp_path / "byol100.ckpt", num_classes=100)
    model = classifier(num_classes=10)
    fresh = model.backbone.fc.weight.clone()
    report = load_into(model, str(path))
    assert torch.equal(model.backbone.fc.weight, fresh) and model.backbone.fc.out_features == 10
    assert report.head == "fresh for the data's 10 classes (the file's has 100 outputs)"
    assert "classifier.weight" in report.unmatched


def test_solo_learn_hydra_config_needs_unpickling_and_stops_in_one_line(tmp_path):
    path = layouts.solo_learn_file(tmp_path / "hydra.ckpt", omegaconf=True)
    with pytest.raises(ConfigError, match=r"not a weights-only state dict: it pickles omegaconf\.") as e:
        load_into(classifier(), str(path))
    assert "\n" not in str(e.value) and "weights_only=False" in str(e.value)


def test_torchvision_imagenet_file_into_timm_resnet18_with_a_fresh_head(tmp_path):
    path = layouts.torchvision_file(tmp_path / "resnet18.pth")
    model = classifier("resnet18")
    report = load_into(model, str(path))
    assert report.format == "timm/torchvision" and report.matched == report.backbone_total
    assert_backbone_from(model, torch.load(path, weights_only=True))
    assert report.head.endswith("(the file's has 1000 outputs)") and report.unmatched == ["fc.weight", "fc.bias"]


def test_timm_vit_with_its_head_and_encoder_only(tmp_path):
    kwargs = {"img_size": 32, "patch_size": 8}
    with_head = layouts.timm_file(tmp_path / "vit.pth", "vit_tiny_patch16_224", num_classes=10, **kwargs)
    model = classifier("vit_tiny_patch16_224", **kwargs)
    report = load_into(model, str(with_head))
    assert report.head.startswith("loaded") and report.unmatched == [] and report.matched == report.backbone_total
    assert torch.equal(model.backbone.head.weight, torch.load(with_head, weights_only=True)["head.weight"])
    encoder = layouts.timm_file(tmp_path / "enc.pth", "vit_tiny_patch16_224", num_classes=0, **kwargs)
    model = classifier("vit_tiny_patch16_224", **kwargs)
    report = load_into(model, str(encoder))
    assert report.head.endswith("(none in the file)") and report.matched == report.backbone_total
    assert_backbone_from(model, torch.load(encoder, weights_only=True), head="head.")


def test_deit_style_model_wrapper_and_ddp_prefix(tmp_path):
    path = layouts.timm_file(tmp_path / "deit.pth", "resnet18", wrapper="model")
    report = load_into(classifier("resnet18"), str(path))
    assert report.matched == report.backbone_total
    state = torch.load(path, weights_only=True)["model"]
    torch.save({"module": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ddp.pth")
    model = classifier("resnet18")
    assert load_into(model, str(tmp_path / "ddp.pth"), fmt="timm").matched == report.backbone_total  # no prefix:
    assert_backbone_from(model, state)


def test_moco_official_file_is_found_under_its_query_encoder(tmp_path):
    path = layouts.moco_file(tmp_path / "moco.pth.tar")
    model = classifier("resnet18")
    report = load_into(model, str(path))
    assert report.format == "prefix:encoder_q." and report.matched == report.backbone_total
    assert_backbone_from(model, file_state(path, "module.encoder_q."))
    assert "encoder_q.fc.0.weight" in report.unmatched and "another module: encoder_q.fc.0.weight" in report.head


def test_lightly_sequential_backbone_is_mapped_by_child_index(tmp_path):
    path = layouts.lightly_file(tmp_path / "moco.ckpt")
    model = classifier("resnet18")
    report = load_into(model, str(path))
    assert report.format == "lightly" and report.matched == report.backbone_total
    state = file_state(path)
    assert torch.equal(model.backbone.layer3[1].conv2.weight, state["backbone.6.1.conv2.weight"])
    assert torch.equal(model.backbone.conv1.weight, state["backbone.0.weight"])
    assert any(k.startswith("backbone_momentum.") for k in report.unmatched)


def test_a_named_format_is_used_as_named(tmp_path):
    path = layouts.lightly_file(tmp_path / "simclr.ckpt", momentum=False)
    assert load_into(classifier("resnet18"), str(path), fmt="lightly").format == "lightly"
    with pytest.raises(ConfigError, match=r"read as solo-learn: 120 of 120 backbone tensors missing") as e:
        load_into(classifier("resnet18"), str(path), fmt="solo-learn")
    assert "\n" not in str(e.value)
    with pytest.raises(
        ConfigError, match="unknown checkpoint format 'moco'; valid: auto, lightly, prefix:<key prefix>, solo-learn"
    ):
        load_into(classifier("resnet18"), str(path), fmt="moco")


def test_a_backbone_that_does_not_fit_stops_in_one_line(tmp_path):
    path = layouts.torchvision_file(tmp_path / "imagenet_stem.pth")  # a 7x7 stem for the CIFAR ResNet
    with pytest.raises(ConfigError, match=r"\(ResNet18Cifar\).*1 shape mismatches \(e.g. backbone.conv1.weight: "):
        load_into(classifier(), str(path))
    torch.save({k.replace("layer4.1.", "layer4.2."): v for k, v in torch.load(path).items()}, tmp_path / "r.pth")
    with pytest.raises(ConfigError, match=r"backbone tensors missing.*backbone tensors the model lacks") as e:
        load_into(classifier("resnet18"), str(tmp_path / "r.pth"))
    assert "\n" not in str(e.value)
    deeper = torch.load(path)  # every ResNet-18 tensor and more blocks: a deeper ResNet's file
    deeper.update({k.replace("layer4.1.", "layer4.2."): v for k, v in deeper.items() if k.startswith("layer4.1.")})
    torch.save(deeper, tmp_path / "deeper.pth")
    with pytest.raises(ConfigError, match=r"read as timm/torchvision: 12 backbone tensors the model lacks \(e.g. "):
        load_into(classifier("resnet18"), str(tmp_path / "deeper.pth"))


def test_training_script_files_with_args_need_unpickling(tmp_path):
    state = classifier("resnet18").backbone.state_dict()
    torch.save({"state_dict": state, "args": argparse.Namespace(model="resnet18")}, tmp_path / "timm_train.pth.tar")
    with pytest.raises(ConfigError, match=r"it pickles argparse\.Namespace") as e:
        load_into(classifier("resnet18"), str(tmp_path / "timm_train.pth.tar"))
    assert "\n" not in str(e.value)
    torch.save({"epoch": 3}, tmp_path / "empty.pth")
    with pytest.raises(ConfigError, match="holds no state dict of tensors"):
        load_into(classifier("resnet18"), str(tmp_path / "empty.pth"))


def test_report_line_names_counts_and_the_first_unmatched_keys(tmp_path):
    path = layouts.lightly_file(tmp_path / "moco.ckpt")
    line = load_into(classifier("resnet18"), str(path)).line()
    assert "\n" not in line and "loaded as lightly: 120 of 120 backbone tensors" in line
    assert "keys of the file not loaded (e.g. projection_head." in line
