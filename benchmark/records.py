"""The typed records that travel from the plan to the report: a budget, a training job, a cell's spec, a results row.

config -> plan (**Job** per training stage, **CellSpec** per cell: the attack resolved once) -> execute -> score ->
checks -> rows (**Row**) -> report, findings, tracking. Nothing downstream of the plan rebuilds an attack or re-parses
a budget: a cell carries its `Budget` (norm, epsilon as a float, its label), and each row carries the cell's. Only
`make report` reads results.csv back, into `Row` (`Row.from_csv`). The plan's records go through JSON (`as_json`,
and each record's `from_json`) to worker processes and cluster jobs.

This module is the runner's ground floor: it imports nothing from `benchmark` and no tensors library.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields


# ---- budgets -----------------------------------------------------------------------------------------------
def budget_key(norm: str, eps: float) -> tuple[str, float]:
    """What two budgets must share to be the same budget (rows are grouped by it): the norm and epsilon to 1e-10."""
    return norm, round(float(eps), 10)


#: The rows that are per-example worst cases over other rows of a model at one budget (`benchmark.runner.rows`): over
#: every attack, and over the transfer attacks alone.
UNIONS = ("worst_case", "worst_transfer")


def same_eps(a: float, b: float) -> bool:
    return abs(float(a) - float(b)) < 1e-9


def eps_str(norm: str, eps: float) -> str:
    """A budget as the reports write it: L-inf in 1/255 units ("16/255"), any other budget as is."""
    if math.isnan(eps):
        return "-"
    return f"{round(eps * 255, 3):g}/255" if norm == "linf" else f"{eps:g}"


#: The axis of a budget sweep, per budget type (`attacks.base.BUDGETS`).
AXES = {"linf": "epsilon (x/255)", "l2": "epsilon (L2)", "dssim": "DSSIM threshold P", "patch": "patch area (fraction)"}


def eps_axis(norm: str) -> str:
    return AXES.get(norm, f"budget ({norm})")


def headline_eps(rows: list[Row], headline: dict) -> dict[str, float]:
    """The budget each norm is ranked at: the configured one if swept, else the median swept value."""
    out = {}
    for norm in sorted({r.norm for r in rows}, key=lambda n: n != "linf"):
        swept = sorted({budget_key(norm, r.eps)[1] for r in rows if r.norm == norm})
        want = headline.get(norm)
        out[norm] = want if want is not None and any(same_eps(e, want) for e in swept) else swept[len(swept) // 2]
    return out


def seed_note(n_seeds: int, spread: str) -> str:
    """How a figure or panel reads its seeds, by the leaderboard's rule (`benchmark.results.files`): with one training
    seed a bar or line is one trained model per defense, not the method; with several it is the mean over seeds and
    `spread` says what its band or error bar is."""
    if n_seeds <= 1:
        return "one training seed: one trained model per defense, not the method"
    return f"mean over {n_seeds} seeds; {spread}"


# ---- families of models ------------------------------------------------------------------------------------
#: The families of models that the figures tell apart, each with its hue (a sequential colormap; its members take
#: shades of it): paper 1's training modes, adversarial fine-tuning, purification, paper 2's defenses, the reference
#: models (the teacher and CommonInit's common model) and `other`. A defense config names its family (`family:`,
#: one of these; checked with the config); one that names none is `other`.
HUES = {
    "reference": "Greys",
    "modes": "Blues",
    "adversarial": "Reds",
    "purification": "Greens",
    "paper2": "Purples",
    "other": "YlOrBr",
}
OTHER = "other"


@dataclass(frozen=True)
class Budget:
    """An attack's budget: the norm (or budget type: dssim, patch), epsilon as a float, and the label it was
    configured with ("16/255"), which names rows and cells."""

    norm: str
    eps: float
    label: str

    @property
    def key(self) -> tuple[str, float]:
        return budget_key(self.norm, self.eps)


def as_json(record) -> dict:
    """`json.dumps`'s `default` for the records: a record's fields, those left at their default left out (its
    `from_json` puts them back)."""
    return {
        f.name: getattr(record, f.name)
        for f in fields(record)
        if f.default is MISSING or getattr(record, f.name) != f.default
    }


# ---- a training stage's job --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Job:
    """What a training stage (teacher, student, CommonInit's common model) runs, as the plan resolved it: plain,
    JSON-able configs, so the same job runs in-process, in a DDP subprocess (`job.json`) or in a cluster job
    (`benchmark.runner.stages.train`). `benchmark.components.job_key_spec` says which fields make its cache key."""

    kind: str  # teacher or student: its cache entry's kind
    name: str  # the defense's name (teacher, common for the teacher stages)
    data_name: str  # the data pair
    data: dict  # the data pair's config
    data_fingerprint: str
    domain: str  # source (a teacher) or target (a student)
    model: dict
    module: dict  # the LightningModule's config
    trainer: dict
    seed: int
    teacher_key: str | None  # a student's teacher (its distillation or start)
    init_key: str | None  # the stage it starts from: an earlier stage of its defense, or CommonInit's common model
    cache_dir: str
    numerics: dict  # the memory layout (`benchmark.numerics.stage_layout`)
    key: str  # its cache key
    public: bool = False  # a public model, loaded instead of trained
    checkpoint: dict | None = None  # the checkpoint file it loads (`benchmark.components.checkpoint_spec`)
    init_kind: str | None = None  # teacher: `init_key` is CommonInit's common model
    wandb: dict | None = None  # the W&B logger's config (no part of its key)

    @classmethod
    def from_json(cls, d: dict) -> Job:
        return cls(**d)


# ---- a cell of the plan ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CellSpec:
    """One attack at one budget on one model, resolved once by the plan.

    `attack` is the recipe the executor builds the attack from ({"cfg", "eps", "changes"}, JSON), once per process;
    everything the rows need to know about the attack (`name`, `budget`, `threat_model`, `steps`, ...) is here, so no
    later floor builds it again. `role`: `attack` (a row), `reference` (the white-box counterpart of a transfer
    attack), or a sanity check of a randomized model (`frozen`, `x2`, `unbounded`). The sanity cell `unbounded`
    carries its own budget (eps = 1, label "1").
    """

    id: str
    pair: str
    model: str  # the stage id of the model under attack
    defense: str
    seed: int
    entry: str  # the attack's config name in the sweep
    role: str
    attack: dict
    name: str  # the row's attack name (`pgd_linf`, `pgd_linf_x2`, `sanity_unbounded`, ...)
    budget: Budget
    threat_model: str  # white-box, transfer, mimicry, agnostic, ...; "sanity" for the checks' cells
    surrogate: str  # a crafted attack's surrogate (teacher, common); "" for white-box
    steps: int
    crafted: bool
    transfer: bool
    targeted: bool  # a targeted crafted attack (mimicry): its rows report targeted success
    reject_aware: bool  # aimed at a rejecting model's accept/reject decision
    n: int
    randomized: bool
    draws: int
    craft: str | None = None  # the craft stage of a crafted attack
    reference: str | None = None  # a transfer cell's white-box reference cell
    base: str | None = None  # a sanity cell's base cell

    @classmethod
    def from_json(cls, d: dict) -> CellSpec:
        return cls(**{**d, "budget": Budget(**d["budget"])})


# ---- a results row -----------------------------------------------------------------------------------------
@dataclass
class Row:
    """One row of results.csv: its fields are the columns, in order. A model's fields, the cell's attack and
    budget, the metrics of its outcome, the checks' flags."""

    row_id: str = ""
    experiment: str = ""
    pair: str = ""
    source: str = ""
    target: str = ""
    model: str = ""
    defense: str = ""
    mode: str = ""
    seed: int = 0
    model_key: str = ""
    attack: str = ""
    threat_model: str = ""  # white-box, transfer, sanity, or "union: a+b+..." for the worst case
    surrogate: str = ""
    norm: str = ""
    eps: float = math.nan
    eps_label: str = ""
    steps: int = 1
    examples: str = ""
    clean_acc: float = math.nan
    robust_acc: float | None = math.nan
    robust_acc_worst_of_k: float | None = math.nan
    success_rate: float | None = math.nan
    fooling_rate: float | None = None
    n_examples: int = 0
    draws: int = 1
    robust_acc_ci_low: float | None = math.nan
    robust_acc_ci_high: float | None = math.nan
    # a targeted attack (mimicry): the share of clean-correct examples assigned to their target class under attack
    targeted_success: float | None = None
    # a model that may reject (`benchmark.runner.stages.score.abstention`): empty for the others
    clean_acc_accepted: float | None = None
    false_rejection_rate: float | None = None
    defense_rate: float | None = None
    adv_rejection_rate: float | None = None
    transfer_acc: float | None = None
    transferability: float | None = None
    transferability_form: str | None = None
    # the white-box attack the transferability is relative to: another entry of the sweep (`reference` in the attack's
    # config), or None: the transfer attack's own inner attack run white-box on the model
    transfer_reference: str | None = None
    transferability_success_ratio: float | None = None
    transferability_accuracy_drop: float | None = None
    detection_auroc: float | None = None
    attack_seconds: float | None = None
    wall_seconds: float | None = None
    forward_passes: int | None = None
    backward_passes: int | None = None
    train_seconds: float | None = None
    prep_seconds: float | None = None
    randomized_defense: bool = False
    nondifferentiable_defense: bool = False
    sanity_reference: float | None = None
    cached: bool = False
    flags: str = ""
    #: Not a column: the cell a row was scored from (None for a worst-case row or a row read from results.csv).
    cell: CellSpec | None = field(default=None, repr=False, compare=False)

    @property
    def flag_list(self) -> list[str]:
        return [f for f in self.flags.split(";") if f]

    @property
    def budget_key(self) -> tuple[str, float]:
        return budget_key(self.norm, self.eps)

    def csv(self) -> dict:
        """The results.csv columns of the row."""
        d = asdict(self)
        d.pop("cell")
        return d

    @classmethod
    def from_csv(cls, record: dict[str, str]) -> Row:
        """A row read back from results.csv (the strings `csv.DictReader` gives), typed as written."""
        return cls(**{name: _parse(record.get(name, ""), kind) for name, kind in _TYPES.items() if name in record})


COLUMNS = [f.name for f in fields(Row) if f.name != "cell"]
_TYPES = {name: kind for name, kind in typing.get_type_hints(Row).items() if name != "cell"}


def _parse(text: str, kind):
    """One results.csv cell as its field's type: "" is None for an optional field, "True"/"False" a bool."""
    args = typing.get_args(kind) if isinstance(kind, types.UnionType) else ()
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), kind)
    if text == "" or text == "None":
        return None if optional or base is not str else ""
    if base is bool:
        return text == "True"
    if base is int:
        return int(float(text))
    return base(text)
