"""Where a sweep's time went: training, preparation, crafting and attacks per attack family (fresh work only)."""

from __future__ import annotations

from collections import defaultdict


def breakdown(plan, done) -> dict[str, float]:
    """Seconds of the stages this run computed (cache hits cost nothing), by kind and attack family."""
    out: dict[str, float] = defaultdict(float)
    for stage in plan.stages:
        sid = stage["id"]
        if stage["kind"] in ("teacher", "student"):
            meta = done.trained.get(sid) or {}
            if not meta.get("cached", True):
                out["train"] += meta.get("fit_seconds") or 0.0
                prep = meta.get("prep") or {}
                if prep and not prep.get("cached", True):
                    out["prepare"] += prep.get("seconds") or 0.0
        elif stage["kind"] == "craft":
            meta = done.metas.get(sid) or {}
            if meta.get("cached") is False:
                out["craft"] += meta.get("attack_seconds") or 0.0
        else:
            meta = done.metas.get(sid) or {}
            if meta and not meta.get("cached", True):
                key = "sanity" if stage["role"] in ("frozen", "x2", "unbounded") else f"attack/{stage['entry']}"
                out[key] += meta.get("wall_seconds") or 0.0
    return {k: round(v, 1) for k, v in sorted(out.items())}
