"""Robustness metrics as torchmetrics `Metric`s: sum-reduced counts, so they are exact under DDP.

Every metric is a reduction of per-example flags:
- `clean_correct[i]`: the model classifies clean example i correctly;
- `adv_correct[i]`: the model classifies the adversarial version of example i correctly. For a
  white-box attack only clean-correct examples are attacked (the others keep x' = x), as in paper 1
  and RobustBench.

Counting follows Zhang et al. 2020 (arXiv 2008.11089) and RobustBench: an example is robust if it is
correct when clean *and* when attacked; accuracies are over all n examples.
"""

from __future__ import annotations

import torch
from torchmetrics import Metric

from attacks.errors import choose

TRANSFERABILITY_FORMS = ("success_ratio", "accuracy_drop")
#: Differences below this (absolute accuracy) or below two examples are treated as noise by the sanity checks.
SANITY_TOL = 0.01
DEFAULT_TRANSFERABILITY = "success_ratio"


class _CountMetric(Metric):
    """Shared plumbing: named integer counts, summed across processes."""

    counts: tuple[str, ...] = ()
    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in self.counts:
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @staticmethod
    def _flags(*flags: torch.Tensor) -> list[torch.Tensor]:
        out = [torch.as_tensor(f).bool().flatten() for f in flags]
        if len({len(f) for f in out}) != 1:
            raise ValueError(f"per-example flags have different lengths: {[len(f) for f in out]}")
        return out


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return num.float() / den if den > 0 else torch.tensor(float("nan"))


class CleanAccuracy(_CountMetric):
    """Fraction of examples classified correctly without attack."""

    counts = ("correct", "total")

    def update(self, clean_correct: torch.Tensor) -> None:
        (c,) = self._flags(clean_correct)
        self.correct += c.sum()
        self.total += len(c)

    def compute(self) -> torch.Tensor:
        return _ratio(self.correct, self.total)


class RobustAccuracy(_CountMetric):
    """Fraction of all examples that are correct when clean and stay correct under the attack."""

    counts = ("robust", "total")

    def update(self, clean_correct: torch.Tensor, adv_correct: torch.Tensor) -> None:
        c, a = self._flags(clean_correct, adv_correct)
        self.robust += (c & a).sum()
        self.total += len(c)

    def compute(self) -> torch.Tensor:
        return _ratio(self.robust, self.total)


class TransferAccuracy(RobustAccuracy):
    """Student accuracy on examples crafted on the teacher, acc_B(x'_A), counted as in paper 1.

    Only examples the student gets right when clean can count as robust; accuracy is over all examples.
    """


class AttackSuccessRate(_CountMetric):
    """Fraction of the clean-correct examples that the attack makes misclassified."""

    counts = ("fooled", "attacked")
    higher_is_better = False

    def update(self, clean_correct: torch.Tensor, adv_correct: torch.Tensor) -> None:
        c, a = self._flags(clean_correct, adv_correct)
        self.fooled += (c & ~a).sum()
        self.attacked += c.sum()

    def compute(self) -> torch.Tensor:
        return _ratio(self.fooled, self.attacked)


class Transferability(_CountMetric):
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

    1 means the transfer attack is as effective as the white-box attack; above 1 it is more effective.
    """

    counts = ("total", "clean", "wb_fooled", "tr_fooled", "wb_raw", "tr_raw")

    def __init__(self, form: str = DEFAULT_TRANSFERABILITY, **kwargs):
        choose("transferability form", form, TRANSFERABILITY_FORMS)
        super().__init__(**kwargs)
        self.form = form

    def update(
        self, clean_correct: torch.Tensor, whitebox_adv_correct: torch.Tensor, transfer_adv_correct: torch.Tensor
    ) -> None:
        c, w, t = self._flags(clean_correct, whitebox_adv_correct, transfer_adv_correct)
        self.total += len(c)
        self.clean += c.sum()
        self.wb_fooled += (c & ~w).sum()
        self.tr_fooled += (c & ~t).sum()
        self.wb_raw += w.sum()
        self.tr_raw += t.sum()

    def compute(self) -> torch.Tensor:
        if self.form == "success_ratio":
            return _ratio(self.tr_fooled, self.wb_fooled)
        return _ratio(self.clean - self.tr_raw, self.clean - self.wb_raw)


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (robust accuracy is a proportion over n examples)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * ((p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5) / den
    return max(0.0, centre - half), min(1.0, centre + half)


class ExpectedAccuracy(_CountMetric):
    """Accuracy of a randomized model averaged over K fresh draws of its randomness, from per-example
    fractions of correct draws (evaluate after optimize: the adversarial examples are fixed first)."""

    counts = ("total",)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("correct", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, correct_fraction: torch.Tensor) -> None:
        f = torch.as_tensor(correct_fraction, dtype=torch.float64).flatten()
        self.correct += f.sum()
        self.total += len(f)

    def compute(self) -> torch.Tensor:
        return _ratio(self.correct, self.total)
