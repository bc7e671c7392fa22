"""Public checkpoints in the formats people download, loaded into an `ImageClassifier`.

A file is read with `torch.load(weights_only=True)` only: a file that needs arbitrary unpickling (a Lightning
checkpoint whose hyper-parameters are OmegaConf objects, an argparse namespace, a pickled model) stops with one
line saying so, and how to re-save its weights yourself if you trust it. Wrappers are opened (`state_dict`,
`model`, `module`: Lightning, timm/DeiT/MAE training scripts, DeepSpeed), DDP's `module.` prefix is dropped, and the
keys are mapped into the classifier's names (`backbone.*`) by a format:

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
matches most backbone tensors (name and shape). The head is loaded when the file has one of the model's shape;
otherwise (another number of classes, no head) the model keeps its fresh head for the data's classes. Keys of the
file that are not loaded are reported in one line (count and first few); a backbone tensor the file lacks, or has
in another shape, stops with one line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from attacks.errors import ConfigError, choose

FORMATS = ("auto", "suite", "timm", "torchvision", "solo-learn", "lightly")
WRAPPERS = ("state_dict", "model", "module")
#: Buffers a file may lack without harm (BN's step counter: only used with momentum=None).
OPTIONAL = ("num_batches_tracked",)
SHOWN = 3  # keys named in a one-line report


@dataclass
class LoadReport:
    """What a load did: the format used, how many backbone tensors matched, the head, the keys left out."""

    path: str
    format: str
    matched: int
    backbone_total: int
    head: str
    unmatched: list[str] = field(default_factory=list)

    def line(self) -> str:
        left = f"{len(self.unmatched)} keys of the file not loaded" + (
            f" (e.g. {', '.join(self.unmatched[:SHOWN])})" if self.unmatched else ""
        )
        return (
            f"'{self.path}' loaded as {self.format}: {self.matched} of {self.backbone_total} backbone tensors; "
            f"head {self.head}; {left}"
        )


def read_state(path: str, where: str) -> dict[str, torch.Tensor]:
    """The flat tensor dict of a file: wrappers opened, DDP's `module.` prefix dropped, weights-only."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        text = str(e)
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if found or "Weights only load failed" in text:
            what = f"it pickles {found.group(1)}" if found else "it needs arbitrary unpickling"
            raise ConfigError(
                f"{where}: '{path}' is not a weights-only state dict: {what}, and files are only read with "
                'weights_only=True; if you trust it, re-save its weights: python -c "import torch; '
                f"c = torch.load('{path}', weights_only=False); torch.save(c.get('state_dict', c), 'weights.pt')\""
            ) from None
        raise ConfigError(f"{where}: '{path}' is not a file torch.load reads ({type(e).__name__})") from None
    for _ in range(3):  # {"state_dict": {...}}, {"model": {...}}, {"module": {...}}, nested
        if isinstance(obj, dict) and not _tensors(obj):
            inner = next((obj[k] for k in WRAPPERS if isinstance(obj.get(k), dict)), None)
            if inner is None:
                break
            obj = inner
    state = _tensors(obj) if isinstance(obj, dict) else {}
    if not state:
        raise ConfigError(f"{where}: '{path}' holds no state dict of tensors (opened: {', '.join(WRAPPERS)})")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _tensors(d: dict) -> dict[str, torch.Tensor]:
    return {k: v for k, v in d.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


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
def load_into(model: nn.Module, path: str, fmt: str = "auto", where: str = "teacher.checkpoint") -> LoadReport:
    """Load the file at `path` into `model` (an `ImageClassifier`) in place; returns what was done.

    Raises a one-line `ConfigError` for a file that cannot be read weights-only, holds no tensors, or whose
    backbone does not fit the model's.
    """
    rule = rule_of(fmt)
    state = read_state(path, where)
    t = Target.of(model)
    name, mapping = detect(state, t) if fmt == "auto" else (fmt, rule(state, t))
    _check_backbone(state, mapping, t, path, name, where, type(model.backbone).__name__)
    load = {new: state[k] for k, new in mapping.items() if t.is_backbone(new) and _fits(state[k], t.own.get(new))}
    head, head_note = _head(state, mapping, t)
    load.update(head)
    norm = {new: state[k] for k, new in mapping.items() if new in ("mean", "std") and _fits(state[k], t.own[new])}
    load.update(norm)
    model.load_state_dict(load, strict=False)
    used = {k for k, new in mapping.items() if new in load}
    unmatched = [k for k in state if k not in used]
    matched = sum(1 for k in load if t.is_backbone(k))
    total = sum(1 for k in t.own if t.is_backbone(k))
    return LoadReport(path, name, matched, total, head_note, unmatched)


def _head(state: dict, mapping: dict[str, str], t: Target) -> tuple[dict, str]:
    """The file's head when it is the model's (same tensors, same shapes; else {}: the fresh head stays), and what
    was done with it, in words."""
    own = [k for k in t.own if k.startswith(t.head)]
    head = {new: state[k] for k, new in mapping.items() if new.startswith(t.head)}
    if not own:
        return {}, "none"
    classes = t.own[own[0]].shape[0]
    same_keys = bool(head) and sorted(head) == sorted(own)
    if same_keys and all(_fits(v, t.own[k]) for k, v in head.items()):
        return head, f"loaded ({classes} classes)"
    had = "none in the file"
    if same_keys:
        had = f"the file's has {next(v for k, v in head.items() if k.endswith('weight')).shape[0]} outputs"
    elif head:
        had = f"the file's is another module: {', '.join(k for k, new in mapping.items() if new in head)[:80]}"
    return {}, f"fresh for the data's {classes} classes ({had})"


def _check_backbone(state, mapping, t: Target, path: str, name: str, where: str, arch: str) -> None:
    """One line when a backbone tensor is missing from the file or has another shape there."""
    found = {new: state[k] for k, new in mapping.items()}
    needed = [k for k in t.own if t.is_backbone(k) and not k.endswith(OPTIONAL)]
    missing = [k for k in needed if k not in found]
    shapes = [k for k in needed if k in found and found[k].shape != t.own[k].shape]
    extra = [k for k in found if t.is_backbone(k) and k not in t.own]  # e.g. a ResNet-34 file for a ResNet-18
    if not missing and not shapes and not extra:
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} of {len(needed)} backbone tensors missing (e.g. {', '.join(missing[:SHOWN])})")
    if shapes:
        k = shapes[0]
        problems.append(
            f"{len(shapes)} shape mismatches (e.g. {k}: file {tuple(found[k].shape)}, model {tuple(t.own[k].shape)})"
        )
    if extra:
        problems.append(f"{len(extra)} backbone tensors the model lacks (e.g. {', '.join(extra[:SHOWN])})")
    raise ConfigError(
        f"{where}: '{path}' does not fit the model ({arch}) read as {name}: {'; '.join(problems)}; formats: "
        f"{', '.join(FORMATS)}, prefix:<key prefix> (teacher.checkpoint_format)"
    )
