"""The distilled differentiator ensemble with a reject option (Wu et al., arXiv 1908.11230, "Defending Against
Misclassification Attacks in Transfer Learning"; IEEE TDSC 2023), against the mimicry attack on the teacher's layer K.

What is confirmed (abstracts v1 and v4): a differentiator is the student modified by activation-based network
pruning and retrained in a fine-tuned manner, so that the teacher's features the attack copies no longer decide;
an ensemble of differentiators covers non-targeted attacks; at inference the student's label narrows the candidate
differentiators and a small fixed number of them (5) validate or reject the input; the claim is "over 90 % of
adversarial inputs" stopped "with an accuracy loss of less than 10 %".

What could NOT be found (the paper body was not readable here; `../shared/threats.md` 2.2) and is therefore OUR
reading (threats.md 2.4), every knob a config value:

- one differentiator per class c. The units of layer K (the output of the student's frozen `trunk_layers`, the same
  K the mimicry attack targets) are ranked by their mean activation on the clean training images of class c, and
  the top `prune_ratio` (`criterion=most_active`; `least_active` is Fine-Pruning's order) are masked to zero; units
  are channels of a feature map (`units=channel`) or single neurons (`neuron`);
- "distilled": the layers after K start from the student's and are retrained on the student's training split with
  CE + `distill_weight` * KL(student || differentiator) at `distill_temperature`; the layers up to K are the
  student's, frozen and shared, so one trunk pass serves the whole ensemble;
- selection: the student predicts y_hat; the `k` differentiators of {y_hat} and the k - 1 classes the student
  confuses most with y_hat on the validation split (mean softmax mass between the two classes, both ways) are asked;
- decision (`rule`): `unanimous` (all k predict y_hat), `majority` (more than half do), or `mean_prob` (their mean
  probability of y_hat is at least `tau`).

The deployed model (`DifferentiatorPipeline`) returns C + 1 logits: the student's C, then the reject decision as an
extra logit z_R = z_y_hat - m, where m is the margin of the decision (the k-th, or the majority's, smallest margin
z_y_hat - max_{j != y_hat} z_j of the asked differentiators; the mean probability minus tau). It rejects exactly
when the rule rejects, and m is differentiable, so an attack can aim at the decision itself
(`attacks.reject.RejectAwarePGD`). The runner counts a rejected adversarial input as defended and a rejected
clean input as an error.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from attacks.errors import ConfigError, choose
from datamodules.base import chunks
from lightning_modules.modules import StudentModule

RULES = ("unanimous", "majority", "mean_prob")
CRITERIA = ("most_active", "least_active")
UNITS = ("channel", "neuron")


class _Injected(nn.Module):
    """Stands in for a differentiator's first trunk layer: returns the (masked) layer-K activation it is given."""

    def __init__(self):
        super().__init__()
        self.value: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.value is None:
            raise RuntimeError("a differentiator runs only inside the pipeline, which injects its layer-K input")
        return self.value


def post_k_copy(classifier: nn.Module, trunk: Sequence[str]) -> nn.Module:
    """A copy of `classifier` without its trunk: the first trunk layer returns an injected activation, the others
    pass it on. Assumes the backbone's `forward_features` applies the trunk layers first, in order (checked by
    `DifferentiatorStudent.prepare` against the student's own logits)."""
    head = copy.deepcopy(classifier)
    for i, name in enumerate(trunk):
        setattr(head.backbone, name, _Injected() if i == 0 else nn.Identity())
    for p in head.parameters():
        p.requires_grad_(True)
    return head


def unit_mask_shape(activation: torch.Tensor, units: str) -> tuple[int, ...]:
    """The shape of one mask over layer K's units: channels of a feature map, or every neuron."""
    if units == "channel" and activation.ndim == 4:
        return (activation.shape[1], 1, 1)
    return tuple(activation.shape[1:])


class DifferentiatorPipeline(nn.Module):
    """Student + differentiators with a reject option: [0, 1] images in, C + 1 logits out (the last: reject)."""

    def __init__(self, student, heads, trunk, masks, selection, rule: str, tau: float):
        super().__init__()
        self.student, self.heads, self.trunk = student, heads, list(trunk)
        self.masks, self.selection, self.rule, self.tau = masks, selection, rule, tau
        self.reject_label = int(student.num_classes)
        self.num_classes = self.reject_label + 1

    def layer_k(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The student's logits and its layer-K activation."""
        captured: list[torch.Tensor] = []
        module = self.student.backbone.get_submodule(self.trunk[-1])
        handle = module.register_forward_hook(lambda _m, _i, out: captured.append(out))
        try:
            logits = self.student(x)
        finally:
            handle.remove()
        return logits, captured[-1]

    def _head(self, c: int, x: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
        """Differentiator c's logits on the layer-K activation of x, its pruned units masked."""
        inject = self.heads[c].backbone.get_submodule(self.trunk[0])
        inject.value = activation * self.masks[c].to(activation.dtype)
        try:
            return self.heads[c](x)
        finally:
            inject.value = None

    def differentiator_logits(self, x: torch.Tensor, activation: torch.Tensor) -> torch.Tensor:
        """(D, n, C): every differentiator on every example (training)."""
        return torch.stack([self._head(c, x, activation) for c in range(len(self.heads))])

    def asked_logits(self, x: torch.Tensor, activation: torch.Tensor, asked: torch.Tensor) -> torch.Tensor:
        """(n, k, C): each example through the k differentiators it asks only (inference); a head asked twice by
        one example runs once for it."""
        out = activation.new_zeros(*asked.shape, self.reject_label)
        for c in asked.unique().tolist():
            hit = asked == c
            rows = hit.any(1).nonzero().squeeze(1)
            r, slots = hit[rows].nonzero(as_tuple=True)
            out = out.index_put((rows[r], slots), self._head(c, x[rows], activation[rows])[r].to(out.dtype))
        return out

    def head_margins(self, d: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """(n, r): the margins of the asked differentiators (their (n, k, C) logits `d`) that must all be > 0 for
        the rule to accept `label`: unanimous, all k margins z_label - max_{j != label} z_j; majority, the largest
        k // 2 + 1 of them; mean_prob, their mean probability of `label` minus tau."""
        n, k = d.shape[:2]
        own_index = label[:, None, None].expand(n, k, 1)
        if self.rule == "mean_prob":
            return F.softmax(d, dim=2).gather(2, own_index).squeeze(2).mean(1, keepdim=True) - self.tau
        own = d.gather(2, own_index).squeeze(2)
        others = d.masked_fill(F.one_hot(label, d.shape[2]).bool()[:, None, :], float("-inf")).amax(2)
        need = k if self.rule == "unanimous" else k // 2 + 1
        return (own - others).topk(need, dim=1).values

    def decision_margin(self, student_logits: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """Per example, > 0 when the asked differentiators (their (n, k, C) logits `d`) accept the student's label
        (see the module docstring)."""
        return self.head_margins(d, student_logits.argmax(1))[:, -1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, activation = self.layer_k(x)
        asked = self.selection[z.argmax(1)]  # (n, k): the student's label picks the differentiators
        m = self.decision_margin(z, self.asked_logits(x, activation, asked))
        z_reject = z.gather(1, z.argmax(1, keepdim=True)).squeeze(1) - m
        return torch.cat([z, z_reject[:, None]], dim=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.student.features(x)

    def acceptance_margins(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pipeline's logits at x (as `forward`) and, per example, the margins that must all be > 0 for it to
        answer `target` and accept it: the student's margin for the target, then `head_margins` of the k
        differentiators that the target would ask (`selection[target]`), not those the current label asks. What
        the selection-aware adaptive attack ascends (`attacks.reject.RejectAwarePGD`, `targets`)."""
        z, activation = self.layer_k(x)
        y_hat, k = z.argmax(1), self.selection.shape[1]
        # Each head once per example, for both selections: the current label's (the decision) and the target's.
        d = self.asked_logits(x, activation, torch.cat([self.selection[y_hat], self.selection[target]], dim=1))
        m = self.decision_margin(z, d[:, :k])
        logits = torch.cat([z, (z.gather(1, y_hat[:, None]).squeeze(1) - m)[:, None]], dim=1)
        z_t = z.gather(1, target[:, None])
        student = z_t - z.scatter(1, target[:, None], float("-inf")).amax(1, keepdim=True)
        return logits, torch.cat([student, self.head_margins(d[:, k:], target)], dim=1)

    def bpda(self) -> nn.Module:
        """The attack view (BPDA, Athalye et al. 2018): the same logits, and the gradient of a differentiable
        stand-in for the accept decision: class j scores z_j plus the logits for j of the k differentiators j would
        ask (ours), so ascending the loss of the true class moves the student and the differentiators that would be
        asked to one other class together; the reject logit passes no gradient."""
        return _Combined(self)


class _Combined(nn.Module):
    def __init__(self, pipeline: DifferentiatorPipeline):
        super().__init__()
        self.pipeline = pipeline

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.pipeline
        z, activation = p.layer_k(x)
        d = p.differentiator_logits(x, activation).permute(1, 2, 0)  # (n, C, D)
        n, c = z.shape
        stand_in = z + d.gather(2, p.selection[None].expand(n, c, p.selection.shape[1])).sum(2)
        with torch.no_grad():
            exact = p(x)
        grad_only = torch.cat([stand_in - stand_in.detach(), torch.zeros_like(z[:, :1])], dim=1)
        return exact + grad_only


class DifferentiatorStudent(StudentModule):
    """Trains the differentiators of a trained student (`init_from`); the student itself stays frozen.

    Args:
        model: the classifier; its weights come from `init_from` (a trained student, e.g. `freeze`).
        trunk_layers: the backbone's top-level layers up to layer K (default in the configs: the model's
            `feature_layers`, the teacher layers a `freeze` student copies), shared and frozen.
        prune_ratio: the fraction of layer-K units masked per differentiator (ours: 0.3).
        criterion: most_active (ours) or least_active (Fine-Pruning's order).
        units: channel or neuron.
        k: differentiators asked per input (the paper's 5).
        rule: unanimous, majority or mean_prob; tau: mean_prob's threshold.
        distill_weight, distill_temperature: the KL(student || differentiator) term (ours: 1 and 1).
        **kwargs: see `StudentModule` (mode is finetune: the student's weights come from init_from).
    """

    def __init__(
        self,
        model,
        trunk_layers: Sequence[str] = ("features",),
        prune_ratio: float = 0.3,
        criterion: str = "most_active",
        units: str = "channel",
        k: int = 5,
        rule: str = "unanimous",
        tau: float = 0.5,
        distill_weight: float = 1.0,
        distill_temperature: float = 1.0,
        **kwargs,
    ):
        choose("criterion", criterion, CRITERIA)
        choose("units", units, UNITS)
        choose("rule", rule, RULES)
        if not 0 <= prune_ratio < 1 or int(k) != k or k < 1 or distill_weight < 0 or distill_temperature <= 0:
            raise ConfigError("need 0 <= prune_ratio < 1, an integer k >= 1, distill_weight >= 0, temperature > 0")
        kwargs["mode"] = "finetune"
        super().__init__(model, **kwargs)
        trunk = [trunk_layers] if isinstance(trunk_layers, str) else list(trunk_layers)
        children = dict(self.model.backbone.named_children())
        for name in trunk:
            if name not in children:
                raise ConfigError(
                    f"trunk layer '{name}' is no top-level layer of the backbone; valid: {', '.join(children)}"
                )
        self.trunk = trunk
        self.prune_ratio, self.criterion, self.units = float(prune_ratio), criterion, units
        self.k, self.rule, self.tau = min(int(k), self.num_classes), rule, float(tau)
        self.distill_weight, self.distill_temperature = float(distill_weight), float(distill_temperature)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.heads = nn.ModuleList(post_k_copy(self.model, trunk) for _ in range(self.num_classes))
        # Filled by `prepare` (cached); resized when a trained state is loaded (`load_state_dict`).
        self.register_buffer("masks", torch.ones(self.num_classes, 0))
        self.register_buffer("selection", torch.zeros(self.num_classes, 0, dtype=torch.long))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        for name in ("masks", "selection"):
            if name in state_dict:
                setattr(self, name, torch.empty_like(state_dict[name]))
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def deployed_model(self) -> DifferentiatorPipeline:
        return DifferentiatorPipeline(
            self.model, self.heads, self.trunk, self.masks, self.selection, self.rule, self.tau
        )

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # the student is frozen, batch-norm statistics included
        return self

    # ---- preparation: pruning masks and the selection table ------------------------------------------
    def prepare_spec(self) -> dict:
        return {
            "trunk": self.trunk,
            "prune_ratio": self.prune_ratio,
            "criterion": self.criterion,
            "units": self.units,
            "k": self.k,
        }

    @torch.no_grad()
    def prepare(self, datamodule) -> tuple[dict, dict[str, torch.Tensor]]:
        """Per class, the layer-K units to prune (from the training split) and the k differentiators to ask when
        the student predicts it (from the validation split)."""
        self.model.eval()
        pipeline = self.deployed_model()
        x, y = datamodule.lazy_tensors("target", "train")  # read a batch at a time
        sums, counts, shape = None, torch.zeros(self.num_classes), None
        for i, xb in zip(range(0, len(x), 256), chunks(x, 256)):
            yb = y[i : i + 256]
            logits, act = pipeline.layer_k(xb)
            if i == 0:
                self._check_split(xb, logits, act)
                shape = unit_mask_shape(act, self.units)
            per_unit = act.mean((2, 3)) if self.units == "channel" and act.ndim == 4 else act.flatten(1)
            sums = torch.zeros(self.num_classes, per_unit.shape[1]) if sums is None else sums
            sums.index_add_(0, yb, per_unit)
            counts += torch.bincount(yb, minlength=self.num_classes).float()
        if (counts == 0).any():
            missing = int((counts == 0).nonzero()[0])
            raise ConfigError(f"the training split has no image of class {missing}: its differentiator cannot be built")
        masks = []
        for c in range(self.num_classes):
            order = (sums[c] / counts[c]).argsort(descending=self.criterion == "most_active")
            mask = torch.ones(sums.shape[1])
            mask[order[: int(round(self.prune_ratio * len(mask)))]] = 0
            masks.append(mask.view(shape))
        xv, yv = datamodule.lazy_tensors("target", "val")
        prob = torch.cat([F.softmax(self.model(xb), dim=1) for xb in chunks(xv, 256)])
        mass = torch.stack(
            [
                prob[yv == c].mean(0) if (yv == c).any() else torch.zeros(self.num_classes)
                for c in range(self.num_classes)
            ]
        )
        confusion = mass + mass.T
        confusion.fill_diagonal_(float("inf"))  # each class asks its own differentiator first
        selection = confusion.argsort(dim=1, descending=True)[:, : self.k]
        meta = {"units_per_mask": int(masks[0].numel()), "pruned_per_mask": int((masks[0] == 0).sum())}
        return meta, {"masks": torch.stack(masks), "selection": selection}

    def _check_split(self, x, logits, act) -> None:
        """The differentiators' trunk/head split must reproduce the student: with nothing pruned and the student's
        own weights, a post-K copy fed the student's layer-K activation must give the student's logits."""
        probe = post_k_copy(self.model, self.trunk).eval()
        inject = probe.backbone.get_submodule(self.trunk[0])
        inject.value = act
        try:
            same = torch.allclose(probe(x), logits, atol=1e-4, rtol=1e-4)
        except RuntimeError:  # e.g. the injected activation does not fit the next layer
            same = False
        if not same:
            raise ConfigError(
                f"trunk_layers {self.trunk} are not the first layers the backbone's forward_features applies, in "
                "order: the differentiators cannot share the student's layer K"
            )

    def apply_preparation(self, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
        self.masks = tensors["masks"].to(self.masks.device)
        self.selection = tensors["selection"].to(self.selection.device)
        # Every differentiator starts from the student's layers after K (the student came from init_from).
        state = {
            k: v
            for k, v in self.model.state_dict().items()
            if not any(k.startswith(f"backbone.{t}.") for t in self.trunk)
        }
        for head in self.heads:
            head.load_state_dict(state, strict=False)

    # ---- training -----------------------------------------------------------------------------------
    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pipeline = self.deployed_model()
        with torch.no_grad():
            student, act = pipeline.layer_k(x)
        d = pipeline.differentiator_logits(x, act)  # (C, n, C)
        t = self.distill_temperature
        ce = F.cross_entropy(d.flatten(0, 1), y.repeat(len(d)), reduction="sum") / len(y)
        soft = F.softmax(student / t, dim=1).expand_as(d)
        kl = F.kl_div(F.log_softmax(d / t, dim=2), soft, reduction="sum") / len(y) * t * t
        return ce + self.distill_weight * kl, d.mean(0)

    def _accepted_accuracy(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Clean accuracy of the pipeline with a rejection counted as an error."""
        return (self.deployed_model()(x).argmax(1) == y).float().mean()

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc", self._accepted_accuracy(x, y), prog_bar=True, batch_size=len(y))

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/acc", self._accepted_accuracy(x, y), batch_size=len(y))
