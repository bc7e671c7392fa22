"""What a run will cost, before it runs: the stages and cells to compute, how many the cache already holds, and a
rough estimate of the time (`python -m benchmark.run --plan`; the runner prints the same summary first).

The estimate is a per-architecture rule, not a history: each stage's work is counted in example-passes through the
model (training: epochs x training examples x (1 + the training attack's steps); an attack: examples x steps x EOT
samples x restarts, plus the scoring draws), and priced at the default benchmark's measured cost per example-pass
(`make bench` on digits: 205 s for about 1.54 M example-passes on a quiet 2-core CPU, two workers) times how much
slower one forward-backward pass of the sweep's model at the pair's image size is than the default CNN's on 16 px
digits, both timed here, now. It is rough (data loading, purifiers and generators are not counted) and, on a GPU,
pessimistic (its constant is a CPU's); what it gets right is the scale a model and an image size bring: a timm
ResNet on 16 px digits costs about ten times the default CNN.
"""

from __future__ import annotations

import time
from collections import Counter

import torch

#: Seconds per example-pass of the default benchmark (digits, small CNN, 16 px) on a 2-core CPU with two workers.
DEFAULT_SECONDS_PER_PASS = 205 / 1.54e6
#: `make bench` on the default experiments takes about 5 minutes on a 2-core CPU; a run estimated above this many
#: seconds is far beyond it, and the runner says so before it starts.
FAR_BEYOND_SECONDS = 15 * 60
#: The kinds of stage as the summary names them.
KINDS = {"teacher": "training", "student": "training", "craft": "crafted sets", "cell": "attack cells"}


def _pass(model_cfg: dict, data_cfg: dict, device, batch: int = 64):
    """One forward-backward pass of a model on a batch of the pair's target images, as a function."""
    from benchmark.stages.build import build_datamodule, build_model

    dm = build_datamodule(data_cfg)
    dm.setup()
    x, y = dm.tensors("target", "train", batch)
    model = build_model(model_cfg, dm).to(device)
    x, y = x.to(device).requires_grad_(True), y.to(device)

    def run():
        torch.nn.functional.cross_entropy(model(x), y).backward()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return run


def relative_cost(cfg: dict, pair: str, repeats: int = 7) -> float:
    """How many times slower a pass of the sweep's model on the pair is than the default CNN's on digits: the
    fastest of `repeats` passes of each, timed in turn (a burst of load on a shared machine hits both alike)."""
    from benchmark.config import compose
    from benchmark.execute import device_of

    device = device_of(cfg["eval"]["device"])
    ref = compose(["experiment=digits", "logger=none"])
    if (cfg["model"], cfg["data"][pair]) == (ref["model"], ref["data"]["digits"]):
        return 1.0
    passes = [_pass(cfg["model"], cfg["data"][pair], device), _pass(ref["model"], ref["data"]["digits"], device)]
    best = [float("inf")] * 2
    for _ in range(repeats):
        for i, run in enumerate(passes):
            start = time.perf_counter()
            run()
            best[i] = min(best[i], time.perf_counter() - start)
    return best[0] / best[1]


def _train_passes(job: dict, sizes: dict) -> float:
    """Example-passes of a training stage: epochs x examples x (1 + its training attack's steps)."""
    if job.get("public"):
        return 0.0
    module = job["module"]
    attack = module.get("train_attack") or {}
    steps = attack.get("steps", module.get("steps", 0)) or 0
    epochs = (job.get("trainer") or {}).get("max_epochs") or 1
    return epochs * sizes.get(job["domain"], 0) * (1 + steps)


def _attack_passes(spec: dict, n: int, draws: int = 1) -> float:
    """Example-passes of an attack cell or crafted set: examples x steps x EOT x restarts, plus the scoring draws."""
    attack = {**spec["cfg"], **spec.get("changes", {})}
    inner = attack.get("attack") if isinstance(attack.get("attack"), dict) else {}  # a transfer attack's
    steps = attack.get("steps", inner.get("steps", 1)) or 1
    eot = attack.get("eot", inner.get("eot", 1)) or 1
    restarts = attack.get("restarts", inner.get("restarts", 1)) or 1
    if str(attack.get("_target_", "")).endswith("AutoAttack"):  # APGD-CE and -DLR (rand: EOT 20) or the cascade
        steps, eot = 2 * attack.get("steps", 100), (20 if attack.get("version") == "rand" else 4)
    return n * steps * eot * restarts + n * draws


def summary(cfg: dict, plan) -> dict:
    """Per kind of stage: how many, how many cached, how many to compute; and the estimated seconds of the rest."""
    from benchmark.cache import Cache
    from benchmark.execute import stage_entry

    cache = Cache(cfg["cache_dir"])
    counts: dict[str, Counter] = {}
    passes = 0.0
    for stage in plan.stages:
        kind = KINDS[stage["kind"]]
        cached = cache.exists(*stage_entry(stage))
        counts.setdefault(kind, Counter())["cached" if cached else "to compute"] += 1
        if cached:
            continue
        if stage["kind"] in ("teacher", "student"):
            passes += _train_passes(stage["job"], plan.pairs[stage["job"]["data_name"]].get("train_sizes", {}))
        elif stage["kind"] == "craft":
            passes += _attack_passes(stage["attack"], stage["n"])
        elif not stage["cell"].crafted:  # a crafted attack's cell only scores its examples
            cell = stage["cell"]
            passes += _attack_passes(cell.attack, cell.n, cell.draws)
    ratio = relative_cost(cfg, next(iter(plan.pairs))) if passes else 1.0
    return {
        "stages": len(plan),
        "by_kind": {k: dict(v) for k, v in counts.items()},
        "example_passes": passes,
        "relative_cost": ratio,
        "estimated_seconds": passes * DEFAULT_SECONDS_PER_PASS * ratio,
    }


def describe(s: dict) -> list[str]:
    """The summary as lines for the console."""
    lines = [f"{s['stages']} stages:"]
    for kind, c in s["by_kind"].items():
        lines.append(f"  {kind}: {c.get('to compute', 0)} to compute, {c.get('cached', 0)} cached")
    est = s["estimated_seconds"]
    if est:
        lines.append(
            f"estimated time: about {_duration(est)} on a 2-core CPU ({s['example_passes']:,.0f} example-passes, the "
            f"model {s['relative_cost']:.1f}x the default CNN's cost; a rough rule, see benchmark/estimate.py)"
        )
    else:
        lines.append("nothing to compute: every stage is cached")
    return lines


def far_beyond(s: dict) -> str | None:
    """A warning when the estimate is far beyond the default benchmark's few minutes."""
    if s["estimated_seconds"] <= FAR_BEYOND_SECONDS:
        return None
    return (
        f"this run is estimated at about {_duration(s['estimated_seconds'])}, far beyond the default benchmark's "
        "5 minutes on a 2-core CPU: narrow it (defense=..., attack=..., eval.n_examples=...), use a GPU, or go on"
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
