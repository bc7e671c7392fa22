"""Shared test fixtures: a small digits classifier trained once per session, and its source test split; the test
sweep `TINY` (tests/sweeps.py) run once per session, whose cache tests copy (`warm_tmp`).

Everything here runs on the CPU without network access. Tests that change the model (modes, flags,
dtype) must work on a copy (`copy.deepcopy`), since the session fixtures are shared. Under pytest-xdist the session
fixtures are per worker, except the warm run, which the workers share (one computes it, the others wait for it).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import lightning
import pytest
import torch

from datamodules.digits import DigitsShift
from lightning_modules.classifier import ImageClassifier, build_classifier
from lightning_modules.modules import TeacherModule
from lightning_modules.training import fit

#: Clean accuracy the session classifier must reach on the source test split; tests rely on a real model.
MIN_SOURCE_ACC = 0.9


@pytest.fixture(scope="session")
def digits() -> DigitsShift:
    """The default dataset pair (16x16 grey digits in [0, 1]), built once per session.

    Returns:
        A set-up `DigitsShift` with its default splits.
    """
    dm = DigitsShift()
    dm.setup()
    return dm


@pytest.fixture(scope="session")
def digits_source_test(digits: DigitsShift) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole source test split as tensors.

    Returns:
        (x, y): float images in [0, 1] of shape (N, 1, 16, 16) and int64 labels of shape (N,).
    """
    return digits.test_tensors("source")


@pytest.fixture(scope="session")
def digits_classifier(digits: DigitsShift, digits_source_test) -> ImageClassifier:
    """A `small_cnn` teacher trained on the source domain for 8 epochs (a few seconds on the CPU).

    The fixture fails unless the model reaches `MIN_SOURCE_ACC` on the source test split, so attack
    tests never silently run against a broken model. The returned model is in eval mode, on the CPU,
    with every parameter requiring grad and no `.grad` left over from training.

    Returns:
        The trained `ImageClassifier` ([0, 1] images in, logits out). Shared: deep-copy it before changing it.
    """
    lightning.seed_everything(0, verbose=False)
    module = TeacherModule(build_classifier("small_cnn", digits.num_classes, 1, digits.mean, digits.std), lr=0.05)
    threads = torch.get_num_threads()
    # One thread: the tensors are tiny, and on a busy shared CPU intra-op threads oversubscribe the cores and
    # make training 5-10x slower. accelerator="cpu": the tests must not depend on a GPU being present.
    torch.set_num_threads(1)
    try:
        fit(module, digits.domain("source"), {"max_epochs": 8, "accelerator": "cpu"}, progress=False)
    finally:
        torch.set_num_threads(threads)
    model = module.model.cpu().eval()
    # The last optimizer step leaves gradients on the parameters; attack tests check that none are added.
    model.zero_grad(set_to_none=True)
    x, y = digits_source_test
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    assert acc > MIN_SOURCE_ACC, f"session classifier reached only {acc:.3f} on the source test split"
    return model


@pytest.fixture
def one_thread():
    """One intra-op thread for the test, restored after: the tensors are tiny, and on a busy shared CPU more
    threads oversubscribe the cores and make attacks and training several times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model(digits_classifier) -> ImageClassifier:
    """A private copy of the session classifier (tests may change its modes, flags and dtype)."""
    return copy.deepcopy(digits_classifier)


@pytest.fixture(scope="session")
def warm_run(tmp_path_factory) -> Path:
    """The test sweep `TINY` (tests/sweeps.py) run once per test session from an empty cache: a folder with its
    `cache/`, `results/` and `stats.json` (what the run computed: every stage once). Shared by the xdist workers of
    the session (a file lock: one runs it, the others wait). Read-only: a test that writes to a cache copies it
    (`warm_tmp`)."""
    from filelock import FileLock
    from sweeps import tiny

    from benchmark import run as runner
    from benchmark.runner.config import compose

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker has its own basetemp under one shared folder
        root = root.parent
    folder = root / "warm"
    with FileLock(str(root / "warm.lock")):
        if not (folder / "stats.json").exists():
            out = runner.run(compose(tiny(folder)))
            (folder / "stats.json").write_text(json.dumps(out["stats"]))
    return folder


@pytest.fixture
def warm_tmp(tmp_path, warm_run) -> Path:
    """`tmp_path` with `cache/` a copy of the warm run's cache: `tiny(warm_tmp, ...)` finds TINY's stages there
    (the cache is content-addressed, so a copy is a hit)."""
    shutil.copytree(warm_run / "cache", tmp_path / "cache")
    return tmp_path


@pytest.fixture
def surrogate(digits_classifier) -> torch.nn.Module:
    """A similar but different model for transfer attacks: the session classifier with seeded Gaussian noise on its
    weights (a model like the target, not the target); a fresh copy per test."""
    net = copy.deepcopy(digits_classifier)
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * p.std().nan_to_num(0.0) * torch.randn(p.shape, generator=g))
    return net
