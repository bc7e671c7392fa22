"""The attack stage's cell computation (benchmark/runner/stages/attack.py) on tiny linear models: the precision
wrappers, the predictions over draws, crafting in batches (every batch checked), the windows of attacked examples, the
scoring of a cell with its detector and reject label. Some tests pin exact values found by mutation testing (`make
mutate`, tests/mutation/mutate.py).
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torch.nn as nn

from attacks.base import Attack, AttackConstraintError
from benchmark.runner.stages.attack import (
    Attacked,
    _method,
    _outputs,
    _ScaleGrad,
    check_crafted,
    compute_cell,
    fast_layout,
    precision,
    predict,
    predict_draws,
    run_attack,
)

CPU = torch.device("cpu")


class Linear(nn.Module):
    """x (n, 4) -> logits (n, 3); `features` is the encoder an attack may read."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.enc, self.head = nn.Linear(4, 4), nn.Linear(4, 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.enc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Noisy(Linear):
    """A randomized model: fresh input noise on every pass."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x + torch.randn_like(x))


class Shift(Attack):
    """Moves every attacked example by +eps (or a random sign per example, `random`), counting its passes, and
    records what it saw (batch sizes, whether autocast was on, the model's output dtype)."""

    name = "shift"

    def __init__(self, eps=0.1, norm="linf", random: bool = False):
        super().__init__(eps, norm)
        self.random, self.seen = random, []

    def perturb(self, model, x, y):
        out = model(x)
        self.seen.append((len(x), torch.is_autocast_enabled("cpu"), out.dtype))
        self.forward_passes += len(x)
        self.backward_passes += 2 * len(x)
        step = torch.randint(0, 2, (len(x), 1)).float() * 2 - 1 if self.random else torch.ones(len(x), 1)
        return (x + self.eps * step).clamp(0, 1)


def data(n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    return torch.rand(n, 4) * 0.5 + 0.25, torch.randint(0, 3, (n,))


# ---- precision ------------------------------------------------------------------------------------------------
def test_scale_grad_is_the_identity_forward_and_scales_the_gradient_back():
    x = torch.tensor([1.0, -2.0], requires_grad=True)
    y = _ScaleGrad.apply(x, 4.0)
    assert torch.equal(y, x)
    (y * torch.tensor([1.0, 3.0])).sum().backward()
    assert torch.equal(x.grad, torch.tensor([4.0, 12.0]))


def test_outputs_applies_to_floating_tensors_at_any_depth_only():
    f, i = torch.tensor([1.0]), torch.tensor([1])
    out = _outputs((f, (i, f), "s"), lambda t: t * 2)
    assert torch.equal(out[0], torch.tensor([2.0])) and torch.equal(out[1][1], torch.tensor([2.0]))
    assert out[1][0] is i and out[2] == "s"
    assert torch.equal(_outputs(f, lambda t: t + 1), torch.tensor([2.0])) and _outputs(i, lambda t: t + 1) is i


def test_an_entry_point_is_a_method_of_the_class_only():
    m = Linear()
    assert _method(m, "features") and _method(m, "forward")
    assert not _method(m, "head"), "a submodule is not an entry point"
    assert not _method(m, "acceptance_margins"), "absent"
    m.extra = lambda x: x
    assert not _method(m, "extra"), "an instance attribute is not a method of the class"
    assert not _method(m, "training"), "not callable"


@pytest.mark.parametrize("name, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_under_autocast_every_entry_point_hands_back_fp32_and_the_hooks_go_after(name, dtype):
    m, x = Linear(), torch.rand(2, 4)
    inner = []
    handle = m.head.register_forward_hook(lambda mod, a, out: inner.append(out.dtype))
    with precision(m, CPU, name):
        assert set(vars(m)) >= {"forward", "features"} and "acceptance_margins" not in vars(m)
        assert torch.is_autocast_enabled("cpu")
        outs = [m(x), m(x), m.features(x)]  # a second call: the depth counter was restored
    handle.remove()
    assert inner == [dtype, dtype], "the network ran in the autocast dtype"
    assert [o.dtype for o in outs] == [torch.float32] * 3
    assert "forward" not in vars(m) and "features" not in vars(m) and not torch.is_autocast_enabled("cpu")


def test_fp32_is_no_autocast_and_no_wrapper():
    m = Linear()
    with precision(m, CPU, "fp32"):
        assert not torch.is_autocast_enabled("cpu") and "forward" not in vars(m)
        assert m(torch.rand(2, 4)).dtype == torch.float32


def test_the_wrappers_go_when_the_attack_fails():
    m = Linear()
    with pytest.raises(RuntimeError, match="boom"), precision(m, CPU, "bf16"):
        raise RuntimeError("boom")
    assert "forward" not in vars(m) and "features" not in vars(m)


class Quiet(nn.Module):
    """Small logits: fp16's scaled gradient must come back at the input exactly once (forward calls features)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([[1.0, -2.0, 0.5, 1.5], [0.5, 1.0, -1.0, 2.0]]))

    def features(self, x):
        return x @ self.w.T

    def forward(self, x):
        return 1e-3 * self.features(x)


def test_fp16_gradient_through_nested_entry_points_is_unscaled_once():
    m, x = Quiet(), torch.tensor([[0.25, 0.5, 0.75, 1.0]], requires_grad=True)
    (exact,) = torch.autograd.grad(m(x).sum(), x)
    with precision(m, CPU, "fp16"):
        (mixed,) = torch.autograd.grad(m(x).sum(), x)
        (feat,) = torch.autograd.grad(m.features(x).sum(), x)
        plain = m(x.detach())  # an input without gradient passes as it is
    assert torch.allclose(mixed, exact, rtol=1e-2) and mixed.dtype == torch.float32
    assert torch.allclose(feat, 1e3 * exact, rtol=1e-2)
    assert not plain.requires_grad or plain.dtype == torch.float32


def test_fast_layout_only_for_a_convolution_in_half_precision_on_cuda():
    cuda = torch.device("cuda")  # a device object; nothing runs on it

    def conv():
        return nn.Sequential(nn.Conv2d(3, 4, 3))

    def last(m):
        return m[0].weight.is_contiguous(memory_format=torch.channels_last)

    assert last(fast_layout(conv(), cuda, "bf16")) and last(fast_layout(conv(), cuda, "fp16"))
    assert not last(fast_layout(conv(), CPU, "bf16")) and not last(fast_layout(conv(), cuda, "fp32"))
    assert not last(fast_layout(conv(), cuda, "fp8")), "an unknown precision is no half precision"
    lin = nn.Linear(2, 2)
    assert fast_layout(lin, cuda, "bf16") is lin


# ---- predictions ----------------------------------------------------------------------------------------------
def test_predict_in_batches_in_eval_mode_restored_after():
    m = nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.9))
    x = torch.rand(7, 4)
    with torch.no_grad():
        want = m[0](x).argmax(1)
    m.train()
    for batch in (1, 2, 3, 7, 10):
        assert torch.equal(predict(m, x, batch, CPU), want)
    assert m.training and m[1].training


def test_predict_draws_stacks_fresh_draws():
    x, _ = data(6)
    torch.manual_seed(0)
    draws = predict_draws(Noisy(), x, 4, 4, CPU)
    assert draws.shape == (4, 6) and draws.dtype == torch.long
    assert len({tuple(d.tolist()) for d in draws}) > 1, "each draw passes the model afresh"
    assert predict_draws(Linear(), x, 1, 4, CPU).shape == (1, 6)


# ---- crafting --------------------------------------------------------------------------------------------------
class Half(Shift):
    """Returns its examples in bf16 (on the grid of eighths, exact in bf16)."""

    def perturb(self, model, x, y):
        return super().perturb(model, x, y).bfloat16()


def test_run_attack_attacks_the_chosen_examples_in_batches_and_counts_its_cost(tmp_path):
    x, y = data(5)
    attack = Shift(0.1)
    attack.forward_passes = attack.backward_passes = 99  # left over from an earlier cell
    sizes = []
    x_adv, cost = run_attack(attack, Linear(), x, y, 2, CPU, on_batch=sizes.append)
    assert len(x_adv) == 5 and torch.allclose(x_adv[torch.arange(5)], x + 0.1)
    assert sizes == [2, 2, 1] and [s[0] for s in attack.seen] == [2, 2, 1]
    assert {k: v for k, v in cost.items() if k != "attack_seconds"} == {
        "forward_passes": 5,
        "backward_passes": 10,
        "n_attacked": 5,
    }
    assert 0 <= cost["attack_seconds"] < 60
    only = torch.tensor([False, True, False, True, True])
    sizes, path = [], tmp_path / "x_adv.npy"
    x_adv, cost = run_attack(Shift(0.1), Linear(), x, y, 2, CPU, only=only, on_batch=sizes.append, path=path)
    got = x_adv[torch.arange(5)]
    x_adv.dataset.close()  # flushed, as the executor does before moving the file into its cache entry
    whole = torch.from_numpy(np.load(path))
    assert torch.equal(got, whole), "written to the named file, read back from it"
    assert torch.equal(whole[~only], x[~only]) and torch.allclose(whole[only], x[only] + 0.1)
    assert sizes == [2, 1], "batches of the attacked examples, not of the windows"
    assert cost["n_attacked"] == 3 and cost["forward_passes"] == 3 and cost["backward_passes"] == 6
    empty, cost = run_attack(Shift(0.1), Linear(), x[:0], y[:0], 2, CPU, path=tmp_path / "empty.npy")
    assert len(empty) == 0 and cost["n_attacked"] == 0
    assert (tmp_path / "empty.npy").exists(), "an empty crafted set is a file too, where it was asked for"


def test_run_attack_runs_in_the_precision_and_returns_fp32():
    x, y = data(3)
    for name, on in (("fp32", False), ("bf16", True)):
        attack = Shift(0.1)
        x_adv, _ = run_attack(attack, Linear(), x, y, 8, CPU, precision_name=name)
        assert attack.seen == [(3, on, torch.float32)] and x_adv[torch.arange(3)].dtype == torch.float32


def test_attacked_hands_out_windows_in_order_each_read_once():
    x, y = data(7)
    reads = []

    class Counted:  # images read on access, recording which rows each read asks for
        shape = x.shape

        def __len__(self):
            return len(x)

        def __getitem__(self, rows):
            reads.append(torch.as_tensor(rows).tolist())
            return x[rows]

    only = torch.tensor([True, False, False, True, True, False, True])
    adv = Attacked(Shift(0.1), Linear(), Counted(), y, 3, CPU, only=only)
    assert adv.cost == {}, "no cost before the iteration"
    windows = list(adv)
    assert [len(w) for w in windows] == [3, 3, 1]
    got = torch.cat(windows)
    assert torch.allclose(got[only], x[only] + 0.1) and torch.equal(got[~only], x[~only])
    assert sorted(i for r in reads for i in r) == list(range(7)), "every image read exactly once"
    assert all(reads), "a window whose rows are all attacked reads no clean image (an empty read)"
    assert adv.cost["n_attacked"] == 4 and adv.cost["forward_passes"] == 4


class Slow(Shift):
    """Takes 0.05 s per batch."""

    def perturb(self, model, x, y):
        time.sleep(0.05)
        return super().perturb(model, x, y)


def test_attacked_attacks_a_batch_only_when_its_window_is_asked_for_and_counts_its_seconds():
    x, y = data(5)
    handed, when = 0, []
    adv = Attacked(Slow(0.1), Linear(), x, y, 2, CPU, on_batch=lambda n: when.append(handed))
    tick = time.perf_counter()
    for _ in adv:
        handed += 1
    wall = time.perf_counter() - tick
    assert when == [0, 1, 2], "each batch attacked as its window is asked for, not a window ahead"
    assert 0.15 <= adv.cost["attack_seconds"] <= wall, "the seconds of the three batches, summed"


def test_each_batch_is_checked_and_kept_in_fp32():
    x, y = torch.tensor([[0.25, 0.5, 0.375, 0.625]] * 4), torch.zeros(4, dtype=torch.long)
    x_adv, _ = run_attack(Half(0.125), Linear(), x, y, 2, CPU)
    got = x_adv[torch.arange(4)]
    assert got.dtype == torch.float32 and torch.equal(got, x + 0.125)
    with pytest.raises(AttackConstraintError, match="leaves the l2 ball"):
        run_attack(Shift(0.1, norm="l2"), Linear(), x, y, 2, CPU)  # +0.1 on 4 pixels: L2 0.2 > 0.1


def test_a_crafted_set_is_checked_for_its_size_and_its_ball():
    x, _ = data(5)
    check_crafted(x, x + 0.1, Shift(0.1), batch_size=2)
    with pytest.raises(AttackConstraintError, match="x_adv has 4 examples, expected 5"):
        check_crafted(x, x[:4], Shift(0.1))
    bad = x.clone()
    bad[4] += 0.2  # in the last batch only: every batch is checked
    with pytest.raises(AttackConstraintError, match="linf"):
        check_crafted(x, bad, Shift(0.1), batch_size=2)


class Detector:
    """Embeds an image as its pixel sum; its score is the embedding plus the predicted label. Records its calls."""

    def __init__(self):
        self.embedded, self.asked = [], []

    def embed(self, x):
        x = x if isinstance(x, torch.Tensor) else x[torch.arange(len(x))]
        self.embedded.append(x.clone())
        return x.sum(1, keepdim=True)

    def nearest(self, embedded, pred):
        self.asked.append((embedded, pred))
        return embedded[:, 0] + pred


def test_compute_cell_attacks_then_scores_every_draw_with_the_seed():
    x, y = data(6)
    model = Noisy()
    torch.manual_seed(5)
    pred = predict_draws(model, x, 3, 4, CPU)
    outs = []
    for burn in (0, 3):
        torch.rand(burn)
        sizes, attack = [], Shift(0.1, random=True)
        common = {"randomized": True, "batch_size": 4, "device": CPU, "seed": 7, "on_batch": sizes.append}
        outs.append(compute_cell(attack, model, x, y, pred, **common, precision_name="bf16"))
        assert sizes == [4, 2] and [s[1] for s in attack.seen] == [True, True], "in the cell's precision"
    (out, cost), (again, _) = outs
    assert out["pred_adv"].shape == (3, 6) and torch.equal(out["pred_adv"], again["pred_adv"])
    assert torch.equal(out["clean"], pred == y) and torch.equal(out["adv"], out["pred_adv"] == y)
    assert cost["n_attacked"] == 6 and "clean_rejected" not in out and "score_adv" not in out
    other, _ = compute_cell(Shift(0.1, random=True), model, x, y, pred, **{**common, "seed": 8})
    assert not torch.equal(other["pred_adv"], out["pred_adv"]), "the seed decides the attack's and draws' noise"


def test_compute_cell_attacks_a_deterministic_model_on_its_clean_correct_examples():
    x, y = data(6)
    model = Linear()
    pred = predict_draws(model, x, 1, 8, CPU)
    out, cost = compute_cell(Shift(0.1), model, x, y, pred, randomized=False, batch_size=8, device=CPU, seed=0)
    assert cost["n_attacked"] == int((pred[0] == y).sum()) < 6
    wrong = pred[0] != y
    assert torch.equal(out["pred_adv"][0][wrong], pred[0][wrong]), "the others keep x' = x"


def test_compute_cell_scores_a_deterministic_model_window_by_window_with_its_detector():
    x, y = data(6)
    model = Linear()
    pred = predict_draws(model, x, 1, 8, CPU)
    right = pred[0] == y
    det, score_clean, attack, sizes = Detector(), torch.ones(6), Shift(0.1), []
    common = {"randomized": False, "device": CPU, "seed": 0, "on_batch": sizes.append, "precision_name": "bf16"}
    out, cost = compute_cell(attack, model, x, y, pred, batch_size=2, **common, detector=det, score_clean=score_clean)
    x_adv = torch.where(right[:, None], (x + 0.1).clamp(0, 1), x)
    want = predict(model, x_adv, 8, CPU)
    assert torch.equal(out["pred_adv"], want[None]) and cost["n_attacked"] == int(right.sum()) == sum(sizes)
    assert all(s[1] for s in attack.seen), "the attack ran in the cell's precision"
    assert [len(e) for e in det.embedded] == [2, 2, 2], "embedded a window at a time"
    assert torch.allclose(torch.cat(det.embedded), x_adv)
    ((embedded, asked),) = det.asked
    assert torch.allclose(embedded, x_adv.sum(1, keepdim=True)) and torch.equal(asked, want)
    assert out["score_clean"] is score_clean and torch.allclose(out["score_adv"], x_adv.sum(1) + want)
    assert "clean_rejected" not in out, "no reject label"


def test_compute_cell_scores_a_crafted_set_with_the_models_reject_label_and_detector():
    x, y = data(6)
    model = Noisy()
    model.reject_label = 2
    torch.manual_seed(3)
    pred = predict_draws(model, x, 2, 8, CPU)
    x_adv = (x + 0.05).clamp(0, 1)
    det, score_clean = Detector(), torch.ones(6)
    common = {"randomized": True, "batch_size": 4, "device": CPU, "seed": 4}
    attack = Shift(0.1)
    out, cost = compute_cell(attack, model, x, y, pred, **common, x_adv=x_adv, detector=det, score_clean=score_clean)
    assert cost == {} and attack.seen == [], "a crafted set is scored, not attacked"
    torch.manual_seed(4)
    want = predict_draws(model, x_adv, 2, 4, CPU)
    assert torch.equal(out["pred_adv"], want), "the scoring draws follow the cell's seed"
    assert torch.equal(out["adv_rejected"], want == 2) and torch.equal(out["clean_rejected"], pred == 2)
    ((embedded, asked),) = det.asked
    assert torch.equal(det.embedded[0], x_adv) and torch.equal(asked, want[0]), "draw 0 is the detector's"
    assert out["score_clean"] is score_clean and torch.allclose(out["score_adv"], x_adv.sum(1) + want[0])
    with pytest.raises(AttackConstraintError):
        compute_cell(Shift(0.01), model, x, y, pred, **common, x_adv=x_adv)  # 0.05 > 0.01: re-checked, not trusted
    out, _ = compute_cell(Shift(0.1), Linear(), x, y, pred[:1], **{**common, "randomized": False}, x_adv=x_adv)
    assert torch.equal(out["pred_adv"], predict(Linear(), x_adv, 8, CPU)[None]) and "score_adv" not in out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cell_on_the_gpu_moves_each_batch_there_and_brings_the_results_back():
    x, y = data(6)
    gpu = torch.device("cuda")
    model = Linear().to(gpu)
    pred = predict_draws(model, x, 2, 4, gpu)
    assert pred.device.type == "cpu"
    out, cost = compute_cell(Shift(0.1), model, x, y, pred, randomized=True, batch_size=4, device=gpu, seed=0)
    assert out["pred_adv"].device.type == "cpu" and cost["n_attacked"] == 6
