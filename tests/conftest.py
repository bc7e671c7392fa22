"""Shared test fixtures: a small digits classifier trained once per session, and its source test split.

Everything here runs on the CPU without network access. Tests that change the model (modes, flags,
dtype) must work on a copy (`copy.deepcopy`), since the session fixtures are shared.
"""

from __future__ import annotations

import copy

import lightning
import pytest
import torch

from datamodules.digits import DigitsShift
from lightning_modules.classifier import ImageClassifier, build_classifier
from lightning_modules.modules import TeacherModule
from lightning_modules.training import fit

#: Clean accuracy the session classifier must reach on the source test split; tests rely on a real model.
MIN_SOURCE_ACC = 0.9


def pytest_configure(config: pytest.Config) -> None:
    # Registered here so `@pytest.mark.slow` works without a pytest.ini (deselect with `-m "not slow"`).
    config.addinivalue_line("markers", "slow: takes more than a few seconds; deselect with -m 'not slow'")


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
