"""What a pass of a sweep's model costs on this machine, in CPU seconds per example (`pass_costs`), and a pass of a
defense's deployed model in passes of its classifier (`deployed_factor`): the prices of `benchmark.runner.estimate`.

The passes run on random images of the pair's shape (the values do not change the time) with one torch thread, as
every stage runs. CPU seconds leave out what other processes run; the fastest of rounds spread over a few seconds
leaves out most of what they slow on a shared core (a busy sibling thread). A large model's batch is capped at about
0.1 s of forward passes: its cost per example does not depend on the batch.
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass

import torch
from hydra.utils import get_object

from benchmark.components import build, build_datamodule
from benchmark.numerics import apply_layout, stage_layout
from lightning_modules.classifier import build_classifier
from lightning_modules.modules import StudentModule

#: A pass of the deployed model in passes of the classifier, where it cannot be timed before training (the
#: differentiators are built from the trained student: about 10 on digits, its reject-aware attack included).
DEPLOYED = {"DifferentiatorStudent": 10.0}


@dataclass(frozen=True)
class PassCosts:
    """CPU seconds per example of the sweep's model on the pair's images: a training step, an attack step, a scoring
    pass; `ref`: the default CNN's training step on a 16 px digit (the unit of the fixed costs)."""

    train: float
    grad: float
    score: float
    ref: float


def _cpu_seconds_per_example(step, batch: int, budget: float = 1.0) -> float:
    """The fastest of up to ten timed calls of `step` (CPU seconds of this process), per example of its batch; at
    most about `budget` seconds spent after the warm-up calls."""
    step()
    step()
    best, spent = float("inf"), 0.0
    for _ in range(10):
        start = time.process_time()
        step()
        took = time.process_time() - start
        best, spent = min(best, took), spent + took
        if spent > budget:
            break
    return best / batch


def _steps(backbone: str, kwargs: tuple, shape: tuple, classes: int, train_batch: int, eval_batch: int,
           channels_last: bool = False) -> dict:  # fmt: skip
    """{train, grad, score: (a call of that pass of the model on random images, its batch)}, the model in the stages'
    memory layout (`numerics.channels_last`); batches capped at about 0.1 s of forward passes (a large model's cost
    per example does not depend on its batch)."""
    torch.manual_seed(0)
    model = build_classifier(backbone, classes, shape[0], (0.5,), (0.5,), **dict(kwargs))
    apply_layout(model, {"channels_last": channels_last})
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    start = time.process_time()
    with torch.no_grad():
        model.eval()(torch.rand(4, *shape))
    per = max((time.process_time() - start) / 4, 1e-6)
    tb, eb = (max(4, min(b, int(0.1 / per))) for b in (train_batch, eval_batch))
    x, y = torch.rand(tb, *shape), torch.randint(0, classes, (tb,))
    xe, ye = torch.rand(eb, *shape), torch.randint(0, classes, (eb,))

    def train():
        model.train()
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    def grad():
        model.eval()
        xa = xe.clone().requires_grad_(True)
        torch.autograd.grad(torch.nn.functional.cross_entropy(model(xa), ye), xa)

    def score():
        with torch.no_grad():
            model.eval()(xe).argmax(1)

    return {"train": (train, tb), "grad": (grad, eb), "score": (score, eb)}


#: The reference: the default CNN on a 16 px digit, at the default batches, in the contiguous layout (the unit the
#: fixed costs of `benchmark.runner.estimate` were fitted in).
REFERENCE = ("small_cnn", (), (1, 16, 16), 10, 64, 256, False)


@functools.lru_cache(maxsize=8)
def _timed(spec: tuple, rounds: int = 8, budget: float = 4.0) -> tuple[float, float, float, float]:
    """(train, grad, score, ref) CPU seconds per example: each pass timed once per round, the model's and the
    reference's in turn, and the fastest of the rounds kept. CPU time leaves out what other processes run; the
    rounds, spread over a few seconds, leave out most of what they slow on a shared core (a busy sibling thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # every stage runs with one torch thread (numerics.threads)
    try:
        calls = _steps(*spec)
        if spec != REFERENCE:  # the default model on digits is its own reference
            calls["ref"] = _steps(*REFERENCE)["train"]
        best = dict.fromkeys(calls, float("inf"))
        for step, _ in calls.values():  # warm up
            step()
        spent = 0.0
        for _ in range(rounds):
            for name, (step, batch) in calls.items():
                start = time.process_time()
                step()
                took = time.process_time() - start
                best[name], spent = min(best[name], took / batch), spent + took
            if spent > budget:
                break
        return best["train"], best["grad"], best["score"], best.get("ref", best["train"])
    finally:
        torch.set_num_threads(threads)


def pass_costs(cfg: dict, pair: str, dm=None) -> PassCosts:
    """The sweep's model's `PassCosts` on a pair (random images of its shape: the values do not change the time)."""
    dm = build_datamodule(cfg["data"][pair]) if dm is None else dm
    kwargs = tuple(sorted((cfg["model"].get("kwargs") or {}).items()))
    batch = cfg["eval"]["batch_size"] if isinstance(cfg["eval"]["batch_size"], int) else 256

    layout = stage_layout(cfg)["channels_last"]
    spec = (cfg["model"]["backbone"], kwargs, tuple(dm.image_shape), dm.num_classes, dm.batch_size, batch, layout)
    return PassCosts(*_timed(spec))


def deployed_factor(cfg: dict, pair: str, module: dict, dm) -> float:
    """A pass of a defense's deployed model (a purifier before the classifier, test-time dropout...) in passes of
    the classifier, timed on the untrained module (1 for a defense that deploys its classifier as it is)."""
    try:
        cls = get_object(module["_target_"])
    except Exception:  # noqa: BLE001 - the config check names a bad target
        return 1.0
    if getattr(cls, "deployed_model", None) is StudentModule.deployed_model:
        return 1.0

    key = json.dumps([cfg["model"], cfg["data"][pair], module, stage_layout(cfg)], sort_keys=True, default=str)
    return _deployed(key, cls.__name__, dm)


@functools.lru_cache(maxsize=64)
def _deployed(key: str, name: str, dm) -> float:
    model_cfg, _, module, layout = json.loads(key)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:

        def make():
            kwargs = model_cfg.get("kwargs") or {}
            return build_classifier(model_cfg["backbone"], dm.num_classes, dm.image_shape[0], dm.mean, dm.std, **kwargs)

        torch.manual_seed(0)
        base = apply_layout(make(), layout)
        deployed = apply_layout(build(module, model=make(), teacher_state=base.state_dict()), layout).deployed_model()
        x = torch.rand(32, *dm.image_shape)

        def grad(model):
            def step():
                model.eval()
                xa = x.clone().requires_grad_(True)
                out = model(xa)
                torch.autograd.grad((out[0] if isinstance(out, tuple) else out).float().logsumexp(1).sum(), xa)

            return step

        return _cpu_seconds_per_example(grad(deployed), 32, 0.5) / _cpu_seconds_per_example(grad(base), 32, 0.5)
    except Exception:  # noqa: BLE001 - a module that needs its training to deploy (the differentiators)
        return DEPLOYED.get(name, 1.0)
    finally:
        torch.set_num_threads(threads)
