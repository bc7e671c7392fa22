"""A stage runs with `numerics.threads` torch threads, whatever the process had, and the process gets its own back."""

from __future__ import annotations

import pytest
import torch

from attacks.errors import ConfigError
from benchmark.numerics import stage_numerics, stage_threads


def test_a_stage_runs_with_its_threads_and_restores_the_process_setting():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with stage_numerics({"numerics": {"threads": 1}}):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with stage_numerics({"numerics": {"threads": None}}):  # null: the process's own setting
            assert torch.get_num_threads() == 2
        with stage_numerics({}):  # the default: one thread
            assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_bad_thread_counts_are_one_line(bad):
    with pytest.raises(ConfigError, match="numerics.threads must be an integer >= 1 or null"):
        stage_threads({"numerics": {"threads": bad}})


# ---- the channels-last layout ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("backbone", "channels", "size"), [("small_cnn", 1, 16), ("small_cnn", 1, 28), ("dtn", 3, 32),
                                                            ("resnet18_cifar", 3, 32)])  # fmt: skip
def test_the_channels_last_layout_computes_the_same_logits_and_input_gradients_to_float_tolerance(
    backbone, channels, size
):
    """The same function: in float64 the two layouts agree to 1e-12; in float32 the channels-last result is as close
    to the float64 one as the contiguous result is (within a factor of 4: both are float32 rounding, summed in
    another order)."""
    import copy

    from benchmark.numerics import apply_layout
    from lightning_modules.classifier import build_classifier

    torch.manual_seed(0)
    model = build_classifier(backbone, 10, channels, (0.5,) * channels, (0.25,) * channels).eval()
    x = torch.rand(32, channels, size, size)

    def logits_and_gradient(m, dtype):
        xi = x.to(dtype).requires_grad_(True)
        logits = m.to(dtype)(xi)
        (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, torch.arange(32) % 10), xi)
        return logits.detach().double(), g.double()

    fast = apply_layout(copy.deepcopy(model), {"channels_last": True})
    convs = [p for p in fast.parameters() if p.ndim == 4 and p.shape[1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    exact = logits_and_gradient(copy.deepcopy(model), torch.float64)
    for a, b in zip(exact, logits_and_gradient(copy.deepcopy(fast), torch.float64)):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12 * float(a.abs().max()))
    contiguous = logits_and_gradient(model, torch.float32)
    channels_last = logits_and_gradient(fast, torch.float32)
    for ref, plain, cl in zip(exact, contiguous, channels_last):
        assert (cl - ref).abs().max() <= 4 * (plain - ref).abs().max() + 1e-7 * ref.abs().max()


def test_the_layout_is_in_every_training_stage_key_and_applied_to_the_module(tmp_path):
    from benchmark.components import build_datamodule, build_module, job_key_spec
    from benchmark.runner.config import compose
    from benchmark.runner.planner import make_plan

    base = ["logger=none", "defense=[finetune]", "attack=[fgsm]", f"cache_dir={tmp_path}"]
    on, off = (make_plan(compose([*base, f"numerics.channels_last={v}"]))[0] for v in ("true", "false"))
    for a, b in zip(on.stages, off.stages):
        assert a.key != b.key, f"{a.id}: the layout changes what is computed"
    job = on.stage("digits/teacher").job
    assert job.numerics == {"channels_last": True} and job_key_spec(job)["numerics"] == {"channels_last": True}
    assert "numerics" not in job_key_spec(off.stage("digits/teacher").job), "contiguous: the keys of before"
    module = build_module(job, None, build_datamodule(job.data))
    conv = next(p for p in module.parameters() if p.ndim == 4 and p.shape[1] > 1)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ConfigError, match="numerics.channels_last must be true or false"):
        make_plan(compose([*base, "numerics.channels_last=maybe"]))
