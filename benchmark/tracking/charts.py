"""What W&B shows of a sweep: metric names of the evaluation runs, and the native charts and long table of the sweep
run. Shared by tracking (which logs them) and the dashboard (whose panels read the same names)."""

from __future__ import annotations

import statistics
from typing import Any

from attacks.base import eps_tag
from benchmark.records import UNIONS, eps_axis, eps_str, seed_note
from benchmark.results.files import PairResults, number

#: The defense whose clean accuracy `test/clean_cost` is measured against (as in the leaderboard).
CLEAN_BASE = "finetune"


def metric_tag(attack: str, norm: str, eps: float) -> str:
    """A row's name in metric keys: `pgd_linf_8` (8/255), `pgd_l2_0.5`, `worst_case_linf_16`."""
    return f"{curve_tag(attack, norm)}_{eps_tag(eps, norm)}"


def curve_tag(attack: str, norm: str) -> str:
    """An attack in metric keys; the worst case, which spans the attacks of a norm, with its norm."""
    return f"{attack}_{norm}" if attack in UNIONS else attack


def model_clean(rows: list[dict]) -> float | None:
    """A model's clean accuracy: from its row with the most examples (attacks may run on the first n only)."""
    return number(max(rows, key=lambda r: r.n_examples).clean_acc)


def eval_metrics(rows: list[dict], clean_base: float | None = None) -> dict[str, float]:
    """W&B metric names of one evaluated model and their values (blanks left out):

    - `test/clean_acc`; `test/clean_cost` (clean accuracy minus `clean_base`, plain fine-tuning's) when given;
    - per row: `test/robust_acc/<tag>`, `test/success_rate/<tag>`, `test/robust_acc_worst_of_k/<tag>` (a
      randomized model), `test/transfer/<tag>/acc` and `.../transferability` (a transfer attack),
      `test/detection_auroc/<tag>`, `cost/attack_seconds/<tag>`, `cost/forward_passes/<tag>`,
      `cost/backward_passes/<tag>`; `<tag>` as in `metric_tag` (`pgd_linf_8`);
    - per model: `cost/train_seconds`, `cost/prep_seconds`.
    """
    clean = model_clean(rows)
    out = {"test/clean_acc": clean}
    if clean_base is not None and clean is not None:
        out["test/clean_cost"] = clean - clean_base
    for r in rows:
        tag = metric_tag(r.attack, r.norm, r.eps)
        out[f"test/robust_acc/{tag}"] = number(r.robust_acc)
        out[f"test/success_rate/{tag}"] = number(r.success_rate)
        if int(number(r.draws) or 1) > 1:  # a randomized model: the worst of K draws beside their mean
            out[f"test/robust_acc_worst_of_k/{tag}"] = number(r.robust_acc_worst_of_k)
        if r.threat_model == "transfer":
            out[f"test/transfer/{tag}/acc"] = number(r.transfer_acc)
            out[f"test/transfer/{tag}/transferability"] = number(r.transferability)
        out[f"test/detection_auroc/{tag}"] = number(r.detection_auroc)
        for field in ("attack_seconds", "forward_passes", "backward_passes"):
            out[f"cost/{field}/{tag}"] = number(getattr(r, field))
    for field in ("train_seconds", "prep_seconds"):
        out[f"cost/{field}"] = number(getattr(rows[0], field))
    return {k: v for k, v in out.items() if v is not None}


def eval_curves(rows: list[dict]) -> list[dict[str, float]]:
    """History rows that draw robust accuracy against epsilon in W&B (the metric values are single numbers in
    the summary; a line over epsilon needs one logged step per budget): per norm and budget, in increasing
    order, `curve/eps_<norm>` (L-inf in 1/255 units, L2 as is) and `curve/robust_acc/<attack>` of every attack
    of that norm with two or more budgets (the worst case as `worst_case_<norm>`; no sanity check)."""
    swept: dict[tuple[str, str], dict[float, float]] = {}
    for r in rows:
        if r.threat_model != "sanity" and (acc := number(r.robust_acc)) is not None:
            swept.setdefault((r.norm, curve_tag(r.attack, r.norm)), {})[r.budget_key[1]] = acc
    out = []
    for norm in sorted({n for n, _ in swept}, key=lambda n: n != "linf"):
        lines = {tag: pts for (n, tag), pts in swept.items() if n == norm and len(pts) > 1}
        for eps in sorted({e for pts in lines.values() for e in pts}):
            step = {f"curve/robust_acc/{tag}": pts[eps] for tag, pts in lines.items() if eps in pts}
            if step:
                out.append({f"curve/eps_{norm}": round(eps * 255, 3) if norm == "linf" else eps, **step})
    return out


def evaluated_models(rows: list[dict]) -> list[dict]:
    """The models of a sweep, one per (pair, defense, seed, model key): their rows, W&B metrics (`eval_metrics`,
    the clean cost against plain fine-tuning of the same pair and seed) and curves (`eval_curves`)."""
    models: dict[tuple, list[dict]] = {}
    for r in rows:
        models.setdefault((r.pair, r.defense, str(r.seed), r.model_key or ""), []).append(r)
    base = {(p, s): model_clean(rs) for (p, d, s, _), rs in models.items() if d == CLEAN_BASE}
    return [
        {
            "pair": pair,
            "defense": defense,
            "seed": seed,
            "key": key,
            "rows": rs,
            "metrics": eval_metrics(rs, base.get((pair, seed))),
            "curves": eval_curves(rs),
        }
        for (pair, defense, seed, key), rs in models.items()
    ]


WORST = "worst_case"


#: The columns of the `attack_defense` table (one row per model, attack, norm and budget; no sanity check).
LONG_COLUMNS = (
    "pair", "defense", "seed", "attack", "threat_model", "norm", "eps", "eps_label", "robust_acc",
    "robust_acc_worst_of_k", "clean_acc", "clean_cost", "success_rate", "transferability", "detection_auroc",
    "attack_seconds", "train_seconds", "n_examples", "draws", "flags",
)  # fmt: skip


_INTS = ("seed", "n_examples", "draws")


_TEXT = ("pair", "defense", "attack", "threat_model", "norm", "eps_label", "flags")


# ---- the sweep run's native charts ----------------------------------------------------------------------
def _mean(values: list[float]) -> float | None:
    return statistics.mean(values) if values else None


def sweep_charts(rows: list[dict], headline: dict[str, float]) -> dict[str, Any]:
    """W&B charts by log key, per pair: `charts/<pair>/robust_vs_eps/<attack>` (`wandb.plot.line_series`, a line
    per defense, attacks with two or more budgets), `charts/<pair>/worst_case_<norm>` (`wandb.plot.bar` at the
    headline budget, defenses ranked as in the leaderboard) and `charts/<pair>/clean_cost_vs_robust`
    (`wandb.plot.scatter`: clean accuracy minus plain fine-tuning's, or the clean accuracy without fine-tuning,
    against the worst case at the headline L-inf budget). Values are means over seeds, accuracies in [0, 1];
    `headline`: the budget of each norm as the report resolved it on the rows."""
    import wandb

    charts: dict[str, Any] = {}
    for pair in dict.fromkeys(r.pair for r in rows if r.threat_model != "sanity"):
        res = PairResults([r for r in rows if r.pair == pair])
        seeds = f" ({seed_note(len({str(r.seed) for r in res.rows}), 'no band in this chart')})"
        for attack, norm in res.attacks:
            epss = res.epsilons(attack, norm)
            scale = 255 if norm == "linf" else 1
            lines: dict[str, list[tuple[float, float]]] = {}
            for d in res.defenses:
                for e in epss:
                    if attack == WORST and not res.whitebox_at(d, norm, e):  # as the PNG: see plots.robust_vs_eps
                        continue
                    if (v := _mean(res.values(d, attack, norm, e))) is not None:
                        lines.setdefault(d, []).append((round(e * scale, 3), v))
            if len(epss) < 2 or not lines:
                continue
            charts[f"charts/{pair}/robust_vs_eps/{curve_tag(attack, norm)}"] = wandb.plot.line_series(
                xs=[[x for x, _ in pts] for pts in lines.values()],
                ys=[[y for _, y in pts] for pts in lines.values()],
                keys=list(lines),
                title=f"{pair}: {attack} ({norm}), robust accuracy against epsilon{seeds}",
                xname=eps_axis(norm),
            )
        for norm, eps in headline.items():
            if (WORST, norm) not in res.attacks:
                continue
            e = min(res.epsilons(WORST, norm), key=lambda x: abs(x - eps))
            data = [
                [d, statistics.mean(v), len(v)] for d in res.ranked(headline) if (v := res.values(d, WORST, norm, e))
            ]
            charts[f"charts/{pair}/worst_case_{norm}"] = wandb.plot.bar(
                wandb.Table(columns=["defense", "robust_acc", "seeds"], data=data),
                "defense",
                "robust_acc",
                title=f"{pair}: per-example worst-case robust accuracy at {norm} {eps_str(norm, e)}{seeds}",
            )
        if (scatter := _tradeoff(res, headline, seeds)) is not None:
            charts[f"charts/{pair}/clean_cost_vs_robust"] = scatter
    return charts


def _tradeoff(res, headline: dict[str, float], seeds: str):
    """The clean cost against the worst case at the headline L-inf budget (else the first norm's), or None."""
    import wandb

    norm = "linf" if "linf" in headline else next(iter(headline))
    if (WORST, norm) not in res.attacks:
        return None
    e = min(res.epsilons(WORST, norm), key=lambda x: abs(x - headline[norm]))
    x_name = "clean_cost" if CLEAN_BASE in res.defenses else "clean_acc"
    data = []
    for d in res.defenses:
        x = _mean(res.clean_cost(d, CLEAN_BASE) if x_name == "clean_cost" else res.clean(d))
        y = _mean(res.values(d, WORST, norm, e))
        if x is not None and y is not None:
            data.append([d, x, y])
    what = f"clean accuracy minus {CLEAN_BASE}'s" if x_name == "clean_cost" else "clean accuracy"
    return wandb.plot.scatter(
        wandb.Table(columns=["defense", x_name, "robust_acc"], data=data),
        x_name,
        "robust_acc",
        title=f"{res.first.pair}: {what} against worst-case robust accuracy ({norm} {eps_str(norm, e)}){seeds}",
    )


def long_table(rows: list[dict]) -> tuple[list[str], list[list]]:
    """The `attack_defense` table: `LONG_COLUMNS`, one row per non-sanity row, typed (numbers as floats, blanks
    as None) so that W&B can group and aggregate every column; `clean_cost` is the model's `test/clean_cost`."""
    costs = {
        (m["pair"], m["defense"], m["seed"], m["key"]): m["metrics"].get("test/clean_cost")
        for m in evaluated_models(rows)
    }
    data = []
    for r in rows:
        if r.threat_model == "sanity":
            continue
        cell = {c: number(getattr(r, c, None)) for c in LONG_COLUMNS}  # clean_cost is the model's, set below
        cell.update({c: str(getattr(r, c) or "") for c in _TEXT})
        cell.update({c: int(cell[c]) if cell[c] is not None else None for c in _INTS})
        cell["clean_cost"] = costs[(r.pair, r.defense, str(r.seed), r.model_key or "")]
        data.append([cell[c] for c in LONG_COLUMNS])
    return list(LONG_COLUMNS), data
