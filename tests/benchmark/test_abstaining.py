"""Models that may reject their input: the counting rule, the abstention metrics, the adaptive attack on the
accept/reject pipeline, the rule that withholds a detector's numbers without it, and the targeted success rate."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hand_cells import cell
from toy_models import Gatekeeper

from attacks.pgd import PGD
from attacks.reject import RejectAwarePGD, _Merged
from benchmark.records import Row
from benchmark.results import report
from benchmark.results.files import write_csv
from benchmark.runner import checks
from benchmark.runner.stages.attack import compute_cell, predict_draws
from benchmark.runner.stages.score import metrics, outcome, targeted_success


def image(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).view(1, 2, 2)


# ---- the counting rule and the metrics ----------------------------------------------------------------------------
def test_rejected_clean_is_an_error_and_rejected_adversarial_is_defended():
    y = torch.tensor([0, 1, 2, 0])
    pred_clean = torch.tensor([[0, 9, 2, 1]])  # 9 = rejected: example 1 is an error clean
    pred_adv = torch.tensor([[9, 9, 1, 0]])  # example 0 rejected under attack: defended; 2 fooled
    out = outcome(pred_clean, pred_adv, y, reject_label=9)
    assert out["clean"].tolist() == [[True, False, True, False]]
    assert out["adv"].tolist() == [[True, True, False, True]]
    m = metrics(out)
    assert m["robust_acc"] == pytest.approx(1 / 4)  # only example 0: accepted and right clean, rejected under attack
    assert m["clean_acc"] == pytest.approx(2 / 4)
    assert outcome(pred_clean, pred_adv, y)["adv"].tolist() == [[False, False, False, True]]  # no reject label


def test_abstention_metrics_on_a_hand_made_model_with_a_known_reject_pattern():
    """Eight examples; the Gatekeeper's answers are known: clean, examples 6 and 7 are rejected (false rejections)
    and 5 is misclassified; the adversarial versions of 0 and 1 are rejected, 2 and 3 are fooled, 4 stays right."""
    model, device = Gatekeeper(), torch.device("cpu")
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    x = torch.stack(
        [
            image([1, 0, 0, 0]),
            image([0, 1, 0, 0]),
            image([0, 0, 1, 0]),
            image([1, 0, 0, 0]),
            image([0, 1, 0, 0]),
            image([1, 0, 0, 0]),  # right answer 2, model says 0
            image([1, 0, 0, 0.9]),  # rejected clean
            image([0, 1, 0, 0.9]),  # rejected clean
        ]
    )
    x_adv = x.clone()
    x_adv[0, 0, 1, 1] = x_adv[1, 0, 1, 1] = 0.9  # rejected under attack
    x_adv[2] = image([0.6, 0, 0.5, 0])  # fooled into class 0
    x_adv[3] = image([0.5, 0.6, 0, 0])  # fooled into class 1
    pred_clean = predict_draws(model, x, 1, 4, device)
    out, _ = compute_cell(PGD(1.0), model, x, y, pred_clean, randomized=False, batch_size=4, device=device, seed=0,
                          x_adv=x_adv)  # fmt: skip
    m = metrics(out)
    assert m["clean_acc"] == pytest.approx(5 / 8)  # 0-4 right and accepted; 5 wrong; 6, 7 rejected
    assert m["clean_acc_accepted"] == pytest.approx(5 / 6)
    assert m["false_rejection_rate"] == pytest.approx(2 / 8)
    assert m["robust_acc"] == pytest.approx(3 / 8)  # 0, 1 rejected (defended), 4 right; 2, 3 fooled
    assert m["defense_rate"] == pytest.approx(3 / 5)  # of the 5 attacked (right clean): rejected or right
    assert m["adv_rejection_rate"] == pytest.approx(2 / 5)
    assert m["success_rate"] == pytest.approx(2 / 5)


def test_a_model_that_never_rejects_has_no_abstention_metrics():
    out = outcome(torch.tensor([[0, 1]]), torch.tensor([[1, 1]]), torch.tensor([0, 1]))
    assert metrics(out)["false_rejection_rate"] is None and metrics(out)["defense_rate"] is None


def test_targeted_success_counts_the_target_class_over_clean_correct_examples():
    y = torch.tensor([0, 1, 2, 3])
    out = outcome(torch.tensor([[0, 1, 2, 0]]), torch.tensor([[2, 0, 2, 2]]), y)  # example 3 wrong clean
    targets = torch.tensor([2, 2, 0, 2])
    # clean-correct: 0, 1, 2; pushed to the target: example 0 only (3 hits its target but was wrong clean)
    assert targeted_success(out, targets) == pytest.approx(1 / 3)


# ---- the adaptive attack ------------------------------------------------------------------------------------------
def test_merged_logits_give_the_cross_entropy_of_true_class_or_rejection():
    z = torch.randn(5, 4)
    y = torch.tensor([0, 1, 2, 0, 1])
    merged = _Merged(lambda _x: z, y, reject=3)(torch.zeros(5))
    p = F.softmax(z, dim=1)
    expected = -torch.log(p[torch.arange(5), y] + p[:, 3])
    assert torch.allclose(F.cross_entropy(merged, y, reduction="none"), expected, atol=1e-6)


class FoolableDetector(nn.Module):
    """A linear 3-class classifier on 16 pixels behind a detector built to be fooled: it rejects when a direction
    the classes do not use is large. Cross-entropy PGD that ignores the reject option raises the reject logit (that
    lowers p_y too) and lands in rejection; an attack that treats rejection as the true class lowers it instead."""

    reject_label = 3

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        w = torch.randn(3, 16, generator=g)
        w[:, 8:] = 0  # the classes read the first 8 pixels
        self.classes = nn.Linear(16, 3)
        self.classes.weight.data, self.classes.bias.data = w, torch.zeros(3)
        self.detector = torch.zeros(16)
        self.detector[8:] = 4.0  # the detector reads the other 8

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        z = self.classes(flat)
        reject = z.amax(1) + flat @ self.detector - 4.0 * 1.2  # rejects when the last 8 pixels sum above 1.2
        return torch.cat([z, reject[:, None]], dim=1)


def test_the_adaptive_attack_beats_the_non_adaptive_one_on_a_detector_built_to_be_fooled():
    torch.manual_seed(0)
    model, device = FoolableDetector().eval(), torch.device("cpu")
    x = torch.rand(64, 1, 4, 4) * 0.4
    x.view(64, -1)[:, 8:] *= 0.25  # dark last pixels (sum <= 0.8): accepted clean
    y = model(x)[:, :3].argmax(1)  # labels the model gets right
    pred_clean = predict_draws(model, x, 1, 64, device)
    assert (pred_clean[0] == y).all()
    common = {"randomized": False, "batch_size": 64, "device": device, "seed": 0}
    plain, _ = compute_cell(PGD(0.3, steps=20), model, x, y, pred_clean, **common)
    adaptive, _ = compute_cell(RejectAwarePGD(0.3, steps=20), model, x, y, pred_clean, **common)
    plain_m, adaptive_m = metrics(plain), metrics(adaptive)
    assert plain_m["clean_acc"] == 1.0
    assert plain_m["adv_rejection_rate"] > 0.5  # the plain attack walks into the detector (measured 0.63) ...
    assert plain_m["robust_acc"] > 0.5
    assert adaptive_m["robust_acc"] < 0.05  # ... the adaptive one around it (measured 0)
    assert adaptive_m["adv_rejection_rate"] < 0.05


def test_the_untargeted_adaptive_attack_is_plain_pgd_on_a_model_that_never_rejects():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(16, 1, 4, 4)
    y = net(x).argmax(1)
    torch.manual_seed(1)
    a = RejectAwarePGD(0.1, steps=5, targets=0)(net, x, y)
    torch.manual_seed(1)
    b = PGD(0.1, steps=5)(net, x, y)
    assert torch.equal(a, b)


# ---- no adaptive attack, no number ------------------------------------------------------------------------------
def _row(attack: str, eps: float, threat: str = "white-box", norm: str = "linf", reject_aware: bool = False) -> Row:
    """A row of `attack`; with its cell (`reject_aware` as the attack's) unless it is a worst case."""
    spec = None if attack == "worst_case" else cell(norm, eps, name=attack, reject_aware=reject_aware)
    return Row(attack=attack, threat_model=threat, norm=norm, eps=eps, flags="", cell=spec)


def _made(reject_aware_eps: list[float]):
    rejecting = outcome(torch.tensor([[0, 3]]), torch.tensor([[3, 1]]), torch.tensor([0, 1]), reject_label=3)
    made = [(_row("pgd_linf", e), rejecting) for e in (8 / 255, 16 / 255)]
    made += [(_row("pgd_reject_aware", e, reject_aware=True), rejecting) for e in reject_aware_eps]
    worst = [_row("worst_case", e, "union: ...") for e in (8 / 255, 16 / 255)]
    return made, worst


def test_a_rejecting_defense_without_an_adaptive_attack_is_flagged_everywhere():
    made, worst = _made([])
    checks.abstaining_without_adaptive_attack(made, worst)
    assert all("no_adaptive_attack" in r.flags for r in [*(m[0] for m in made), *worst])


def test_only_the_worst_case_at_budgets_the_adaptive_attack_missed_is_flagged():
    made, worst = _made([16 / 255])
    checks.abstaining_without_adaptive_attack(made, worst)
    assert [r.flags for r in worst] == ["no_adaptive_attack", ""]
    assert [m[0].flags for m in made] == ["ignores_reject_option"] * 2 + [""], "pgd_linf ignores the reject option"


def test_a_model_that_never_rejects_needs_no_adaptive_attack():
    plain = outcome(torch.tensor([[0, 1]]), torch.tensor([[1, 1]]), torch.tensor([0, 1]))
    row = _row("pgd_linf", 8 / 255)
    checks.abstaining_without_adaptive_attack([(row, plain)], [])
    assert row.flags == ""


def test_the_leaderboard_withholds_flagged_numbers_and_states_the_rule(tmp_path):
    base = {"experiment": "x", "pair": "p", "source": "s", "target": "t", "model": "m", "seed": 0, "steps": 20,
            "n_examples": 10, "draws": 1, "eps_label": "16/255", "norm": "linf", "eps": 16 / 255, "clean_acc": 0.9,
            "success_rate": 0.1}  # fmt: skip
    rows = [
        {**base, "defense": "freeze", "attack": "pgd_linf", "threat_model": "white-box", "robust_acc": 0.3},
        {**base, "defense": "freeze", "attack": "worst_case", "threat_model": "union: a+b", "robust_acc": 0.3},
        {**base, "defense": "gate", "attack": "pgd_linf", "threat_model": "white-box", "robust_acc": 0.8,
         "false_rejection_rate": 0.1, "clean_acc_accepted": 0.95, "defense_rate": 0.9, "adv_rejection_rate": 0.7},
        {**base, "defense": "gate", "attack": "worst_case", "threat_model": "union: a+b", "robust_acc": 0.8,
         "flags": "no_adaptive_attack"},
    ]  # fmt: skip
    write_csv([Row(**r) for r in rows], tmp_path / "results.csv")
    (tmp_path / "report_config.json").write_text(json.dumps({"headline": {"linf": 16 / 255}}))
    report.rebuild(tmp_path)
    md = (tmp_path / "leaderboard.md").read_text()
    ranking = md.split("| rank |")[1].split("\n\n")[0]
    assert "| 1 | freeze | 90.0 | 30.0 | 30.0 |" in ranking
    assert "| - | gate | 90.0 | 80.0 | - |" in ranking  # its worst case is withheld: listed last, not ranked
    assert "a rejected adversarial input counts as defended, a rejected clean input as an error" in md
    assert "### Defenses that reject inputs" in md and "| gate | 0 | pgd_linf | linf 16/255 | 90.0 | 95.0 | 10.0" in md
    assert "no attack aimed at its reject decision" in md  # the flag's warning


# ---- through the runner ---------------------------------------------------------------------------------------
def _sweep(tmp_path, attacks: str) -> list[Row]:
    from benchmark import run as runner
    from benchmark.results.files import read_csv
    from benchmark.runner.config import compose

    overrides = [
        "logger=none",
        "progress=false",
        "teacher.trainer.max_epochs=3",
        "defense=[differentiator]",
        "++defense.freeze.trainer.max_epochs=3",
        "defense.differentiator.trainer.max_epochs=2",
        f"attack=[{attacks}]",
        "eval.n_examples=32",
        "eval.detection_reference=100",
        f"cache_dir={tmp_path / 'cache'}",
        f"results_dir={tmp_path / 'results'}",
    ]
    for name in attacks.split(","):
        overrides += [f"attack.{name}.epsilons=[16/255]", f"attack.{name}.attack.steps=3"]
    runner.run(compose(overrides))
    return read_csv(tmp_path / "results" / "results.csv")


@pytest.mark.slow
def test_mimicry_and_the_differentiators_through_the_runner(tmp_path):
    rows = _sweep(tmp_path, "pgd_linf,pgd_reject_aware,mimicry_linf")
    by = {(r.defense, r.attack): r for r in rows}
    mimicry = by[("differentiator", "mimicry_linf")]
    assert mimicry.threat_model == "mimicry" and mimicry.surrogate == "teacher"
    assert mimicry.targeted_success is not None and by[("teacher", "mimicry_linf")].targeted_success is not None
    for attack in ("pgd_linf", "pgd_reject_aware", "mimicry_linf", "worst_case"):
        assert "no_adaptive_attack" not in by[("differentiator", attack)].flags
    assert by[("differentiator", "pgd_linf")].false_rejection_rate is not None  # the reject label reached the scoring
    assert by[("teacher", "pgd_linf")].false_rejection_rate is None
    assert ("teacher", "pgd_reject_aware") not in by  # runs on the listed abstaining defenses only
    assert "mimicry_linf" in by[("differentiator", "worst_case")].threat_model  # on the epsilon grid


@pytest.mark.slow
def test_without_the_adaptive_attack_the_suite_reports_nothing_for_a_rejecting_defense(tmp_path):
    rows = _sweep(tmp_path, "pgd_linf,mimicry_linf")
    mine = [r for r in rows if r.defense == "differentiator"]
    assert mine and all("no_adaptive_attack" in r.flags for r in mine)
    assert not any("no_adaptive_attack" in r.flags for r in rows if r.defense == "teacher")
    md = (tmp_path / "results" / "leaderboard.md").read_text()
    assert "| - | differentiator |" in md
