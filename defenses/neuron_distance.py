"""Neuron-distance patching (Wang et al., USENIX Security 2018; code `bolunwang/translearn`,
`pubfig65_patch_neuron_distance.py`): fine-tune the student so that its layer-K representation moves away from the
public teacher's, which the mimicry attack copies, while it keeps its accuracy.

The authors' objective, every layer of the student trainable:

    L = CE(S(x), y) + weight * max(cap - d(x), 0)^2,   d(x) = sqrt( sum_j w_j (S_K(x)_j - T_K(x)_j)^2 )
    w = n * l2normalize( sum_k |W_next[j, k]| )

with T_K the frozen original teacher's layer K, n the number of layer-K units and W_next the weights of the student's
next dense layer (the live weights: the term trains them too). `cap` rises by `cap_step` every epoch from cap_step up
to its final value (the authors: 200 per epoch up to 5000, weight 1e-6, SGD lr 1e-3 without momentum, batch 32, 50
epochs, the last model kept).

Ours (config options): `cap_unit=teacher_norm` measures d, cap and cap_step in units of the mean weighted norm of
the teacher's layer-K representation on the training split (computed once, cached as a preparation step), for models
whose representation scale is not VGG-Face's (the penalty is then weight * max(cap - d / norm, 0)^2);
`weighting=uniform` (w = 1) where the next layer is not a dense layer on the flattened layer K (e.g. a ResNet
stage). The kept checkpoint is the best on `val/patched_acc`: the validation accuracy at the epochs where the cap
has reached its final value (0 before), so the unpatched start cannot win.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from attacks.errors import ConfigError, choose
from attacks.mimicry import layer_function, resolve_layer
from datamodules.base import chunks
from lightning_modules.modules import StudentModule

CAP_UNITS = ("absolute", "teacher_norm")
WEIGHTINGS = ("next_linear", "uniform")


def next_linear(model: nn.Module, units: int) -> nn.Linear:
    """The dense layer that reads the flattened layer K: the first `nn.Linear` with `units` inputs."""
    for module in model.modules():
        if isinstance(module, nn.Linear) and module.in_features == units:
            return module
    raise ConfigError(f"no dense layer reads the {units} layer-K units; use weighting=uniform")


class NeuronDistancePatch(StudentModule):
    """Wang et al.'s patching of a trained student (`init_from`); see the module docstring.

    Args:
        model: the classifier; its weights come from `init_from` (a trained student, e.g. `freeze`).
        teacher_state: the public teacher's weights (T_K, frozen).
        layer: layer K (a module name, or a list whose last entry is used: the model's `feature_layers`).
        cap, cap_step: the final distance threshold and its rise per epoch (the authors' 5000 and 200).
        cap_unit: absolute (the authors') or teacher_norm (ours; see the module docstring).
        weight: the penalty's weight (the authors' 1e-6).
        weighting: next_linear (the authors') or uniform.
        **kwargs: see `StudentModule` (mode finetune: every layer trains, as the authors' code).
    """

    def __init__(
        self,
        model,
        teacher_state: Mapping[str, torch.Tensor] | None = None,
        layer: str | Sequence[str] = "features",
        cap: float = 5000.0,
        cap_step: float = 200.0,
        cap_unit: str = "absolute",
        weight: float = 1e-6,
        weighting: str = "next_linear",
        **kwargs,
    ):
        choose("cap_unit", cap_unit, CAP_UNITS)
        choose("weighting", weighting, WEIGHTINGS)
        if cap <= 0 or cap_step <= 0 or weight < 0:
            raise ConfigError("need cap > 0, cap_step > 0 and weight >= 0")
        if teacher_state is None:
            raise ConfigError("neuron-distance patching needs the teacher (its layer K is the reference)")
        kwargs["mode"] = "finetune"
        super().__init__(model, teacher_state=teacher_state, **kwargs)
        self.layer = resolve_layer(layer)
        self.cap, self.cap_step, self.cap_unit = float(cap), float(cap_step), cap_unit
        self.weight, self.weighting = float(weight), weighting
        # The frozen original teacher (this module's model holds the teacher's weights until init_from loads the
        # student's over them, after construction).
        self.teacher = copy.deepcopy(self.model).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.register_buffer("scale", torch.ones(()))  # cap unit: 1, or the teacher's mean weighted norm
        layer_function(self.model, self.layer)  # validates the layer name
        self.selection_metric = "val/patched_acc"  # read by the fit loop (`KeepBest`); see the module docstring

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def configure_optimizers(self):
        for p in self.teacher.parameters():  # `StudentModule` trains what requires grad: never the teacher
            p.requires_grad_(False)
        return super().configure_optimizers()

    def unit_weights(self, units: int) -> torch.Tensor:
        """w_j = n * l2normalize(sum_k |W_next[j, k]|) from the student's live next dense layer (or ones)."""
        if self.weighting == "uniform":
            return torch.ones(units, device=self.device)
        w = next_linear(self.model, units).weight.abs().sum(0)  # torch's (out, in) is Keras's kernel transposed
        return units * F.normalize(w, dim=0)

    def distance(self, x: torch.Tensor, model: nn.Module | None = None) -> torch.Tensor:
        """Per example, the weighted layer-K distance between the student (or `model`) and the teacher."""
        student = layer_function(model or self.model, self.layer)(x).flatten(1)
        with torch.no_grad():
            teacher = layer_function(self.teacher, self.layer)(x).flatten(1)
        return ((student - teacher).pow(2) * self.unit_weights(student.shape[1])).sum(1).clamp_min(1e-12).sqrt()

    def current_cap(self, epoch: int) -> float:
        """The threshold of an epoch (0-based), in the cap's unit: cap_step, 2 cap_step, ... up to cap."""
        return min(self.cap, self.cap_step * (epoch + 1))

    def training_loss(self, x, y):
        logits = self.model(x)
        d = self.distance(x) / self.scale  # in the cap's unit
        cap = self.current_cap(self.current_epoch)
        penalty = F.relu(cap - d).pow(2).mean()
        self.log_dict({"train/neuron_distance": d.detach().mean(), "train/cap": cap})
        return F.cross_entropy(logits, y) + self.weight * penalty, logits

    def validation_step(self, batch, batch_idx):
        super().validation_step(batch, batch_idx)
        x, y = batch
        reached = self.current_cap(self.current_epoch) >= self.cap
        acc = (self.model(x).argmax(1) == y).float().mean() if reached else torch.zeros(())
        self.log("val/patched_acc", acc, batch_size=len(y))
        self.log("val/neuron_distance", (self.distance(x) / self.scale).mean(), batch_size=len(y))

    # ---- the cap's unit ------------------------------------------------------------------------------
    def prepare_spec(self) -> dict | None:
        if self.cap_unit == "absolute":
            return None
        return {"cap_unit": self.cap_unit, "layer": self.layer, "weighting": self.weighting}

    @torch.no_grad()
    def prepare(self, datamodule) -> tuple[dict, dict[str, torch.Tensor]]:
        """The teacher's mean weighted layer-K norm on the training split (the cap's unit for teacher_norm)."""
        x, _ = datamodule.lazy_tensors("target", "train")  # read a batch at a time
        phi = layer_function(self.teacher, self.layer)
        norms = []
        for xb in chunks(x, 256):
            t = phi(xb).flatten(1)
            norms.append((t.pow(2) * self.unit_weights(t.shape[1])).sum(1).sqrt())
        scale = torch.cat(norms).mean()
        return {"scale": float(scale)}, {"scale": scale}

    def apply_preparation(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        self.scale = tensors["scale"].to(self.scale.device)
