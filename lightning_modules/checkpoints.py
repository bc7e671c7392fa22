"""Public checkpoints in the formats people download, loaded into an `ImageClassifier`.

A file is read with `torch.load(weights_only=True)` only (a `.safetensors` file with safetensors): a file that needs
arbitrary unpickling (a Lightning checkpoint whose hyper-parameters are OmegaConf objects, an argparse namespace, a
pickled model) stops with one line saying so, and how to re-save its tensors if you trust it
(`python -m lightning_modules.checkpoints FILE weights.pt`: `resave`, which also reads classes that no longer
exist); a file that is neither torch's nor safetensors' stops in one line too (`checkpoint_files` reads them).
Wrappers are opened (`state_dict`, `model`, `module`: Lightning, timm/DeiT/MAE training scripts, DeepSpeed), DDP's
`module.` prefix is dropped, and the keys are mapped into the classifier's names (`backbone.*`) by a format:

- `suite`: this suite's files: a classifier's state dict (`backbone.*`, `mean`, `std`) or a module's / Lightning
  checkpoint's (`model.backbone.*`);
- `timm`, `torchvision`: a bare network's state dict (`conv1.weight`, `fc.weight`; `patch_embed.proj.weight`,
  `head.weight`), with or without its head (an encoder-only file); the two are one rule (the ResNets share names);
- `solo-learn`: its Lightning checkpoints: `backbone.*` (torchvision names) and the online linear probe
  `classifier.*`; projector, predictor and momentum copies are left out;
- `lightly`: its examples' layouts: `backbone.<i>.*` (an `nn.Sequential` of torchvision's children, by index) or
  `backbone.<name>.*`, DINO's `teacher_backbone.*`, the benchmarks' `online_classifier.classification_head.*`;
- `prefix:<p>`: keys under `<p>` are a bare network's (e.g. `prefix:encoder_q.` for MoCo's official files).

`auto` (the default) tries every format and every one- and two-part key prefix of the file and keeps the one that
matches most backbone tensors (name and shape). The head (`head`, `teacher.checkpoint_head`): `auto` (the default)
loads the file's head when it has the model's shape (the data's number of classes, taken to be the data's classes in
their order) and keeps a fresh head otherwise (another number of classes, no head); `fresh` always keeps a fresh
head; `file` loads the file's head or stops. Keys of the file that are not loaded are reported in one line (count
and first few); a backbone tensor the file lacks, or has in another shape, stops with one line that names the fix
where it is known (the images' channels, a ResNet's ImageNet or CIFAR stem). `LoadReport.digest` is a hash of the
tensors loaded (names, dtypes, shapes, bytes): what a cache key of the loaded model follows, whatever the file's
name, bytes on disk or the spelling of its format.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from attacks.errors import ConfigError, choose
from lightning_modules.checkpoint_files import WRAPPERS, content_digest, file_digest, main, read_state, resave

__all__ = ["WRAPPERS", "content_digest", "file_digest", "main", "read_state", "resave"]  # re-exported (the command)

FORMATS = ("auto", "suite", "timm", "torchvision", "solo-learn", "lightly")
#: What becomes of the classification head (`teacher.checkpoint_head`); the first is the default.
HEADS = ("auto", "fresh", "file")
#: Buffers a file may lack without harm (BN's step counter: only used with momentum=None).
OPTIONAL = ("num_batches_tracked",)
SHOWN = 3  # keys named in a one-line report
#: What a 1-channel experiment's user does with an RGB file (the embedded RGB benchmark).
RGB_EXPERIMENT = "experiment=fashion_rgb32 (Fashion-MNIST as 3 x 32 x 32 images)"


@dataclass
class LoadReport:
    """What a load did: the format used, how many backbone tensors matched, the head, the keys left out."""

    path: str
    format: str
    matched: int
    backbone_total: int
    head: str
    unmatched: list[str] = field(default_factory=list)
    digest: str = ""  # `content_digest` of the tensors loaded
    where: str = "teacher.checkpoint"

    def as_dict(self) -> dict:
        """What the plan keeps of a load (its JSON): the counts, the head, the keys not loaded, the line."""
        out = asdict(self)
        out["not_loaded"] = len(self.unmatched)
        out["unmatched"] = self.unmatched[:SHOWN]
        return {**out, "line": self.line()}

    def line(self) -> str:
        left = f"{len(self.unmatched)} keys of the file not loaded" + (
            f" (e.g. {', '.join(self.unmatched[:SHOWN])})" if self.unmatched else ""
        )
        return (
            f"'{self.path}' loaded as {self.format}: {self.matched} of {self.backbone_total} backbone tensors; "
            f"head {self.head}; {left}"
        )


# ---- formats: file keys -> the classifier's keys ------------------------------------------------------
@dataclass
class Target:
    """What a file is mapped onto: the classifier's state and where its head is."""

    own: dict[str, torch.Tensor]
    head: str  # e.g. "backbone.fc."
    children: list[str]  # the backbone's top-level children, in order (lightly's Sequential indices)

    @classmethod
    def of(cls, model: nn.Module) -> Target:
        backbone = model.backbone
        head = backbone.get_classifier()
        name = next(n for n, m in backbone.named_modules() if m is head)
        return cls(model.state_dict(), f"backbone.{name}.", [n for n, _ in backbone.named_children()])

    def is_backbone(self, key: str) -> bool:
        return key.startswith("backbone.") and not key.startswith(self.head)


def _under(state: dict, prefix: str, into: str = "backbone.") -> dict[str, str]:
    """{file key: classifier key} for the keys under `prefix`, moved under `into`."""
    return {k: into + k[len(prefix) :] for k in state if k.startswith(prefix)}


def _suite(state: dict, t: Target) -> dict[str, str]:
    if any(k.startswith("model.backbone.") for k in state):
        return {k: k[len("model.") :] for k in state if k.startswith("model.") and k[len("model.") :] in t.own}
    return {k: k for k in state if k.startswith("backbone.") or k in ("mean", "std")}


def _bare(state: dict, t: Target) -> dict[str, str]:
    return _under(state, "")


def _solo_learn(state: dict, t: Target) -> dict[str, str]:
    return {**_under(state, "backbone."), **_under(state, "classifier.", t.head)}


def _lightly(state: dict, t: Target) -> dict[str, str]:
    prefix = "backbone." if any(k.startswith("backbone.") for k in state) else "teacher_backbone."
    mapping = {}
    for k, new in _under(state, prefix).items():
        first, _, rest = new[len("backbone.") :].partition(".")
        if first.isdigit() and int(first) < len(t.children):  # nn.Sequential(*resnet.children()[:-1])
            new = f"backbone.{t.children[int(first)]}.{rest}"
        mapping[k] = new
    return {**mapping, **_under(state, "online_classifier.classification_head.", t.head)}


RULES: dict[str, Callable[[dict, Target], dict[str, str]]] = {
    "suite": _suite,
    "timm": _bare,
    "torchvision": _bare,
    "solo-learn": _solo_learn,
    "lightly": _lightly,
}


def rule_of(fmt: str) -> Callable[[dict, Target], dict[str, str]] | None:
    """The key mapping of a format (None for `auto`: detected per file); an unknown format is one line."""
    if fmt.startswith("prefix:"):
        prefix = fmt[len("prefix:") :]
        return lambda state, t: _under(state, prefix)
    choose("checkpoint format", fmt, [*FORMATS, "prefix:<key prefix>"])
    return RULES.get(fmt)


def _prefixes(state: dict) -> list[str]:
    """The one- and two-part key prefixes of a file (`encoder_q.`, `model.encoder.`), most common first."""
    counts: dict[str, int] = {}
    for k in state:
        parts = k.split(".")
        for depth in (1, 2):
            if len(parts) > depth:
                p = ".".join(parts[:depth]) + "."
                counts[p] = counts.get(p, 0) + 1
    return sorted(counts, key=lambda p: -counts[p])


def _score(state: dict, mapping: dict[str, str], t: Target) -> tuple[int, int, int]:
    """Backbone tensors that fit, then all tensors that fit (head, normalization), then all the rule maps."""
    fit = [new for k, new in mapping.items() if _fits(state[k], t.own.get(new))]
    return sum(1 for new in fit if t.is_backbone(new)), len(fit), len(mapping)


def _fits(v: torch.Tensor, own: torch.Tensor | None) -> bool:
    return own is not None and v.shape == own.shape


def detect(state: dict, t: Target) -> tuple[str, dict[str, str]]:
    """The format (or key prefix) whose mapping matches most backbone tensors; named formats win ties."""
    named = {"suite": "suite", "timm/torchvision": "timm", "solo-learn": "solo-learn", "lightly": "lightly"}
    candidates = [(label, RULES[f](state, t)) for label, f in named.items()]
    candidates += [(f"prefix:{p}", _under(state, p)) for p in _prefixes(state)]
    return max(candidates, key=lambda c: _score(state, c[1], t))  # max keeps the first of equals


# ---- loading ---------------------------------------------------------------------------------------
def load_into(
    model: nn.Module, path: str, fmt: str = "auto", where: str = "teacher.checkpoint", head: str = "auto"
) -> LoadReport:
    """Load the file at `path` into `model` (an `ImageClassifier`) in place; returns what was done.

    `head`: one of HEADS (see the module's docstring). Raises a one-line `ConfigError` for a file that cannot be
    read weights-only, holds no tensors, or whose backbone (or, with `head="file"`, head) does not fit the model's.
    """
    rule = rule_of(fmt)
    choose(f"{where}_head", head, HEADS)
    state = read_state(path, where)
    t = Target.of(model)
    name, mapping = detect(state, t) if fmt == "auto" else (fmt, rule(state, t))
    _check_backbone(state, mapping, t, path, name, where, type(model.backbone).__name__)
    load = {new: state[k] for k, new in mapping.items() if t.is_backbone(new) and _fits(state[k], t.own.get(new))}
    head_state, head_note = _head(state, mapping, t, head, f"{where}_head")
    if head == "file" and not head_state:
        had = head_note.partition(" (")[2][:-1]  # what the file has instead
        raise ConfigError(f"{where}: '{path}' has no head of the model's shape ({had}); {where}_head=file "
                          f"loads only such a head: give {where}_head=fresh or auto")  # fmt: skip
    load.update(head_state)
    norm = {new: state[k] for k, new in mapping.items() if new in ("mean", "std") and _fits(state[k], t.own[new])}
    load.update(norm)
    model.load_state_dict(load, strict=False)
    used = {k for k, new in mapping.items() if new in load}
    unmatched = [k for k in state if k not in used]
    matched = sum(1 for k in load if t.is_backbone(k))
    total = sum(1 for k in t.own if t.is_backbone(k))
    return LoadReport(path, name, matched, total, head_note, unmatched, content_digest(load), where)


def pretrained_report(model: nn.Module, path: str, where: str = "model.pretrained_file") -> LoadReport:
    """What timm loaded from its weights file into `model` (built with `pretrained_cfg_overlay=dict(file=path)`):
    the backbone tensors the file names, the head (loaded only when timm kept it: the same classes), the file's keys
    the model lacks. `digest` is the file's tensors' `content_digest`."""
    state = read_state(path, where)
    t = Target.of(model)
    mapping = _bare(state, t)
    found = set(mapping.values())
    matched = sum(1 for k in t.own if t.is_backbone(k) and k in found)
    total = sum(1 for k in t.own if t.is_backbone(k))
    own_head = {k: v for k, v in t.own.items() if k.startswith(t.head)}
    kept = bool(own_head) and all(
        mapping.get(k[len("backbone.") :]) == k and torch.equal(state[k[len("backbone.") :]], v)
        for k, v in own_head.items()
    )
    _, note = _head(state, mapping, t, "fresh" if not kept else "file", "")
    unmatched = [k for k, new in mapping.items() if new not in t.own or (new.startswith(t.head) and not kept)]
    return LoadReport(path, "timm (its pretrained weights)", matched, total, note, unmatched, file_digest(path, where),
                      where)  # fmt: skip


def _head(state: dict, mapping: dict[str, str], t: Target, choice: str, option: str) -> tuple[dict, str]:
    """The file's head when it is the model's (same tensors, same shapes) and `choice` allows it (else {}: the fresh
    head stays), and what was done with it, in words."""
    own = [k for k in t.own if k.startswith(t.head)]
    head = {new: state[k] for k, new in mapping.items() if new.startswith(t.head)}
    if not own:
        return {}, "none"
    classes = t.own[own[0]].shape[0]
    same_keys = bool(head) and sorted(head) == sorted(own)
    fits = same_keys and all(_fits(v, t.own[k]) for k, v in head.items())
    if fits and choice != "fresh":
        if choice == "file":
            return head, f"loaded from the file ({classes} classes, {option}=file)"
        return head, (
            f"loaded ({classes} classes, taken to be the data's classes in their order; {option}=fresh for a new one)"
        )
    had = "none in the file"
    if same_keys:
        had = f"the file's has {next(v for k, v in head.items() if k.endswith('weight')).shape[0]} outputs"
    elif head:
        had = f"the file's is another module: {', '.join(k for k, new in mapping.items() if new in head)[:80]}"
    if choice == "fresh" and option:
        had = f"{option}=fresh; {had}"
    return {}, f"fresh for the data's {classes} classes ({had})"


def _check_backbone(state, mapping, t: Target, path: str, name: str, where: str, arch: str) -> None:
    """One line when a backbone tensor is missing from the file or has another shape there, naming the fix where it
    is known (`_shape_hint`). Counts are over all the model's backbone tensors, as the report's are; BatchNorm's
    `num_batches_tracked` may be absent (it is counted as missing only beside a missing required tensor)."""
    found = {new: state[k] for k, new in mapping.items()}
    backbone = [k for k in t.own if t.is_backbone(k)]
    missing = [k for k in backbone if k not in found]
    required = [k for k in missing if not k.endswith(OPTIONAL)]
    shapes = [k for k in backbone if k in found and found[k].shape != t.own[k].shape]
    extra = [k for k in found if t.is_backbone(k) and k not in t.own]  # e.g. a ResNet-34 file for a ResNet-18
    if not required and not shapes and not extra:
        return
    problems, hint = [], None
    if required:
        problems.append(
            f"{len(missing)} of {len(backbone)} backbone tensors missing (e.g. {', '.join(required[:SHOWN])})"
        )
    if shapes:
        k = shapes[0]
        file_shape, model_shape = tuple(found[k].shape), tuple(t.own[k].shape)
        problems.append(f"{len(shapes)} shape mismatches (e.g. {k}: file {file_shape}, model {model_shape})")
        hint = _shape_hint(k, file_shape, model_shape, t)
    if extra:
        problems.append(f"{len(extra)} backbone tensors the model lacks (e.g. {', '.join(extra[:SHOWN])})")
    fix = hint or (
        f"formats: {', '.join(FORMATS)}, prefix:<key prefix> ({where}_format), or a model.backbone of the file's "
        "architecture"
    )
    raise ConfigError(f"{where}: '{path}' does not fit the model ({arch}) read as {name}: {'; '.join(problems)}: {fix}")


def _shape_hint(key: str, file_shape: tuple, model_shape: tuple, t: Target) -> str | None:
    """The fix for a mismatch whose cause is known: the first convolution's input channels (an RGB file for grey
    images), a ResNet's stem (ImageNet's 7x7 against the CIFAR 3x3); None for any other."""
    first_conv = next((k for k, v in t.own.items() if t.is_backbone(k) and v.ndim == 4), None)
    if key != first_conv or len(file_shape) != 4:
        return None
    hints = []
    if file_shape[1] != model_shape[1]:
        fc, mc = file_shape[1], model_shape[1]
        fix = f"use RGB data: {RGB_EXPERIMENT}, or a pair of 3-channel images" if (fc, mc) == (3, 1) else ""
        hints.append(
            f"the file's network takes {fc}-channel images, the model {mc}-channel ones (the data's): "
            + (fix or f"use data of {fc}-channel images")
        )
    if key.endswith("conv1.weight") and file_shape[2:] == (7, 7) and model_shape[2:] == (3, 3):
        hints.append("the file has an ImageNet ResNet's stem (7x7 conv1): use model.backbone=resnet18 (or its depth)")
    if key.endswith("conv1.weight") and file_shape[2:] == (3, 3) and model_shape[2:] == (7, 7):
        hints.append("the file has a CIFAR ResNet's stem (3x3 conv1): use model=resnet18_cifar")
    return "; ".join(hints) or None


if __name__ == "__main__":  # python -m lightning_modules.checkpoints FILE weights.pt: re-save a file's tensors
    raise SystemExit(main(sys.argv[1:]))
