"""`eval.batch_size=auto`: the evaluation batch size of a model on CUDA, found by doubling until memory runs out."""

from __future__ import annotations

from collections.abc import Callable

import torch

from benchmark.runner.stages.attack import precision

#: `eval.batch_size=auto` off CUDA (no memory to fill), and the first size the CUDA search tries.
AUTO_BATCH_CPU, AUTO_BATCH_START = 256, 32


def find_batch_size(fits: Callable[[int], bool], start: int, limit: int) -> int:
    """The batch size to evaluate with: double from `start` while `fits(size)` (one forward and input-gradient
    pass at that size does not run out of memory), up to `limit`; then half the largest that fits, which leaves
    the attack's own buffers their room. At least 1."""
    size, best = max(1, min(start, limit)), 0
    while True:
        if not fits(size):
            break
        best = size
        if size >= limit:
            return size  # every example fits in one batch: no headroom needed beyond it
        size = min(2 * size, limit)
    return max(1, best // 2) if best else 1


def cuda_fits(model: torch.nn.Module, x: torch.Tensor, device: torch.device, precision_name: str):
    """`fits(size)` for `find_batch_size`: one attack-like pass of `model` on `size` examples like `x` (a tensor, or
    images read on access: one is read)."""
    first = x[[0]]

    def fits(size: int) -> bool:
        xb = first.expand(size, *first.shape[1:]).contiguous().to(device).requires_grad_(True)
        try:
            with precision(model, device, precision_name):
                torch.autograd.grad(model(xb).float().sum(), xb)
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            del xb
            torch.cuda.empty_cache()

    return fits
