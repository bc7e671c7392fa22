"""AutoAttack (Croce & Hein 2020, arXiv 2003.01690) through the authors' code (the `pyautoattack` package).

`standard`: APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square (5,000 queries), each run only on the
examples still standing (the authors' cascade). For deterministic models.

`rand`: APGD-CE and APGD-DLR with EOT over 20 gradient samples, for randomized models. The authors' driver
decides after every attack, with one noisy forward pass, which examples are broken, and drops them from the
next attack; a lucky noisy pass then both counts an example as broken and stops the attack on it (issues
fra31/auto-attack #104, #105). Here both attacks run on every example, and each example keeps, among the
candidates they produce (APGD's highest-loss point and its last misclassified iterate, for each loss), the one
that the model gets right in the fewest of `draws` fresh forward passes. Scoring is the runner's job.

The warnings of the authors' checks (randomness, softmax output, zero gradients, Square beating the white-box
attacks, a dynamic forward pass, too few classes) are collected in `messages`;
`benchmark.runner.checks.autoattack_flags` turns them into the suite's flags (every rule in one file), which the runner
writes into results.csv, the leaderboard and W&B.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from attacks.base import Attack, Eps, Norm
from attacks.errors import ConfigError, choose

VERSIONS = ("standard", "rand")


class PassCounter(nn.Module):
    """Counts the examples that go through a model forward, and those whose gradient is taken."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.forward_passes = 0
        self.backward_passes = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        self.forward_passes += len(x)
        if out.requires_grad:
            n = len(x)

            def count(grad):
                self.backward_passes += n

            out.register_hook(count)
        return out


class _Float32(nn.Module):
    """A model of another dtype seen in float32: inputs cast to the model's dtype, outputs to float32."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.dtype)).float()


def _set_iterations(apgd, n: int) -> None:
    """APGD's iterations and the step-size checkpoints its constructor derives from them."""
    apgd.n_iter = n
    apgd.n_iter_2, apgd.n_iter_min, apgd.size_decr = max(int(0.22 * n), 1), max(int(0.06 * n), 1), max(int(0.03 * n), 1)


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


class AutoAttack(Attack):
    """AutoAttack with the authors' attacks; see the module docstring for the two versions.

    Args:
        eps: the budget.
        norm: linf or l2 (any case; the authors write Linf, L2).
        version: standard (deterministic models) or rand (randomized models, EOT).
        seed: the attacks' seed.
        draws: fresh forward passes used to pick each example's strongest candidate (rand).
        steps: APGD's and FAB's iterations (the authors': 100; Square gets 50 x steps queries, 5,000). Fewer only
            to make a test or a smoke run fast: the number is in the results (`steps`) and in the cache key.
    """

    name = "autoattack"

    def __init__(
        self,
        eps: Eps,
        norm: Norm = "linf",
        version: str = "standard",
        seed: int = 0,
        draws: int = 8,
        steps: int = 100,
    ):
        super().__init__(eps, norm)
        choose("AutoAttack version", version, VERSIONS)
        for key, value in (("draws", draws), ("steps", steps)):
            if int(value) != value or value < 1:
                raise ConfigError(f"{key} must be an integer >= 1, got {value}")
        self.version, self.seed, self.draws = version, int(seed), int(draws)
        self.eot = 20 if version == "rand" else 1
        self.steps = int(steps)
        self.messages: list[str] = []  # the authors' check warnings, every batch's (`benchmark.runner.checks`)

    def derived_config(self) -> dict:
        # The version sets the EOT samples (not an argument); recorded for the results and the sanity checks.
        return {"eot": self.eot}

    @property
    def label(self) -> str:
        return f"autoattack_{self.version}_{self.norm}"

    def perturb(self, model, x, y):
        from pyautoattack import checks

        for name in checks.funcs:  # the dynamic-defense check counts in a module global that never resets
            checks.funcs[name] = 0
        counted = PassCounter(model)
        collect = _Collect()
        logger = logging.getLogger("auto-attack")
        logger.addHandler(collect)
        try:
            x_adv = self._standard(counted, x, y) if self.version == "standard" else self._rand(counted, x, y)
        finally:
            logger.removeHandler(collect)
        self.forward_passes += counted.forward_passes
        self.backward_passes += counted.backward_passes
        self.messages += collect.messages
        return x_adv

    def _norm(self) -> str:
        return {"linf": "Linf", "l2": "L2"}[self.norm]

    def _standard(self, model, x, y):
        from pyautoattack import AutoAttack as Reference

        # The authors' standard attacks work in float32 only (APGD casts its input, FAB and the cascade write into
        # float32 buffers): they get float32 inputs and outputs, the model runs in the caller's dtype, and the
        # examples come back in the caller's dtype (x itself where nothing moved).
        if x.dtype != torch.float32:
            model = _Float32(model, x.dtype)
        aa = Reference(model, norm=self._norm(), eps=self.eps, version="standard", device=x.device, seed=self.seed)
        with torch.no_grad():
            classes = model(x[:1].float()).shape[1]
        # The targeted attacks take the 9 most likely other classes; with fewer classes (CIFAR-10 -> STL-10 has 9)
        # all the others, where the authors' defaults would index out of range.
        aa.apgd_targeted.n_target_classes = aa.fab.n_target_classes = min(9, classes - 1)
        if self.steps != 100:
            _set_iterations(aa.apgd, self.steps)
            _set_iterations(aa.apgd_targeted, self.steps)
            aa.fab.n_iter, aa.square.n_queries = self.steps, 50 * self.steps
        x32 = x.float()
        x_adv, _ = aa.run_standard_evaluation(x32, y, batch_size=len(x))
        if x.dtype == torch.float32:
            return x_adv
        return (x + (x_adv.to(x.dtype) - x32.to(x.dtype))).clamp_(0, 1)

    def _rand(self, model, x, y):
        from pyautoattack import checks
        from pyautoattack.autopgd_base import APGDAttack

        logger = logging.getLogger("auto-attack")
        # The checks the authors' driver runs for `rand` (it skips the randomness check there).
        n_cls = checks.check_range_output(model, x, logger=logger)
        checks.check_dynamic(model, x, False, logger=logger)
        checks.check_n_classes(n_cls, ["apgd-ce", "apgd-dlr"], 9, 9, logger=logger)  # DLR needs > 3 classes
        apgd = APGDAttack(
            model,
            n_restarts=1,
            n_iter=self.steps,
            eps=self.eps,
            norm=self._norm(),
            eot_iter=self.eot,
            rho=0.75,
            seed=self.seed,
            device=x.device,
            logger=logger,
        )
        candidates = []
        for loss in ("ce", "dlr"):
            apgd.loss = loss
            apgd.init_hyperparam(x)
            torch.manual_seed(self.seed)
            best_loss_point, _, _, last_adversarial = apgd.attack_single_run(x, y)
            candidates += [best_loss_point.detach(), last_adversarial.detach()]
        with torch.no_grad():
            correct = torch.stack(
                [sum((model(c).argmax(1) == y).float() for _ in range(self.draws)) for c in candidates]
            )  # (candidates, n): in how many fresh passes the model is still right
        pick = correct.argmin(0)
        stacked = torch.stack(candidates)
        return stacked[pick, torch.arange(len(x), device=x.device)]
