"""The representation-based adversarial-vs-clean detector and its AUROC."""

from __future__ import annotations

import math

import pytest
import torch

from benchmark.runner.detection import RepresentationDetector, detection_auroc


def _detector():
    ref_x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    ref_y = torch.tensor([0, 0, 1, 1])
    return RepresentationDetector(lambda x: x, ref_x, ref_y, batch_size=2, device=torch.device("cpu"))


def test_score_is_the_distance_to_the_nearest_clean_example_of_the_predicted_class():
    det = _detector()
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    s = det.scores(x, torch.tensor([0, 1]))
    assert s[0].item() == pytest.approx(0.0, abs=1e-6), "next to a clean example of its predicted class"
    expected = 1 - abs(torch.nn.functional.cosine_similarity(x[1], torch.tensor([0.1, 0.9]), dim=0).item())
    assert s[1].item() == pytest.approx(expected, abs=1e-6)


def test_auroc_counts_clean_correct_against_successful_adversarial_examples():
    flags = {  # a deterministic model's outcome: one draw
        "clean": torch.tensor([[True, True, True, False]]),
        "adv": torch.tensor([[True, False, False, False]]),
        "score_clean": torch.tensor([0.1, 0.2, 0.3, 9.0]),
        "score_adv": torch.tensor([5.0, 0.5, 0.6, 0.0]),
    }
    assert detection_auroc(flags) == pytest.approx(1.0)  # fooled examples (0.5, 0.6) score above every clean one
    flags["score_adv"] = torch.tensor([5.0, 0.15, 0.25, 0.0])
    assert detection_auroc(flags) == pytest.approx(3 / 6)  # pairs with pos > neg: 0.15 > 0.1; 0.25 > 0.1, 0.2
    flags["adv"] = flags["clean"]
    assert math.isnan(detection_auroc(flags)), "nothing fooled: undefined"
    assert math.isnan(detection_auroc({"clean": flags["clean"], "adv": flags["adv"]}))
