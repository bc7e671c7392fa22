"""AdvEncoder-PAT's patch pixels: the generator's output mapped onto (0, 1) by (tanh + 1) / 2, so that every pixel
of the patch gets a gradient (a clamp to [0, 1] gives none to the pixels outside it: about half at the start)."""

from __future__ import annotations

import torch

from attacks.advencoder import AdvEncoderPAT, Generator


def test_every_patch_pixel_gets_a_gradient_at_the_start_and_stays_in_the_box():
    attack = AdvEncoderPAT(0.1, batch_size=16, ngf=8, nz=8)
    torch.manual_seed(0)
    gen = Generator(1, (16, 16), nz=8, ngf=8, z_batch=16)
    generated = gen(torch.randn(16, 8, 1, 1)).detach().requires_grad_(True)
    assert (generated < 0).float().mean() > 0.2, "a start where a clamp would cut many pixels off"
    patch = attack.perturbation(generated)
    (grad,) = torch.autograd.grad(patch.sum(), generated)
    assert (grad > 0).all(), "every pixel moves with the generator's output"
    assert patch.min() > 0 and patch.max() < 1
    assert torch.equal(patch.argsort(dim=-1), generated.argsort(dim=-1)), "monotone: brighter stays brighter"
