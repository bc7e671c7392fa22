"""The numerics of a stage: what, besides its key, decides the bits of what it computes on a given machine.

On the CPU, torch splits a convolution's or a matrix product's sums over its intra-op threads, and the order of float
additions changes the last bits of the result; a borderline example then flips, a training run drifts, and the same
stage gives different numbers in a process with two threads (`launcher=inline` on two cores) and in a worker with one
(`launcher=workers`). So every stage runs with a fixed number of torch threads, `numerics.threads` (default 1), set
here for the stage and restored after, whichever launcher runs it: the inline and the workers runs give the same
rows (tests/benchmark/test_launch.py). The setting is not in the stage keys: like the machine itself (its CPU, its
BLAS), it is part of "on a given machine" -- give another `cache_dir` when you change it. On a GPU, the threads only
drive the CPU side (data, bookkeeping); GPU kernels have their own nondeterminism (docs/fashion.md).

`numerics.channels_last` (default on) keeps every convolution's weights in the channels-last memory format, in
training and under attack: on this suite's CPUs oneDNN's channels-last kernels run a small CNN's forward and backward
passes 1.5-2x faster than the contiguous ones (docs/performance.md). It sums in another order, so a trained model and
a borderline example move in their last bits: unlike the threads it is in every training stage's key (and so in the
keys of everything computed from the model), and tests/benchmark/test_numerics.py pins that the logits
and input gradients of the two layouts agree to float tolerance.
"""

from __future__ import annotations

import platform
from contextlib import contextmanager

import torch

from attacks.errors import ConfigError

#: torch intra-op threads in every stage unless `numerics.threads` says otherwise.
STAGE_THREADS = 1


def stage_threads(cfg: dict) -> int | None:
    """The torch threads a stage runs with (`numerics.threads`; null: the process's own setting)."""
    numerics = cfg.get("numerics") or {}
    threads = numerics.get("threads", STAGE_THREADS)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"numerics.threads must be an integer >= 1 or null, got {threads!r}")
    return threads


def stage_layout(cfg: dict) -> dict:
    """The memory layout a training stage builds its modules in (its key holds it): {"channels_last": bool}."""
    value = (cfg.get("numerics") or {}).get("channels_last", True)
    if not isinstance(value, bool):
        raise ConfigError(f"numerics.channels_last must be true or false, got {value!r}")
    return {"channels_last": value}


def apply_layout(module: torch.nn.Module, layout: dict | None) -> torch.nn.Module:
    """`module` with its 4-d weights (convolutions) channels-last when `layout` says so (in place; returned)."""
    if (layout or {}).get("channels_last"):
        module.to(memory_format=torch.channels_last)
    return module


@contextmanager
def stage_numerics(cfg: dict):
    """Run the body with the stage's torch threads, then restore the process's."""
    threads = stage_threads(cfg)
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux, else what `platform` says)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine(cfg: dict | None = None) -> dict:
    """What, besides the stage keys, decides a run's numbers: the CPU model, the instruction set torch's CPU
    kernels use (`torch.backends.cpu.get_cpu_capability`), torch's version and build, the GPU when there is one,
    and the stage threads. The same commit moves between two machines by about a seed's noise (docs/fashion.md,
    Reproducible stages); the report names the machine so that a reader compares runs accordingly."""
    threads = stage_threads(cfg or {})
    return {
        "cpu": _cpu_model(),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "threads": threads if threads is not None else torch.get_num_threads(),
    }


def machine_line(m: dict) -> str:
    """One sentence for a report: where the numbers were computed and how to read them against another machine's."""
    where = f"{m['cpu']} ({m['isa']})" + (f", GPU {m['gpu']}" if m.get("gpu") else "")
    return (
        f"Computed on {where}, torch {m['torch']}, {m['threads']} torch thread(s) per stage. The same commit gives "
        "other numbers on another CPU, GPU or torch build (float sums in another order flip borderline examples and "
        "steer training): compare runs from different machines as noise of about a training seed's size, not digit "
        "by digit (docs/fashion.md, Reproducible stages)."
    )
