"""The composed config: Hydra composition with one-line errors, and the validation of every name and value.

Nothing here trains, attacks or loads data: `validate` checks every config's keys against its constructor
(`benchmark.runner.arguments`), then runs the constructors of the models and training modules on the meta device (their
architecture without any storage: the value checks of each `__init__`, layer names included, at no cost) to learn
what each defense declares (randomized, non-differentiable, freezable randomness). A data pair's constructor is
run as it is: it loads nothing (its `setup` does, in the plan).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from attacks.base import Attack, parse_eps
from attacks.errors import ConfigError, choose
from attacks.transfer import ATTACKER_MODELS
from benchmark.components import build, build_datamodule, declared, model_skeleton, teacher_module_cfg
from benchmark.metrics import TRANSFERABILITY_FORMS
from benchmark.records import HUES, OTHER, Budget
from benchmark.runner.arguments import check_arguments
from benchmark.runner.overrides import file_overrides, key_of, sweep_dir, unknown_key_error
from lightning_modules.checkpoints import file_digest

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
GROUPS = ("data", "model", "teacher", "defense", "attack", "trainer", "logger", "launcher", "experiment")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def report_entries(defenses: dict[str, dict]) -> dict[str, dict]:
    """What the report needs of each defense config (the run writes it to report_config.json): its figure family
    (`family:`, `other` when it names none) and the claims about it that the findings test (`claims:`)."""
    return {name: {"family": d.get("family", OTHER), "claims": d.get("claims") or []} for name, d in defenses.items()}


def shipped_defenses() -> dict[str, dict]:
    """`report_entries` of every defense config in configs/defense/, as written there (for a run that wrote none:
    what its report showed)."""
    return report_entries(
        {name: OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "defense" / f"{name}.yaml"))[name]
         for name in options("defense")}
    )  # fmt: skip


def report_defenses(cfg: dict) -> dict[str, dict]:
    """The defenses a run's report reads (report_config.json): every shipped defense's entry, so that a claim about
    a defense the sweep did not run is listed as not in this run, then the sweep's own (a user's defense included,
    with the settings of this run)."""
    return {**shipped_defenses(), **report_entries(cfg["defense"])}


def check_choices(overrides: list[str]) -> None:
    """Reject unknown config-group options with one line that names the valid ones."""
    for o in overrides:
        m = re.fullmatch(r"[+~]?([a-z_]+)=(.*)", o)
        if not m or m.group(1) not in GROUPS:
            continue
        group, value = m.groups()
        names = [v.strip() for v in value.strip("[]").split(",") if v.strip()]
        for name in names:
            if name not in ("null",) and name not in options(group):
                raise ConfigError(f"unknown {group} '{name}'; valid: {', '.join(options(group))}")


def compose(overrides: list[str], earlier: bool = True) -> dict:
    """The composed, resolved config as a plain dict; `earlier`: with the defenses it trains without evaluating them
    (`earlier_defenses`; off for those defenses' own composition, which needs only their config)."""
    check_choices(overrides)
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            composed = hydra_compose("config", overrides=overrides)
        if slug := sweep_dir(overrides, _file_contents(overrides)):  # its own folder (benchmark.runner.overrides)
            composed.results_dir = f"{OmegaConf.to_container(composed)['results_dir']}/{slug}"
        cfg = OmegaConf.to_container(composed, resolve=True)
    except (HydraException, OmegaConfBaseException) as e:
        first = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ConfigError(
            _unknown_key(str(e), overrides) or f"{first} (see `python -m benchmark.run --help`)"
        ) from None
    # An experiment may set values for members it selects (defense.freeze...); when the command line narrows
    # the selection, those values would remain as entries without a target: they are not part of the sweep.
    for group, target in (("data", ()), ("defense", ("module",)), ("attack", ("attack",))):
        for name in [n for n, entry in cfg[group].items() if "_target_" not in _get(entry, target)]:
            del cfg[group][name]
    cfg["earlier_defenses"] = earlier_defenses(cfg, overrides) if earlier else {}
    return cfg


def _file_contents(overrides: list[str]) -> dict[str, str]:
    """{override: the content digest of the weights file it names}, for the results folder (`sweep_dir`). A file
    that cannot be read is left out here: the plan stops on it with its one-line error."""
    out = {}
    for override, path in file_overrides(overrides).items():
        try:
            out[override] = file_digest(str(Path(path).expanduser()), key_of(override))
        except (ConfigError, OSError):
            continue
    return out


def _unknown_key(message: str, overrides: list[str]) -> str | None:
    """The one-line error of an override whose key the config lacks, naming the valid keys (`unknown_key_error`)."""
    bad = re.search(r"Could not override '([\w.]+)'|Key '(\w+)' is not in struct", message)
    if not bad:
        return None
    key = bad.group(1) or bad.group(2)
    rest = [o for o in overrides if not key_of(o).endswith(key)]
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            base = OmegaConf.to_container(hydra_compose("config", overrides=rest))
    except Exception:  # noqa: BLE001 - another override is wrong too: Hydra's own line then
        return None
    return unknown_key_error(message, overrides, base)


def earlier_defenses(cfg: dict, overrides: list[str]) -> dict:
    """The defenses that selected ones start from (`init_from`), and those a transfer attacker trains as its own
    surrogate (`attacks.transfer.ATTACKER_MODELS`), that the sweep does not evaluate.

    Each is composed from its own config file with the same experiment and overrides (minus the ones that
    select or set other defenses), so it is exactly what `defense=<name>` would train.
    """
    earlier: dict = {}
    todo = [d["init_from"] for d in cfg["defense"].values() if d.get("init_from")]
    for entry in cfg["attack"].values():
        surrogate = (entry.get("attack") or {}).get("surrogate")
        names = [surrogate] if isinstance(surrogate, str) else list(surrogate or [])
        todo += [ATTACKER_MODELS[n] for n in names if n in ATTACKER_MODELS]
    while todo:
        name = todo.pop()
        if name in cfg["defense"] or name in earlier:
            continue
        if name not in options("defense"):
            raise ConfigError(f"init_from names unknown defense '{name}'; valid: {', '.join(options('defense'))}")
        keep = [
            o
            for o in overrides
            if not re.match(r"[+~]*defense[=.]", o) or o.lstrip("+~").startswith(f"defense.{name}.")
        ]
        earlier[name] = compose([*keep, f"defense=[{name}]"], earlier=False)["defense"][name]
        if earlier[name].get("init_from"):
            todo.append(earlier[name]["init_from"])
    return earlier


def _get(entry: dict, path: tuple[str, ...]) -> dict:
    for key in path:
        entry = entry.get(key) or {}
    return entry


#: The options of public checkpoints and pretrained weights, one line each in `--help` (docs/checkpoints.md).
CHECKPOINT_OPTIONS = (
    ("teacher.checkpoint=FILE", "the teacher is this file's network, loaded (weights-only), not trained"),
    ("teacher.common.checkpoint=FILE", "CommonInit's common model from a file (experiments with teacher.common)"),
    ("teacher.checkpoint_format=auto", "how its keys are read: auto, suite, timm, torchvision, solo-learn, lightly, "
     "prefix:<key prefix>"),
    ("teacher.checkpoint_head=auto", "its head: auto (the file's when it has the data's number of classes, else "
     "fresh; the default), fresh, file"),
    ("model.pretrained=true", "timm's pretrained weights of model.backbone (a name with its tag, e.g. "
     "resnet18.a1_in1k) as the first model"),
    ("model.pretrained_file=FILE", "those weights from a local file (no internet), with model.pretrained=true"),
    ("experiment=fashion_rgb32", "Fashion-MNIST as 3 x 32 x 32 with resnet18_cifar: an embedded benchmark a public "
     "CIFAR checkpoint can serve"),
)  # fmt: skip


def usage(doc: str) -> str:
    """`doc` (the command's docstring), every config group with its options, and the checkpoint options."""
    lines = [doc.strip(), "", "Config groups and their options:"]
    lines += [f"  {g:<11} {', '.join(options(g))}" for g in GROUPS]
    lines += ["", "Public checkpoints and pretrained weights (--plan shows what a file loads; docs/checkpoints.md):"]
    lines += [f"  {option:<31} {what}" for option, what in CHECKPOINT_OPTIONS]
    return "\n".join(lines)


#: Which models an attack entry runs on, by what the model declares (`randomized`, `nondifferentiable`):
#: every model; models declaring neither (plain gradients suffice); randomized ones (EOT); ones with
#: non-differentiable steps (BPDA); ones declaring either (adaptive attacks such as BPDA + EOT).
APPLIES_TO = ("all", "deterministic", "randomized", "nondifferentiable", "adaptive")


@dataclass
class AttackEntry:
    """An attack config of the sweep, instantiated once per epsilon (which validates its values).

    `applies_to`: one of APPLIES_TO, matched against what the model declares.
    `n_examples`: run on the first n evaluation examples only (expensive attacks); None: all of them.
    `defenses`: run only on these models (defense names, `teacher`); None: on every model.
    `reference`: a transfer attack's transferability is relative to this white-box entry of the sweep at the same
    budget (e.g. `pgd_linf`: no white-box run of every transfer family) when the sweep runs it there; otherwise (and
    when None) to its inner attack run white-box.
    """

    name: str
    cfg: dict
    budgets: list[Budget]  # one per configured epsilon, its label as written ("16/255")
    attacks: list[Attack]  # built at each budget
    applies_to: str = "all"
    n_examples: int | None = None
    defenses: list[str] | None = None
    reference: str | None = None

    def applies(self, kinds: frozenset[str], defense: str) -> bool:
        if self.defenses is not None and defense not in self.defenses:
            return False
        if self.applies_to in ("randomized", "nondifferentiable"):
            return self.applies_to in kinds
        return {"all": True, "deterministic": not kinds, "adaptive": bool(kinds)}[self.applies_to]


@dataclass
class Declared:
    """What a defense's module declares: `kinds` (randomized, nondifferentiable) and whether its deployed model
    can freeze its randomness (`frozen(seed)`, for the sanity check)."""

    kinds: frozenset[str]
    freezable: bool


def _check_trainer(name: str, trainer: dict) -> None:
    epochs = trainer.get("max_epochs")
    if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
        raise ConfigError(f"{name}: trainer.max_epochs must be an integer >= 1, got {epochs}")


def seeds_of(cfg: dict) -> list[int]:
    seeds = cfg["seeds"] if isinstance(cfg["seeds"], list) else [cfg["seeds"]]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"seeds must be a list of integers, got {cfg['seeds']}")
    return seeds


def _declarations(cfg: dict) -> dict[str, Declared]:
    """Check the arguments of every data pair, teacher and defense module (and earlier stage), and learn what each
    defense declares, building nothing but meta-device modules."""
    teachers = {"teacher.module": teacher_module_cfg(cfg["teacher"])}
    if cfg["teacher"].get("common"):  # CommonInit's common model (an SSL encoder, say)
        teachers["teacher.common.module"] = teacher_module_cfg(cfg["teacher"]["common"])
    defenses = {**(cfg.get("earlier_defenses") or {}), **cfg["defense"]}
    for where, mcfg in teachers.items():
        check_arguments(mcfg, where, runtime=("model",))
    for dname, dfn in defenses.items():
        _check_trainer(dname, dfn.get("trainer") or {})
        choose(f"defense.{dname}.family", dfn.get("family", OTHER), HUES)
        check_arguments(dfn["module"], f"defense.{dname}.module", runtime=("model", "teacher_state"))
    found: dict[str, Declared] = {}
    for pname, data_cfg in cfg["data"].items():
        check_arguments(data_cfg, f"data.{pname}")
        dm = build_datamodule(data_cfg)  # loads nothing: the data comes with `setup`, in the plan

        found.update(_on_meta(functools.partial(_modules, cfg, pname, dm, teachers, defenses)))
    return found


def _modules(cfg: dict, pair: str, dm, teachers: dict[str, dict], defenses: dict[str, dict]) -> dict[str, Declared]:
    """Build the teacher and defense modules of a data pair (checking their values and that the model takes the
    pair's images); what each defense declares."""
    model = model_skeleton(cfg["model"], dm)
    _check_input(model, cfg["model"], pair, dm)
    for mcfg in teachers.values():
        build(mcfg, model=model_skeleton(cfg["model"], dm))
    out = {}
    for dname, dfn in defenses.items():
        module = build(dfn["module"], model=model_skeleton(cfg["model"], dm), teacher_state=model.state_dict())
        out[dname] = Declared(declared(module), hasattr(module.deployed_model(), "frozen"))
    return out


def _check_input(model, model_cfg: dict, pair: str, dm) -> None:
    """One forward pass of two of the pair's images (on the meta device: shapes only, no cost): a model that does not
    take the data's image size or channels (a ViT built for 224 px, the DTN's 32 px) stops here, in one line that
    says what it takes and how to match them, not in a traceback of the plan's time estimate."""
    try:
        model.eval()(torch.zeros(2, *dm.image_shape))
    except Exception as e:  # noqa: BLE001 - any failure of the forward pass is the config's
        if "meta" in str(e):  # the meta device's own limit: `_on_meta` runs it again on the CPU
            raise
        raise ConfigError(_input_error(model, model_cfg, pair, dm, e)) from None


def _input_error(model, model_cfg: dict, pair: str, dm, error: Exception) -> str:
    c, h, w = dm.image_shape
    first = (str(error).strip().splitlines() or [type(error).__name__])[0].rstrip(".")
    fixes = []
    takes = getattr(getattr(model.backbone, "patch_embed", None), "img_size", None)  # timm's ViTs and the like
    if takes:
        size = takes[0] if isinstance(takes, (tuple, list)) else takes
        fixes.append(f"++model.kwargs.img_size={h} (the model built for the data's size)")
        if hasattr(dm, "image_size"):
            fixes.append(f"data.{pair}.image_size={size} (the data at the model's size)")
    elif hasattr(dm, "image_size"):
        fixes.append(f"data.{pair}.image_size=<the size the model takes>")
    fixes.append("a model.backbone for this image size")
    return (
        f"model.backbone={model_cfg['backbone']} does not take the data's {c} x {h} x {w} images "
        f"(data {pair}): {first}; give {' or '.join(fixes)}"
    )


def _on_meta(fn):
    """`fn()` on the meta device: modules get their architecture without any storage, so every check of their
    constructors runs at no cost. A constructor that reads a tensor's value (which a meta tensor has not) runs on
    the CPU instead: slower, but no valid config is refused for it (a real error is raised there again)."""
    try:
        with torch.device("meta"):
            return fn()
    except Exception as e:  # noqa: BLE001 - only the meta device's own limits are retried
        if "meta" not in str(e):
            raise
    return fn()


@dataclass(frozen=True)
class Validated:
    """A composed config resolved once into the typed values the plan carries: the attack entries (each at its
    budgets), what each defense (and earlier stage) declares, and the headline budget of each norm."""

    entries: list[AttackEntry]
    declared: dict[str, Declared]
    headline: dict[str, float]


def headline_budgets(cfg: dict) -> dict[str, float]:
    """The headline budget of each norm (`report.headline`: {linf: 16/255, l2: 1.0}), the budget a defense is
    ranked at; checked here, once."""
    headline = {}
    for norm, value in ((cfg.get("report") or {}).get("headline") or {}).items():
        choose("report.headline norm", norm.lower(), ("linf", "l2"))
        headline[norm.lower()] = parse_eps(value)
    return headline


def validate(cfg: dict) -> Validated:
    """Check every name and value of a composed config before any work; return it resolved (`Validated`)."""
    for key in ("data", "defense", "attack"):
        if not cfg.get(key):
            raise ConfigError(f"the sweep has no {key}; select at least one, e.g. {key}=<name>")
    seeds_of(cfg)
    evaluation = cfg["eval"]
    n = evaluation.get("n_examples")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise ConfigError(f"eval.n_examples must be an integer >= 1 or null, got {n!r}")
    for key in ("batch_size", "draws", "sanity_examples"):
        if (key, evaluation[key]) != ("batch_size", "auto") and (
            not isinstance(evaluation[key], int) or evaluation[key] < 1
        ):
            raise ConfigError(
                f"eval.{key} must be an integer >= 1{' or auto' * (key == 'batch_size')}, got {evaluation[key]}"
            )
    if not isinstance(evaluation["seed"], int) or isinstance(evaluation["seed"], bool):
        raise ConfigError(f"eval.seed must be an integer, got {evaluation['seed']!r}")
    if not isinstance(evaluation["detection"], bool):
        raise ConfigError(f"eval.detection must be true or false, got {evaluation['detection']!r}")
    ref = evaluation["detection_reference"]
    if not isinstance(ref, int) or isinstance(ref, bool) or ref < 1:
        raise ConfigError(f"eval.detection_reference must be an integer >= 1, got {ref!r}")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", str(evaluation["device"])):
        raise ConfigError(f"eval.device must be auto, cpu, cuda, cuda:N or mps, got {evaluation['device']!r}")
    choose("eval.precision", evaluation.get("precision", "fp32"), ("fp32", "bf16", "fp16"))
    choose("report.transferability", cfg["report"]["transferability"], TRANSFERABILITY_FORMS)
    headline = headline_budgets(cfg)
    found = _declarations(cfg)
    _check_trainer("teacher", cfg["teacher"].get("trainer") or {})
    entries = []
    for name, attack_cfg in cfg["attack"].items():
        labels = [str(e) for e in attack_cfg.get("epsilons") or []]
        if not labels:
            raise ConfigError(f"attack '{name}' has no epsilons")
        applies_to = attack_cfg.get("applies_to", "all")
        choose(f"attack.{name}.applies_to", applies_to, APPLIES_TO)
        n = attack_cfg.get("n_examples")
        if n is not None and (not isinstance(n, int) or n < 1):
            raise ConfigError(f"attack.{name}.n_examples must be an integer >= 1 or null, got {n}")
        defenses = attack_cfg.get("defenses")
        for d in defenses or []:  # names of any defense config: narrowing the sweep must not break it
            choose(f"attack.{name}.defenses entry", d, ["teacher", *options("defense")])
        check_arguments(attack_cfg["attack"], f"attack.{name}.attack", runtime=("eps",))
        attacks = [build(attack_cfg["attack"], eps=parse_eps(e)) for e in labels]  # cheap: an attack holds no tensor
        entries.append(
            AttackEntry(
                name,
                attack_cfg["attack"],
                [Budget(a.norm, a.eps, label) for a, label in zip(attacks, labels)],
                attacks,
                applies_to,
                n,
                list(defenses) if defenses else None,
                attack_cfg.get("reference"),
            )  # fmt: skip
        )
    _check_references(entries)
    return Validated(entries, found, headline)


def _check_references(entries: list[AttackEntry]) -> None:
    """A transfer attack's `reference` is the name of an attack config (used when the sweep runs it, white-box, at the
    same budget; else the transfer attack's inner attack is run white-box instead)."""
    for e in entries:
        if e.reference is not None:
            choose(f"attack.{e.name}.reference", e.reference, options("attack"))
            if getattr(e.attacks[0], "name", "") != "transfer":
                raise ConfigError(f"attack.{e.name}.reference: only a transfer attack has a white-box reference")
