"""What a run will cost, before it runs: the stages and cells to compute, how many the cache already holds, and an
estimate of the time with a range (`python -m benchmark.run --plan`; the runner prints the same summary first),
checked against finished runs with `python -m benchmark.runner.estimate RESULTS_DIR [RESULTS_DIR ...]`.

The estimate prices each stage to compute from what it does, in passes of the sweep's model on the pair's images,
timed here in CPU seconds per example (`PassCosts`: a training step, an attack step, a scoring pass; the fastest of
rounds spread over a few seconds, so other processes on a shared machine count little):

- a training stage: per epoch, each training example's pass (`MODULES`: more for SSL's two views and heads, AToP's
  generator) and its training attack's steps, each validation example's scoring pass and the validation attack's
  steps (an adversarial defense validates under its training attack, each epoch), plus per-example and fixed
  overheads (`OVERHEAD`, `FIXED`: the data loader, Lightning, building the data, model and trainer);
- an attack cell: examples x steps x EOT samples x restarts, on a deterministic model the share that its
  clean-correct examples and early stop leave (`EARLY_STOP`, `ONE_STEP`), the scoring draws and the detection
  embeddings, in passes of the deployed model (a purifier before the classifier: timed on the untrained defense,
  `deployed_factor`), plus a fixed cost;
- a crafted set: a transfer attack's steps on the teacher for each example, a universal perturbation's epochs over
  the attacker's data.

The wall time is these stages scheduled on the launcher's workers as they take them (`schedule`: dependencies, the
stages others wait for first), plus the run's fixed cost (start, reports, W&B). The range is the same schedule with
every attack stopping as early as it can and with every attack running all its steps: which one a run is near
depends on the models' robustness, which no estimate knows beforehand.

What it left out before (and why `make bench` took about twice its estimate): the validation passes and validation
attacks of adversarial training, each stage's and each run's fixed costs (280 stages in `digits`), universal
perturbations' epochs over the attacker's data, the deployed model's cost (AToP's purifier: 3 to 6 classifier
passes), SSL's views, AutoAttack's EOT and the scoring draws; and it priced passes at one constant measured on one
machine. The constants here were fitted on measured runs: `make bench`'s experiments narrowed to 128 test images,
one seed of `fashion_shift`, and `fashion_rgb32` (ResNet-18); docs/running.md has the figures.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path

from hydra.utils import get_object
from omegaconf import OmegaConf

from benchmark.components import build_datamodule
from benchmark.records import Job
from benchmark.runner.cache import Cache
from benchmark.runner.execute import stage_entry
from benchmark.runner.launchers.workers import layout
from benchmark.runner.pass_costs import PassCosts, deployed_factor, pass_costs
from benchmark.runner.plan import CraftStage, Plan, Stage
from benchmark.runner.timing import kind_of
from defenses.base import AdversarialStudent, TrainAttack

#: A run estimated above this many seconds is far beyond the default benchmark's few minutes; the runner says so.
FAR_BEYOND_SECONDS = 15 * 60
#: The kinds of stage as the summary names them.
KINDS = {"teacher": "training", "student": "training", "craft": "crafted sets", "cell": "attack cells"}
#: The share of a deterministic model's attack work that is done, for the point estimate and the range: an attack
#: runs on the clean-correct examples only, and an iterative one stops on an example once it is fooled. Measured
#: (the cells' backward passes over every step of every example): 0.41-0.58 for PGD on digits' models, 0.43 for PGD
#: and 0.28 for PGD-L2 on one seed of fashion_shift, 0.29 on fashion_rgb32's; the range runs from a non-robust
#: model's (a step or two) to a robust one's (every step).
EARLY_STOP = {"point": 0.35, "low": 0.15, "high": 1.0}
#: The share for a one-step attack: its clean-correct examples (0.87 on digits, 0.65 on fashion_shift).
ONE_STEP = {"point": 0.87, "low": 0.8, "high": 1.0}
#: Per-example overheads, in reference passes (`PassCosts.ref`: the default CNN's training step on a 16 px digit):
#: a training step's besides the pass (data loading, Lightning, the optimizer), an attack step's (projection, checks).
OVERHEAD = {"train": 1.0, "step": 0.3}
#: Fixed costs in reference passes: a training stage's (its data, model and trainer), an attack cell's and a crafted
#: set's (loading the model, reading the examples), a run's (start, plan, reports, W&B).
FIXED = {"train": 2000.0, "cell": 60.0, "craft": 400.0, "run": 60000.0}
#: How many classifier passes a training example of these modules costs: two augmented views and the heads (SSL;
#: SimCLR's encoder on digits and on fashion_ssl).
MODULES = {"SimCLR": 4.0, "BYOL": 4.0, "MoCoV2": 4.0}
#: A student's training step with frozen layers (`mode`): the backward pass stops at the first trained layer
#: (fashion_rgb32's freeze, layer4 and the head trained: 0.55 of finetune's time).
MODES = {"freeze": 0.55, "linear_probe": 0.4}
#: A training example of these modules costs this many passes of their deployed model (AToP: the generator, and the
#: discriminator at a GAN weight above 0, beside the classifier: 4.4 classifier passes on digits, whose purified
#: model costs 3; about 5 on Fashion-MNIST at GAN weight 0, whose purified model costs 5.6).
TRAIN_PER_DEPLOYED = {"AToP": 1.0}
#: AutoAttack's own work besides its counted steps (APGD's checks, the cascade's bookkeeping).
AUTOATTACK = 1.5


def relative_cost(cfg: dict, pair: str) -> float:
    """How many times the default CNN's training step on a 16 px digit one of the sweep's model on the pair costs."""
    costs = pass_costs(cfg, pair)
    return costs.train / costs.ref


# ---- the work of each stage ----------------------------------------------------------------------------------------
def _class_name(module: dict) -> str:
    return str(module.get("_target_", "")).rsplit(".", 1)[-1]


def _train_steps(module: dict) -> tuple[int, int]:
    """(the training attack's steps per example, the validation attack's): 0, 0 for a module that does not train
    on adversarial examples."""
    target = module.get("_target_")
    try:
        cls = get_object(target) if target else None
    except Exception:  # noqa: BLE001 - an unknown target is the config check's business
        cls = None
    if cls is None or not (isinstance(cls, type) and issubclass(cls, AdversarialStudent)):
        return 0, 0
    given = module.get("train_attack") or {}
    steps = int(given.get("steps", cls.train_attack_defaults.get("steps", TrainAttack.steps)))
    return steps, (0 if "val_attack" in module and module["val_attack"] is None else steps)


def train_seconds(job: Job, info: dict, costs: PassCosts, deployed: float = 1.0) -> float:
    """CPU seconds of a training stage (a public model's: its fixed cost alone): per epoch, each training example's
    passes (the module's) and its training attack's steps, each validation example's scoring pass and validation
    attack's steps; plus the stage's fixed cost."""
    fixed = FIXED["train"] * costs.ref
    if job.public:
        return fixed
    module = job.module
    epochs = job.trainer.get("max_epochs") or 1
    n_train = info.get("train_sizes", {}).get(job.domain, 0)
    n_val = info.get("val_sizes", {}).get(job.domain, 0)
    steps, val_steps = _train_steps(module)
    step = costs.grad + OVERHEAD["step"] * costs.ref
    name = _class_name(module)
    passes = MODULES.get(name, 1.0) * max(1.0, TRAIN_PER_DEPLOYED.get(name, 0.0) * deployed)
    passes *= MODES.get(module.get("mode"), 1.0)
    train = passes * (costs.train + OVERHEAD["train"] * costs.ref)
    per_epoch = n_train * (train + steps * step) + n_val * (costs.score * (2 if val_steps else 1) + val_steps * step)
    return fixed + epochs * per_epoch


def attack_steps(attack, n: int, randomized: bool, share: str = "point") -> float:
    """Attack steps (each a forward and backward pass of one example) of an attack on n examples of a model: every
    step of every example on a randomized model, the `EARLY_STOP` (or `ONE_STEP`) share on a deterministic one."""
    steps = getattr(attack, "steps", getattr(getattr(attack, "base", None), "steps", 1)) or 1
    eot = getattr(attack, "eot", 1) or 1
    restarts = getattr(attack, "restarts", 1) or 1
    if type(attack).__name__.startswith("AutoAttack"):  # APGD-CE and -DLR, 100 steps each (rand: EOT 20)
        steps = AUTOATTACK * 2 * getattr(attack, "steps", 100)
        eot = 20 if getattr(attack, "version", "") == "rand" else 1
    done = 1.0
    if not randomized:
        done = (ONE_STEP if steps == 1 else EARLY_STOP)[share] if getattr(attack, "early_stop", True) else 1.0
    return n * steps * eot * restarts * done


def cell_seconds(cell, attack, costs: PassCosts, deployed: float, detection: bool, share: str) -> float:
    """CPU seconds of an attack cell: its attack (none for a crafted attack's cell: it scores the crafted set), the
    scoring draws and detection embeddings, its fixed cost. `deployed`: a pass of the deployed model in passes of
    the classifier (`benchmark.runner.pass_costs.deployed_factor`)."""
    step = costs.grad * deployed + OVERHEAD["step"] * costs.ref
    if getattr(attack, "bpda", False):  # the backward pass skips the purifier (BPDA's identity)
        step = costs.score * deployed + costs.grad + OVERHEAD["step"] * costs.ref
    work = 0.0 if cell.crafted else attack_steps(attack, cell.n, cell.randomized, share) * step
    work += cell.n * cell.draws * costs.score * deployed * (2 if detection else 1)
    return FIXED["cell"] * costs.ref + work


def craft_seconds(stage: CraftStage, attack, info: dict, costs: PassCosts) -> float:
    """CPU seconds of a crafted set: a universal perturbation's epochs over the attacker's data (a step per image
    and epoch), or a transfer attack's steps on the teacher for each of its examples."""
    step = costs.grad + OVERHEAD["step"] * costs.ref
    epochs = getattr(attack, "epochs", None)
    if epochs:
        n = info.get("train_sizes", {}).get(getattr(attack, "attacker_domain", "target"), 0)
        limit = getattr(attack, "max_examples", None)
        work = epochs * (min(n, limit) if limit else n) * step
    else:
        inner = getattr(attack, "base", None) or attack
        work = attack_steps(inner, stage.n, True) * step
    return FIXED["craft"] * costs.ref + work + stage.n * costs.score


def stage_seconds(cfg: dict, plan, costs: dict, share: str = "point") -> dict[str, float]:
    """{stage id: estimated CPU seconds} for every stage of the plan (`costs`: `PassCosts` by pair)."""
    out = {}
    detection = bool(cfg["eval"].get("detection"))
    deployed = {}
    for s in plan.stages:
        if s.kind == "student":
            pair = s.job.data_name
            deployed[s.id] = deployed_factor(cfg, pair, s.job.module, _pair(cfg, plan, pair))
    for stage in plan.stages:
        if stage.kind in ("teacher", "student"):
            pair = stage.job.data_name
            out[stage.id] = train_seconds(stage.job, plan.pairs[pair], costs[pair], deployed.get(stage.id, 1))
        elif stage.kind == "craft":
            out[stage.id] = craft_seconds(stage, plan.attack(stage.id), plan.pairs[stage.pair], costs[stage.pair])
        else:
            cell = stage.cell
            out[stage.id] = cell_seconds(cell, plan.attack(stage.id), costs[cell.pair],
                                         deployed.get(cell.model, 1.0), detection, share)  # fmt: skip
    return out


def _pair(cfg: dict, plan, pair: str):
    """The plan's data pair (set up by its planner), or one built from its config (not set up: its shape is enough)."""
    if pair not in plan._data:
        plan._data[pair] = build_datamodule(cfg["data"][pair])
    return plan._data[pair]


# ---- the wall clock ------------------------------------------------------------------------------------------------
def workers_of(cfg: dict) -> int:
    """How many stages run at once: the workers launcher's processes (one per GPU, or per CPU core), else one."""
    launcher = cfg.get("launcher") or {}
    if launcher.get("name") != "workers":
        return 1
    return len(layout(launcher))


def schedule(stages: list[Stage], seconds: dict[str, float], workers: int) -> float:
    """The wall time of `stages` (those to compute) on `workers` that each take a ready stage as they free up: a
    stage that others wait for first (the longest chain's head), then plan order
    (`benchmark.runner.launchers.workers`)."""
    ids = {s.id for s in stages}
    deps = {s.id: [d for d in s.deps if d in ids] for s in stages}
    level: dict[str, int] = {}
    for s in reversed(stages):  # dependents come after their dependencies in plan order
        level.setdefault(s.id, 0)
        for d in deps[s.id]:
            level[d] = max(level.get(d, 0), level[s.id] + 1)
    order = {s.id: i for i, s in enumerate(stages)}
    finish: dict[str, float] = {}
    free = [0.0] * max(1, workers)
    left = sorted(ids, key=lambda i: (-level[i], order[i]))
    while left:
        w = min(range(len(free)), key=free.__getitem__)
        now = free[w]
        ready = [i for i in left if all(d in finish and finish[d] <= now for d in deps[i])]
        if not ready:  # wait for the next dependency to finish
            free[w] = min(t for d, t in finish.items() if t > now) if any(t > now for t in finish.values()) else now
            if free[w] == now:  # a dependency outside this schedule: run what is left in order
                ready = left[:1]
            else:
                continue
        pick = ready[0]
        left.remove(pick)
        finish[pick] = now + seconds[pick]
        free[w] = finish[pick]
    return max(finish.values(), default=0.0)


# ---- the summary ---------------------------------------------------------------------------------------------------
def sharing(workers: int) -> tuple[float, float, int]:
    """(how many times longer the stages take for the CPU they share with other processes, the other processes' load,
    the cores): the workers and the load that other processes put on the machine now (the 1-minute load average, less
    this process) share its cores; 1 on a quiet machine."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        others = max(0.0, os.getloadavg()[0] - 1.0)
    except OSError:  # no load average on this platform
        others = 0.0
    return max(1.0, (others + min(workers, cores)) / cores), others, cores


def summary(cfg: dict, plan, assume_cold: bool = False, quiet: bool = False) -> dict:
    """Per kind of stage: how many, how many cached, how many to compute; the estimated seconds of the rest (a point
    and a range: on this machine as busy as it is now, or quiet with `quiet`), their CPU seconds by kind of work (as
    run_stats.json names them)."""
    cache = Cache(cfg["cache_dir"])
    counts: dict[str, Counter] = {}
    todo = []
    for stage in plan.stages:
        cached = not assume_cold and cache.exists(*stage_entry(stage))
        counts.setdefault(KINDS[stage.kind], Counter())["cached" if cached else "to compute"] += 1
        if not cached:
            todo.append(stage)
    out = {"stages": len(plan), "by_kind": {k: dict(v) for k, v in counts.items()}, "estimated_seconds": 0.0,
           "range": (0.0, 0.0), "seconds_by_kind": {}, "workers": workers_of(cfg), "relative_cost": 1.0}  # fmt: skip
    if not todo:
        return out
    try:
        costs = {pair: pass_costs(cfg, pair, plan._data.get(pair)) for pair in plan.pairs}
    except Exception as e:  # noqa: BLE001 - a model this machine cannot time: no estimate, not a failed run
        out["no_estimate"] = f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:120]}"
        return out
    slower, others, cores = (1.0, 0.0, 0) if quiet else sharing(out["workers"])
    points = {}
    for name in ("point", "low", "high"):
        seconds = stage_seconds(cfg, plan, costs, name)
        fixed = FIXED["run"] * next(iter(costs.values())).ref
        points[name] = (seconds, slower * (fixed + schedule(todo, seconds, out["workers"])))
    by_kind: Counter = Counter()
    for stage in todo:
        by_kind[kind_of(stage)] += points["point"][0][stage.id]
    first = next(iter(costs.values()))
    out.update(relative_cost=first.train / first.ref, estimated_seconds=points["point"][1],
               range=(points["low"][1], points["high"][1]),
               seconds_by_kind={k: round(v, 1) for k, v in sorted(by_kind.items())},
               stage_seconds={s.id: points["point"][0][s.id] for s in todo},
               work_seconds=sum(by_kind.values()), costs={p: vars(c) for p, c in costs.items()},
               sharing={"slower": slower, "others": others, "cores": cores})  # fmt: skip
    return out


def describe(s: dict) -> list[str]:
    """The summary as lines for the console."""
    lines = [f"{s['stages']} stages:"]
    for kind, c in s["by_kind"].items():
        lines.append(f"  {kind}: {c.get('to compute', 0)} to compute, {c.get('cached', 0)} cached")
    est = s["estimated_seconds"]
    if est:
        low, high = s["range"]
        share = s.get("sharing") or {}
        busy = ""
        if share.get("slower", 1.0) > 1.0:
            busy = (f", {share['slower']:.1f}x for the {share['others']:.1f} cores' worth of other processes now "
                    f"running on its {share['cores']}")  # fmt: skip
        lines.append(
            f"estimated time: about {_duration(est)} ({_duration(low)} to {_duration(high)}: attacks stopping early or "
            f"running every step) with {s['workers']} worker(s){busy} ({s['work_seconds']:,.0f} CPU seconds of work "
            "timed on this machine; benchmark/runner/estimate.py)"
        )
    elif s.get("no_estimate"):
        lines.append(f"estimated time: none (the model could not be timed here: {s['no_estimate']})")
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
        return f"{seconds / 60:.0f} min" if seconds >= 600 else f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# ---- estimate against a finished run -----------------------------------------------------------------------------
def check(folders: list[str | os.PathLike]) -> dict:
    """The estimate of finished runs' plans, every stage priced as if the cache were empty, beside what their
    run_stats.json measured: per kind of work (CPU seconds, and the whole stages' wall-clock seconds) and the wall
    time (with a shared pool of workers, as `make bench` runs its experiments: the pool's and each run's own)."""
    kinds: dict[str, dict[str, float]] = {}
    measured_wall, stages, seconds, workers, fixed = 0.0, [], {}, 1, 0.0
    pool = None
    for folder in map(Path, folders):
        cfg = OmegaConf.to_container(OmegaConf.load(folder / "config.yaml"))
        plan = Plan.from_json((folder / "plan.json").read_text())
        stats = json.loads((folder / "run_stats.json").read_text())
        for pair, info in plan.pairs.items():  # a plan written before the validation sizes were kept
            if "val_sizes" not in info:
                dm = plan._data[pair] = build_datamodule(cfg["data"][pair])
                info["val_sizes"] = {d: len(dm.splits(d).val) for d in ("source", "target")}
        s = summary(cfg, plan, assume_cold=True, quiet=True)
        workers = max(workers, s["workers"])
        for kind, value in s["seconds_by_kind"].items():
            kinds.setdefault(kind, Counter())["estimated"] += value
        for name, label in (("cpu_seconds_by_kind", "cpu"), ("stage_seconds_by_kind", "wall")):
            for kind, value in (stats.get(name) or {}).items():
                kinds.setdefault(kind, Counter())[label] += value
        measured_wall += stats["seconds"]
        pool = (stats.get("pool") or {}).get("pool_seconds", pool)
        stages += [st for st in plan.stages if st.id in s["stage_seconds"]]
        seconds.update(s["stage_seconds"])
        fixed += s["estimated_seconds"] - schedule([st for st in plan.stages if st.id in s["stage_seconds"]],
                                                   s["stage_seconds"], s["workers"])  # fmt: skip
    measured = measured_wall + (pool or 0.0)
    estimated = fixed + schedule(stages, seconds, workers)
    return {"kinds": {k: dict(v) for k, v in sorted(kinds.items())}, "estimated_seconds": estimated,
            "measured_seconds": measured, "workers": workers}  # fmt: skip


def check_lines(result: dict) -> list[str]:
    lines = [f"{'kind of work':<24} {'estimated':>10} {'CPU':>10} {'stage wall':>11}   (CPU seconds, run_stats.json)"]
    for kind, v in result["kinds"].items():
        cpu, wall = v.get("cpu"), v.get("wall")
        lines.append(f"{kind:<24} {v.get('estimated', 0):>10.0f} {_num(cpu):>10} {_num(wall):>11}"
                     + (f"   x{v.get('estimated', 0) / cpu:.2f}" if cpu else ""))  # fmt: skip
    work = sum(v.get("estimated", 0) for v in result["kinds"].values())
    cpu = sum(v.get("cpu", 0) for v in result["kinds"].values())
    if cpu:
        lines.append(f"work: estimated {work:.0f} CPU seconds, measured {cpu:.0f} ({work / cpu - 1:+.0%})")
    est, got = result["estimated_seconds"], result["measured_seconds"]
    lines.append(f"wall time: estimated {est:.0f} s on this machine when quiet, measured {got:.0f} s "
                 f"({est / got - 1:+.0%}) with {result['workers']} worker(s) (other processes during the run slow "
                 "it: compare the work above)")  # fmt: skip
    return lines


def _num(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def main(argv: list[str]) -> int:
    """`python -m benchmark.runner.estimate RESULTS_DIR [...]`: the estimate against finished runs (one folder per
    experiment of a `make bench`, all of them for a pooled run)."""
    if not argv or {"-h", "--help"} & set(argv):
        print(main.__doc__.strip())
        return 0 if argv else 2
    for line in check_lines(check(argv)):
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
