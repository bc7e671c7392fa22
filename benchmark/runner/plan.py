"""The plan of a sweep: every stage and cell in dependency order, with its cache key, as typed records that go
through JSON (`benchmark.runner.planner` builds it from a config).

config -> **plan** -> execute -> score -> checks -> rows -> report / tracking. Its JSON (`Plan.to_json`; a field left
at its default is left out) holds no tensors and no models; its length is the progress total, and each stage names
the stages it needs (`deps`), so a stage can be handed to another process or cluster job, which reads the same
records back (`Plan.from_json`). A stage is a `Stage` (its `id`, `kind`, cache `key` and `deps`) of one of
these kinds:

- `teacher`, `student`: a `TrainStage`, whose `job` (`benchmark.records.Job`) is what `benchmark.runner.stages.train`
  runs. The teacher may be a public model instead (`teacher.checkpoint=PATH`, or timm's weights with
  `model.pretrained=true`): it is then loaded, not trained. With `teacher.common` (paper 1's CommonInit) a `common`
  stage comes first;
- `craft`: a `CraftStage`, adversarial examples crafted once on the teacher (`Attack.crafted`: transfer attacks,
  universal perturbations; `surrogate: common` crafts on the common model), scored on every student;
- `cell`: a `CellStage`, one attack at one epsilon on one model, resolved once into a `benchmark.records.CellSpec`.
  Its `role` says what it is for: `attack` (a row), `reference` (the white-box counterpart of a transfer attack, for
  transferability), and the sanity checks of a randomized model: `frozen` (randomness fixed), `x2` (twice the
  steps and EOT samples; a row that joins the worst case), `unbounded` (eps = 1).
Two stages with the same key are one stage (e.g. a transfer attack's white-box reference and the same attack
in the sweep).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field, replace

from attacks.base import Attack
from benchmark.components import build
from benchmark.records import CellSpec, Job, as_json


def module_of(target: str) -> str:
    """`pkg.mod.Class` -> `pkg.mod`."""
    return target.rsplit(".", 1)[0]


def attack_modules(attack: Attack) -> list[str]:
    """The modules of an attack and of the attack it wraps (a transfer attack's inner attack)."""
    mods = [type(attack).__module__]
    if isinstance(getattr(attack, "base", None), Attack):
        mods.append(type(attack.base).__module__)
    return mods


#: Attacks built per recipe (config, epsilon, changes). Hydra's instantiate costs milliseconds and a plan builds the
#: same recipe for every model (`make bench EXPERIMENT=fashion`: 885 builds of about 60 recipes, a fifth of a warm
#: rerun); each caller gets its own deep copy, so no run-time state (pass counts, a surrogate, a transfer attack's
#: inner attack) is shared.
_BUILT: dict[str, Attack] = {}


def make_attack(spec: dict) -> Attack:
    """The attack of a plan entry (`{"cfg", "eps", "changes"}`): its config at its epsilon (a float: the budget
    was parsed once, by the config check), with the plan's changes (`Attack.replace`)."""
    changes = spec.get("changes") or {}

    def built() -> Attack:
        attack = build(spec["cfg"], eps=spec["eps"])
        return attack.replace(**changes) if changes else attack

    try:
        recipe = json.dumps([spec["cfg"], spec["eps"], changes], sort_keys=True)
    except TypeError:  # not plain data (an object in the config): built each time
        return built()
    if recipe not in _BUILT:
        _BUILT[recipe] = built()
    return copy.deepcopy(_BUILT[recipe])


# ---- the stages ---------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class Stage:
    """What a launcher needs of a stage: its id, its kind, its cache key and the ids of the stages it needs."""

    id: str
    kind: str  # teacher, student, craft or cell
    key: str
    deps: list[str]


@dataclass(kw_only=True)
class TrainStage(Stage):
    """A model: trained (or a public one, loaded) by its job; kind teacher (CommonInit's common model too) or
    student."""

    job: Job
    defense: str  # the defense's name (teacher, common for the teacher stages)
    seed: int
    load_report: dict | None = None  # what a public model's file put into it (`--plan-json` shows it)


@dataclass(kw_only=True)
class CraftStage(Stage):
    """Adversarial examples crafted once on a surrogate (several: their ensemble), scored by the cells of every
    model."""

    pair: str
    teacher: str  # the first surrogate
    surrogates: list[str]
    attack: dict  # the attack's recipe: {"cfg", "eps", "changes"} (`make_attack`)
    n: int  # how many evaluation examples (the most its cells score)


@dataclass(kw_only=True)
class CellStage(Stage):
    """One attack at one budget on one model."""

    cell: CellSpec


def stage_from_json(d: dict) -> Stage:
    """A stage read back from the plan's JSON."""
    if d["kind"] == "cell":
        return CellStage(**{**d, "cell": CellSpec.from_json(d["cell"])})
    if d["kind"] == "craft":
        return CraftStage(**d)
    return TrainStage(**{**d, "job": Job.from_json(d["job"])})


@dataclass
class Plan:
    """The stages of a sweep in dependency order; `pairs` describes each data pair's evaluation subset.

    The plan also holds the attack it built for each cell and crafted set (`attack(stage_id)`): in the process that
    planned, attacks are built once; a process that loaded the plan from JSON builds each once, on first use.
    Likewise the data pairs its planner set up (`_data`), which the executor of that process evaluates on.
    """

    name: str
    pairs: dict = field(default_factory=dict)
    stages: list[Stage] = field(default_factory=list)
    headline: dict[str, float] = field(default_factory=dict)  # the headline budget per norm, from the config
    _attacks: dict = field(default_factory=dict, repr=False, compare=False)
    #: The set-up data pairs, in the process that planned: its executor evaluates on them instead of building them
    #: again (for `make bench EXPERIMENT=fashion`, seconds of a warm rerun). Never in the JSON.
    _data: dict = field(default_factory=dict, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.stages)

    def stage(self, stage_id: str) -> Stage:
        return self._index()[stage_id]

    def cell(self, stage_id: str) -> CellSpec:
        return self.stage(stage_id).cell

    def cells(self, model: str | None = None) -> list[CellSpec]:
        """The cells of the plan (of one model's stage id when given), in plan order."""
        return [s.cell for s in self.stages if s.kind == "cell" and model in (None, s.cell.model)]

    def attack(self, stage_id: str) -> Attack:
        """The attack of a cell or crafted set, built once per process from its recipe."""
        if stage_id not in self._attacks:
            stage = self.stage(stage_id)
            self._attacks[stage_id] = make_attack(stage.cell.attack if stage.kind == "cell" else stage.attack)
        return self._attacks[stage_id]

    def update_cell(self, stage_id: str, **changes) -> None:
        stage = self.stage(stage_id)
        stage.cell = replace(stage.cell, **changes)

    def _index(self) -> dict[str, Stage]:
        return {s.id: s for s in self.stages}

    def add(self, stage: Stage, attack: Attack | None = None) -> str:
        """Add a stage unless one with the same key is there; returns the id that stands for it."""
        for s in self.stages:
            if s.key == stage.key and s.kind == stage.kind:
                if s.kind == "cell":
                    old, new = s.cell, stage.cell
                    if len({old.role, new.role}) > 1 and not {old.role, new.role} <= {"attack", "reference"}:
                        raise RuntimeError(f"plan stages {old.id} and {new.id} compute the same thing")
                    if old.role == "reference" and new.role == "attack":  # the sweep runs it too: a row
                        s.cell = replace(new, id=old.id, reference=old.reference, base=old.base)
                return s.id
        self.stages.append(stage)
        if attack is not None:
            self._attacks[stage.id] = attack
        return stage.id

    def to_json(self) -> str:
        d = {"name": self.name, "pairs": self.pairs, "stages": self.stages, "headline": self.headline}
        return json.dumps(d, indent=1, default=as_json)

    @classmethod
    def from_json(cls, text: str) -> Plan:
        d = json.loads(text)
        return cls(d["name"], d["pairs"], [stage_from_json(s) for s in d["stages"]], d["headline"])
