"""Where a sweep's time went: training, preparation, crafting and attacks per attack family (fresh work only).

Each stage's seconds are added to the executor's counts as `seconds/<kind>` when it runs, so the counts that
worker processes and cluster jobs hand back carry them too; `split` takes them out for run_stats.json.
"""

from __future__ import annotations

PREFIX = "seconds/"


def charge(stage: dict, done) -> dict[str, float]:
    """Seconds of `stage` if this process computed it (a cache hit costs nothing), keyed `seconds/<kind>`."""
    sid, out = stage["id"], {}
    if stage["kind"] in ("teacher", "student"):
        meta = done.trained.get(sid) or {}
        if not meta.get("cached", True):
            out["train"] = meta.get("fit_seconds") or 0.0
            prep = meta.get("prep") or {}
            if prep and not prep.get("cached", True):
                out["prepare"] = prep.get("seconds") or 0.0
    elif stage["kind"] == "craft":
        meta = done.metas.get(sid) or {}
        if meta.get("cached") is False:
            out["craft"] = meta.get("attack_seconds") or 0.0
    else:
        meta = done.metas.get(sid) or {}
        if meta and not meta.get("cached", True):
            cell = stage["cell"]
            key = "sanity" if cell.role in ("frozen", "x2", "unbounded") else f"attack/{cell.entry}"
            out[key] = meta.get("wall_seconds") or 0.0
    return {PREFIX + k: v for k, v in out.items()}


def split(stats: dict) -> tuple[dict, dict[str, float]]:
    """(the counts without the seconds, the seconds by kind rounded to 0.1 s)."""
    counts = {k: v for k, v in stats.items() if not k.startswith(PREFIX)}
    seconds = {k[len(PREFIX) :]: round(v, 1) for k, v in sorted(stats.items()) if k.startswith(PREFIX)}
    return counts, seconds
