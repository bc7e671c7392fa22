"""FGSM (attacks/fgsm.py) on a linear float64 model whose gradient is known (tests/attacks/linear_models.py): one full
step along the gradient's sign (L-inf) or direction (L2), and its pass counts; the expected examples have a closed
form computed here with numpy. The pass counts are pinned as mutation testing (`make mutate`,
tests/mutation/mutate.py) found them needed.
"""

from __future__ import annotations

import numpy as np
import torch
from linear_models import D, flat, images, two_class

from attacks import FGSM


def test_fgsm_is_one_full_step_along_the_gradient_and_counts_passes():
    model, x, y = two_class(), images([0.5, 0.4, 0.6]), torch.tensor([0, 0, 1])
    direction = np.where(y.numpy()[:, None] == 0, 1.0, -1.0) * D  # the CE gradient points away from the label
    attack = FGSM(0.1)
    assert np.allclose(flat(attack(model, x, y)), flat(x) + 0.1 * np.sign(direction))
    assert (attack.forward_passes, attack.backward_passes) == (3, 3)
    l2 = FGSM(0.1, norm="l2")(model, x, y)
    assert np.allclose(flat(l2), flat(x) + 0.1 * direction / np.linalg.norm(D))
