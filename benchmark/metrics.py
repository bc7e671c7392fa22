"""The statistics of the counts: the transferability formula, the Wilson interval, the sanity tolerance.

Every metric is a reduction of per-example flags, counted once over the whole evaluation subset in
`benchmark.runner.stages.score` (which holds the counting rule):
- `clean_correct[i]`: the model classifies clean example i correctly;
- `adv_correct[i]`: the model classifies the adversarial version of example i correctly. For a
  white-box attack only clean-correct examples are attacked (the others keep x' = x), as in paper 1
  and RobustBench.

Counting follows Zhang et al. 2020 (arXiv 2008.11089) and RobustBench: an example is robust if it is
correct when clean *and* when attacked; accuracies are over all n examples.

Why plain functions of the flags and no torchmetrics `Metric`s with sum-reduced state: an evaluation is never
counted inside a distributed loop. The per-example flags are the primary result (cached per cell); an evaluation
split across processes or GPUs merges its flags, and the counts are taken once, on the merged flags, so they are
exact whatever the split. (The training loop's validation accuracy, which is computed under DDP, is a torchmetrics
`MulticlassAccuracy` in `lightning_modules.modules`.)
"""

from __future__ import annotations

import torch

from attacks.errors import choose

TRANSFERABILITY_FORMS = ("success_ratio", "accuracy_drop")
#: Differences below this (absolute accuracy) or below two examples are treated as noise by the sanity checks.
SANITY_TOL = 0.01


def _flags(*flags: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.as_tensor(f).bool().flatten() for f in flags]
    if len({len(f) for f in out}) != 1:
        raise ValueError(f"per-example flags have different lengths: {[len(f) for f in out]}")
    return out


def transferability_ratio(
    clean_correct: torch.Tensor, whitebox_adv_correct: torch.Tensor, transfer_adv_correct: torch.Tensor, form: str
) -> float:
    """How much of the white-box attack's effect on the student B a transfer attack from the teacher A achieves.

    The formula of Zhang et al. 2020 (arXiv 2008.11089, section 4) was not available when this was written.
    These are OUR readings of the abstract ("formula unverified"), both at the same epsilon and attack:

    - `success_ratio` (default): T = ASR_B(x'_A) / ASR_B(x'_B), the attack success rates on B of the
      examples crafted on A and on B, both over the examples B classifies correctly when clean (paper 1's
      counting). It equals (#fooled by transfer) / (#fooled white-box).
    - `accuracy_drop`: T = (acc_B(x) - acc_B(x'_A)) / (acc_B(x) - acc_B(x'_B)) with *raw* accuracies:
      every example is scored on its perturbed version, whether or not B got it right when clean, so an
      example that an attack happens to make correct counts. (With paper 1's counting, this form would be
      identical to the success ratio, so the raw-accuracy reading is the only one that differs.)

    1 means the transfer attack is as effective as the white-box attack; above 1 it is more effective; NaN when the
    white-box attack changed nothing (the ratio is undefined). The division is in float32, as results.csv has
    always held it.
    """
    choose("transferability form", form, TRANSFERABILITY_FORMS)
    c, w, t = _flags(clean_correct, whitebox_adv_correct, transfer_adv_correct)
    if form == "success_ratio":
        num, den = (c & ~t).sum(), (c & ~w).sum()
    else:
        num, den = c.sum() - t.sum(), c.sum() - w.sum()
    return float(num.float() / den) if den > 0 else float("nan")


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (robust accuracy is a proportion over n examples)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / den
    return max(0.0, centre - half), min(1.0, centre + half)
