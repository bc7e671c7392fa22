"""Where a sweep's time went: training, preparation, crafting and attacks per attack family (fresh work only).

Each stage's seconds are added to the executor's counts as `seconds/<kind>` when it runs, so the counts that
worker processes and cluster jobs hand back carry them too; `split` takes them out for run_stats.json. Beside the
stage's own timing (the fit, the attack) come the whole stage's wall-clock and CPU seconds (`stage/<kind>`,
`cpu/<kind>`: data, model loading and scoring included; the CPU seconds of the process, which a busy shared machine
does not inflate as it does the wall clock): what `benchmark.runner.estimate` prices, and checks itself against.
"""

from __future__ import annotations

from benchmark.runner.plan import Stage

PREFIX = "seconds/"
#: The whole stage's wall-clock and CPU seconds, and their names in run_stats.json.
WHOLE = {"stage/": "stage_seconds_by_kind", "cpu/": "cpu_seconds_by_kind"}


def kind_of(stage: Stage) -> str:
    """The kind of work a stage is, as run_stats.json names it: train, craft, attack/<entry>, sanity."""
    if stage.kind in ("teacher", "student"):
        return "train"
    if stage.kind == "craft":
        return "craft"
    cell = stage.cell
    return "sanity" if cell.role in ("frozen", "x2", "unbounded") else f"attack/{cell.entry}"


def whole(stage: Stage, wall: float, cpu: float) -> dict[str, float]:
    """A computed stage's whole wall-clock and CPU seconds, keyed `stage/<kind>` and `cpu/<kind>`."""
    kind = kind_of(stage)
    return {f"stage/{kind}": wall, f"cpu/{kind}": cpu}


def charge(stage: Stage, done) -> dict[str, float]:
    """Seconds of `stage` if this process computed it (a cache hit costs nothing), keyed `seconds/<kind>`."""
    sid, out = stage.id, {}
    if stage.kind in ("teacher", "student"):
        meta = done.trained.get(sid) or {}
        if not meta.get("cached", True):
            out["train"] = meta.get("fit_seconds") or 0.0
            prep = meta.get("prep") or {}
            if prep and not prep.get("cached", True):
                out["prepare"] = prep.get("seconds") or 0.0
    elif stage.kind == "craft":
        meta = done.metas.get(sid) or {}
        if meta.get("cached") is False:
            out["craft"] = meta.get("attack_seconds") or 0.0
    else:
        meta = done.metas.get(sid) or {}
        if meta and not meta.get("cached", True):
            cell = stage.cell
            key = "sanity" if cell.role in ("frozen", "x2", "unbounded") else f"attack/{cell.entry}"
            out[key] = meta.get("wall_seconds") or 0.0
    return {PREFIX + k: v for k, v in out.items()}


def split(stats: dict) -> tuple[dict, dict[str, float], dict[str, dict[str, float]]]:
    """(the counts without the seconds, the seconds by kind rounded to 0.1 s, {run_stats name: the whole stages'
    wall-clock or CPU seconds by kind})."""

    def by_kind(prefix: str) -> dict[str, float]:
        return {k[len(prefix) :]: round(v, 1) for k, v in sorted(stats.items()) if k.startswith(prefix)}

    counts = {k: v for k, v in stats.items() if not k.startswith((PREFIX, *WHOLE))}
    return counts, by_kind(PREFIX), {name: by_kind(prefix) for prefix, name in WHOLE.items()}
