"""Rows: the typed results of a sweep, one per (pair, model, attack, norm, epsilon), and the per-example data.

`make_rows` turns each executed cell (`CellSpec` and its outcome) into a `benchmark.records.Row`, applies every check
(`benchmark.runner.checks`), and adds the per-example worst case; the report, the findings and W&B take the rows in
memory. Everything a row says about its attack comes from the cell's spec: no attack is built here.
"""

from __future__ import annotations

import torch

from benchmark.records import CellSpec, Row
from benchmark.runner import checks
from benchmark.runner.detection import detection_auroc
from benchmark.runner.execute import Executed
from benchmark.runner.plan import Plan, TrainStage
from benchmark.runner.stages.score import (
    metrics,
    per_example,
    target_hits,
    targeted_success,
    transferability,
    worst_case,
)
from datamodules.base import chunks

#: Row fields that describe one attack's run; empty in the per-example worst-case rows.
PER_ATTACK_FIELDS = (
    "transfer_acc",
    "transferability",
    "transferability_form",
    "transfer_reference",
    "transferability_success_ratio",
    "transferability_accuracy_drop",
    "detection_auroc",
    "attack_seconds",
    "wall_seconds",
    "forward_passes",
    "backward_passes",
)


def row_id(pair: str, defense: str, seed: int, attack: str, norm: str, eps_label: str) -> str:
    return f"{pair}/{defense}/seed{seed}/{attack}/{norm}/{eps_label}"


def _train_seconds(plan: Plan, done: Executed, stage_id: str) -> float | None:
    """A model's training cost, including the earlier stages it starts from (`init_from`)."""
    meta = done.trained.get(stage_id) or {}
    own = meta.get("fit_seconds")
    earlier = [d for d in plan.stage(stage_id).deps if plan.stage(d).kind == "student"]
    return None if own is None else own + sum(_train_seconds(plan, done, d) or 0.0 for d in earlier)


def _model_fields(cfg: dict, plan: Plan, done: Executed, stage: TrainStage) -> dict:
    """The fields every row of one model shares."""
    info = plan.pairs[stage.job.data_name]
    meta = done.trained.get(stage.id) or {}
    return {
        "experiment": cfg["name"],
        "pair": stage.job.data_name,
        "source": info["source"],
        "target": info["target"],
        "model": cfg["model"]["backbone"],
        "defense": stage.defense,
        "mode": stage.job.module.get("mode", "pretrain"),
        "seed": stage.seed,
        "model_key": stage.key,
        "train_seconds": _train_seconds(plan, done, stage.id),
        "prep_seconds": (meta.get("prep") or {}).get("seconds"),
        "randomized_defense": bool(meta.get("randomized", False)),
        "nondifferentiable_defense": bool(meta.get("nondifferentiable", False)),
    }


def _examples(n: int) -> str:
    return f"first {n} target test examples"


def _cell_row(model: dict, cell: CellSpec, out: dict, meta: dict) -> Row:
    """The row of one cell: the model's fields, the cell's attack and budget, its outcome's metrics."""
    b = cell.budget
    return Row(
        **model,
        row_id=row_id(model["pair"], model["defense"], model["seed"], cell.name, b.norm, b.label),
        attack=cell.name,
        threat_model=cell.threat_model,
        surrogate=cell.surrogate,
        norm=b.norm,
        eps=b.eps,
        eps_label=b.label,
        steps=cell.steps,
        examples=_examples(cell.n),
        **metrics(out),
        **{k: meta.get(k) for k in PER_ATTACK_FIELDS if k in meta and k != "detection_auroc"},
        detection_auroc=detection_auroc(out),
        cached=meta["cached"],
        flags=";".join(meta.get("attack_flags") or []),  # the attack's own checks (AutoAttack's)
        cell=cell,
    )


def make_rows(cfg: dict, plan: Plan, done: Executed) -> tuple[list[Row], dict[str, dict]]:
    """Rows of every executed cell (with transferability, sanity checks and worst case) and the per-example
    outcomes by row id: {"clean": [...], "robust": [...]}, fractions of draws in [0, 1]; a targeted attack's rows
    add "target_hit" (right when clean and assigned the target class under attack)."""
    rows: list[Row] = []
    examples: dict[str, dict] = {}
    form = cfg["report"]["transferability"]
    for model in (s for s in plan.stages if s.kind in ("teacher", "student")):
        cells = plan.cells(model.id)
        if not cells:
            continue
        fields = _model_fields(cfg, plan, done, model)
        made: list[tuple[Row, dict]] = []
        hits: dict[str, list[float]] = {}  # row id -> a targeted attack's per-example hits
        for cell in cells:
            if cell.role == "reference":
                continue
            out = done.outcomes[cell.id]
            row = _cell_row(fields, cell, out, done.metas[cell.id])
            if cell.targeted and (targets := _targets(plan, done, cell, out)) is not None:
                row.targeted_success = targeted_success(out, targets)
                hits[row.row_id] = _rounded(target_hits(out, targets).float().mean(0))
            if cell.transfer and cell.reference:
                for k, v in transferability(out, done.outcomes[cell.reference], form).items():
                    setattr(row, k, v)
                named = plan.cell(cell.reference).entry
                row.transfer_reference = None if named == cell.entry else named
            elif cell.transfer:  # randomized: no white-box counterpart of the same attack; the accuracy only
                row.transfer_acc = row.robust_acc
            made.append((row, out))
        worst = _worst_case(made, fields)
        checks.model_checks(made, worst, done.outcomes)
        for row, out in [*made, *worst]:
            rows.append(row)
            examples[row.row_id] = _lists(out)
            if row.row_id in hits:
                examples[row.row_id]["target_hit"] = hits[row.row_id]
    checks.cross_row_flags(rows)
    return rows, examples


def _targets(plan: Plan, done: Executed, cell: CellSpec, out: dict) -> torch.Tensor | None:
    """A targeted crafted attack's target classes of the cell's examples, recomputed from the evaluation examples
    (`MimicryAttack.target_classes`: keyed on each example's pixels, as when it was crafted)."""
    data = done.data.get(cell.pair)
    if data is None or "pred_adv" not in out:
        return None
    x, y = data
    attack, n, classes = plan.attack(cell.id), cell.n, plan.pairs[cell.pair]["num_classes"]
    # 256 images at a time: an example's target class depends on its own pixels only
    batches = zip(chunks(x[:n], 256), y[:n].split(256))
    return torch.cat([attack.target_classes(xb, yb, classes) for xb, yb in batches])


def _lists(out: dict) -> dict:
    p = per_example(out)
    return {"clean": _rounded(p["clean"]), "robust": _rounded(p["robust"])}


def _rounded(values: torch.Tensor) -> list[float]:
    """Each value as a float rounded to 6 digits; `round` once per distinct value (fractions of a few draws: a warm
    rerun of `make bench EXPERIMENT=fashion` rounded a million values one by one)."""
    floats = values.double().tolist()  # exactly float() of each element (float32 and bool widen exactly)
    table = {v: round(v, 6) for v in set(floats)}
    return [table[v] for v in floats]  # each NaN object is its own key (dicts compare by identity first)


def _worst_case(made: list[tuple[Row, dict]], fields: dict) -> list[tuple[Row, dict]]:
    """Per example, the worst case over every attack that shares a norm and epsilon (the union threat model), and
    the worst case over the transfer attacks alone (`worst_transfer`, with two or more: the black-box attacker who
    crafts on every surrogate it holds and keeps, per example, what works).

    The union covers the examples that a white-box attack ran on (the first n of the white-box attack with the
    most examples): an example that only a transfer attack reached would otherwise count as robust against
    the weakest threat. An attack run on fewer examples (an expensive one) joins the worst case of those. The
    transfer union covers the examples of its transfer attacks (the most of them).
    """
    groups: dict[tuple, list[tuple[Row, dict]]] = {}
    for row, out in made:
        if row.threat_model != "sanity":
            groups.setdefault(row.budget_key, []).append((row, out))
    result = []
    for members in groups.values():
        whitebox = [m for m in members if m[0].threat_model == "white-box"] or members
        transfer = [m for m in members if m[0].threat_model == "transfer"]
        for name, union, covering in (("worst_case", members, whitebox), ("worst_transfer", transfer, transfer)):
            if len(union) < 2:
                continue
            first = union[0][0]
            n = max(r.n_examples for r, _ in covering)
            out = worst_case([o for _, o in union], n)
            row = Row(
                **fields,
                **dict.fromkeys(PER_ATTACK_FIELDS),
                row_id=row_id(fields["pair"], fields["defense"], fields["seed"], name, first.norm, first.eps_label),
                attack=name,
                threat_model="union: " + "+".join(r.attack for r, _ in union),
                surrogate="",
                norm=first.norm,
                eps=first.budget_key[1],  # the grouping's rounded epsilon, as results.csv has always written it
                eps_label=first.eps_label,
                steps=max(r.steps for r, _ in union),
                examples=_examples(n) + " (each example: every attack that ran on it)",
                **metrics(out),
                cached=all(r.cached for r, _ in union),
                flags="",
            )
            result.append((row, out))
    return result
