"""Rows: the typed results of a sweep, one per (pair, model, attack, norm, epsilon), and the per-example data.

`Row`'s fields are the columns of results.csv, in order. `make_rows` turns executed cells into rows, applies every
check (`benchmark.checks`), and adds the per-example worst case; the report and W&B read rows only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from attacks.base import parse_eps
from benchmark import checks
from benchmark.detection import detection_auroc
from benchmark.execute import Executed
from benchmark.plan import Plan, make_attack
from benchmark.stages.score import metrics, per_example, targeted_success, transferability, worst_case


@dataclass
class Row:
    row_id: str
    experiment: str
    pair: str
    source: str
    target: str
    model: str
    defense: str
    mode: str
    seed: int
    model_key: str
    attack: str
    threat_model: str  # white-box, transfer, sanity, or "union: a+b+..." for the worst case
    surrogate: str
    norm: str
    eps: float
    eps_label: str
    steps: int
    examples: str
    clean_acc: float
    robust_acc: float
    robust_acc_worst_of_k: float
    success_rate: float
    fooling_rate: float | None
    n_examples: int
    draws: int
    robust_acc_ci_low: float
    robust_acc_ci_high: float
    # a targeted attack (mimicry): the share of clean-correct examples assigned to their target class under attack
    targeted_success: float | None = None
    # a model that may reject (`benchmark.stages.score.abstention`): empty for the others
    clean_acc_accepted: float | None = None
    false_rejection_rate: float | None = None
    defense_rate: float | None = None
    adv_rejection_rate: float | None = None
    transfer_acc: float | None = None
    transferability: float | None = None
    transferability_form: str | None = None
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


COLUMNS = [f.name for f in fields(Row)]
#: Row fields that describe one attack's run; empty in the per-example worst-case rows.
PER_ATTACK_FIELDS = (
    "transfer_acc",
    "transferability",
    "transferability_form",
    "transferability_success_ratio",
    "transferability_accuracy_drop",
    "detection_auroc",
    "attack_seconds",
    "wall_seconds",
    "forward_passes",
    "backward_passes",
)
ROW_NAMES = {"attack": None, "x2": "{entry}_x2", "frozen": "sanity_frozen_randomness", "unbounded": "sanity_unbounded"}


def row_id(pair: str, defense: str, seed: int, attack: str, norm: str, eps_label: str) -> str:
    return f"{pair}/{defense}/seed{seed}/{attack}/{norm}/{eps_label}"


def _train_seconds(plan: Plan, done: Executed, stage_id: str) -> float | None:
    """A model's training cost, including the earlier stages it starts from (`init_from`)."""
    meta = done.trained.get(stage_id) or {}
    own = meta.get("fit_seconds")
    earlier = [d for d in plan.stage(stage_id)["deps"] if plan.stage(d)["kind"] == "student"]
    return None if own is None else own + sum(_train_seconds(plan, done, d) or 0.0 for d in earlier)


def _model_row(cfg: dict, plan: Plan, done: Executed, stage: dict) -> dict:
    """The fields every row of one model shares."""
    info = plan.pairs[stage["job"]["data_name"]]
    meta = done.trained.get(stage["id"]) or {}
    return {
        "experiment": cfg["name"],
        "pair": stage["job"]["data_name"],
        "source": info["source"],
        "target": info["target"],
        "model": cfg["model"]["backbone"],
        "defense": stage["defense"],
        "mode": stage["job"]["module"].get("mode", "pretrain"),
        "seed": stage["seed"],
        "model_key": stage["key"],
        "train_seconds": _train_seconds(plan, done, stage["id"]),
        "prep_seconds": (meta.get("prep") or {}).get("seconds"),
        "randomized_defense": bool(meta.get("randomized", False)),
        "nondifferentiable_defense": bool(meta.get("nondifferentiable", False)),
    }


def _examples(n: int) -> str:
    return f"first {n} target test examples"


def make_rows(cfg: dict, plan: Plan, done: Executed) -> tuple[list[dict], dict[str, dict]]:
    """Rows of every executed cell (with transferability, sanity checks and worst case) and the per-example
    outcomes by row id: {"clean": [...], "robust": [...]}, fractions of draws in [0, 1]."""
    rows, examples = [], {}
    form = cfg["report"]["transferability"]
    for model in (s for s in plan.stages if s["kind"] in ("teacher", "student")):
        cells = [s for s in plan.stages if s["kind"] == "cell" and s["model"] == model["id"]]
        if not cells:
            continue
        base = _model_row(cfg, plan, done, model)
        made: list[tuple[dict, dict, dict]] = []  # (row, outcome, cell)
        for cell in cells:
            if cell["role"] == "reference":
                continue
            out, meta = done.outcomes[cell["id"]], done.metas[cell["id"]]
            attack = make_attack(cell["attack"])
            transfer = attack.name == "transfer"
            crafted = attack.crafted
            name = ROW_NAMES[cell["role"]] or cell["entry"]
            label = "1" if cell["role"] == "unbounded" else cell["attack"]["eps"]
            row = {
                **base,
                "row_id": row_id(
                    base["pair"], base["defense"], base["seed"], name.format(entry=cell["entry"]), attack.norm, label
                ),
                "attack": name.format(entry=cell["entry"]),
                "threat_model": "sanity" if cell["role"] in ("frozen", "unbounded") else attack.threat_model,
                "surrogate": getattr(attack, "surrogate_name", "") if crafted else "",
                "norm": attack.norm,
                "eps": attack.eps,
                "eps_label": label,
                "steps": getattr(attack, "steps", getattr(getattr(attack, "base", None), "steps", 1)),
                "examples": _examples(cell["n"]),
                **metrics(out),
                **{k: meta.get(k) for k in PER_ATTACK_FIELDS if k in meta},
                "detection_auroc": detection_auroc(out),
                "cached": meta["cached"],
                "flags": ";".join(meta.get("attack_flags") or []),  # the attack's own checks (AutoAttack's)
            }
            if getattr(attack, "targeted", False) and hasattr(attack, "target_classes"):
                row["targeted_success"] = _targeted(attack, plan, done, cell, out)
            if transfer and cell["reference"]:
                row.update(transferability(out, done.outcomes[cell["reference"]], form))
            elif transfer:  # randomized: no white-box counterpart of the same attack; the accuracy only
                row["transfer_acc"] = row["robust_acc"]
            made.append((row, out, cell))
        _checks(made, done)
        worst = _worst_case(made, base)
        checks.abstaining_without_adaptive_attack(
            [(r, o, make_attack(c["attack"])) for r, o, c in made], [r for r, _ in worst]
        )
        rows += [r for r, _, _ in made]
        examples.update({r["row_id"]: _lists(o) for r, o, _ in made})
        for row, out in worst:
            rows.append(row)
            examples[row["row_id"]] = _lists(out)
    checks.cross_row_flags(rows)
    rows = [asdict(Row(**{k: r.get(k) for k in COLUMNS if k in r})) for r in rows]
    return rows, examples


def _targeted(attack, plan: Plan, done: Executed, cell: dict, out: dict) -> float | None:
    """A targeted crafted attack's success rate on this model: the target classes are recomputed from the
    evaluation examples (`MimicryAttack.target_classes`: keyed on each example's pixels, as when it was crafted)."""
    data = done.data.get(cell["pair"])
    if data is None or "pred_adv" not in out:
        return None
    x, y = data
    n = cell["n"]
    targets = attack.target_classes(x[:n], y[:n], plan.pairs[cell["pair"]]["num_classes"])
    return targeted_success(out, targets)


def _lists(out: dict) -> dict:
    p = per_example(out)
    return {"clean": [round(float(v), 6) for v in p["clean"]], "robust": [round(float(v), 6) for v in p["robust"]]}


def _checks(made: list[tuple[dict, dict, dict]], done: Executed) -> None:
    """The per-example checks of one model (`benchmark.checks`)."""
    whitebox = [(r, o) for r, o, _ in made if r["threat_model"] == "white-box"]
    for row, out, cell in made:
        if cell["craft"]:  # crafted without the student (transfer, mimicry, agnostic): must not beat white-box
            checks.transfer_vs_whitebox(row, out, whitebox)
        base = done.outcomes.get(cell.get("base", ""))
        if cell["role"] == "frozen":
            checks.frozen_randomness(row, out, base)
        elif cell["role"] == "x2":
            checks.converged(row, out, base)
        elif cell["role"] == "unbounded":
            checks.unbounded(row, out)


def _worst_case(made: list[tuple[dict, dict, dict]], base: dict) -> list[tuple[dict, dict]]:
    """Per example, the worst case over every attack that shares a norm and epsilon (the union threat model).

    The row covers the examples that a white-box attack ran on (the first n of the white-box attack with the
    most examples): an example that only a transfer attack reached would otherwise count as robust against
    the weakest threat. An attack run on fewer examples (an expensive one) joins the worst case of those.
    """
    groups: dict[tuple, list[tuple[dict, dict]]] = {}
    for row, out, _ in made:
        if row["threat_model"] != "sanity":
            groups.setdefault((row["norm"], round(row["eps"], 10)), []).append((row, out))
    result = []
    for (norm, eps), members in groups.items():
        if len(members) < 2:
            continue
        whitebox = [m for m in members if m[0]["threat_model"] == "white-box"] or members
        n = max(int(r["n_examples"]) for r, _ in whitebox)
        out = worst_case([o for _, o in members], n)
        label = members[0][0]["eps_label"]
        row = {
            **base,
            **dict.fromkeys(PER_ATTACK_FIELDS),
            "row_id": row_id(base["pair"], base["defense"], base["seed"], "worst_case", norm, label),
            "attack": "worst_case",
            "threat_model": "union: " + "+".join(r["attack"] for r, _ in members),
            "surrogate": "",
            "norm": norm,
            "eps": parse_eps(eps),
            "eps_label": label,
            "steps": max(int(r["steps"]) for r, _ in members),
            "examples": _examples(n) + " (each example: every attack that ran on it)",
            **metrics(out),
            "cached": all(r["cached"] for r, _ in members),
            "flags": "",
        }
        result.append((row, out))
    return result
