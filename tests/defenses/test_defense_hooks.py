"""A new defense is one short subclass: the README's example (its own code block, run as it stands), an
`AdversarialStudent` and the two-optimizer hook train through the base loop; every adversarial defense gets its
attacks and model selection from the base class, from one `train_attack` argument."""

from __future__ import annotations

import inspect
import re
import sys
import types
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader, TensorDataset

from attacks.base import parse_eps
from attacks.errors import ConfigError
from attacks.fgsm import FGSM
from attacks.pgd import PGD
from benchmark.components import build
from defenses.atop import AToP
from defenses.base import TRAIN_ATTACK_KEYS, AdversarialStudent
from defenses.gen_af import GenAFDualTrack
from defenses.pgd_at import PGDAT
from defenses.tla import TLA
from defenses.trades import TRADES
from lightning_modules.classifier import build_classifier
from lightning_modules.modules import StudentModule
from lightning_modules.training import fit

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_blocks(section: str = "## Add a defense") -> dict[str, str]:
    """The first fenced code block of each language in a section of the README, as the README has it."""
    text = README.read_text()
    start = text.index(f"\n{section}\n")
    end = text.find("\n## ", start + 1)
    blocks: dict[str, str] = {}
    for lang, code in re.findall(r"^```(\w+)\n(.*?)^```", text[start : end if end > 0 else None], re.M | re.S):
        blocks.setdefault(lang, code)
    return blocks


@pytest.fixture
def readme_defense(monkeypatch):
    """(the README's config of its defense, the class): its Python block executed as the module its config's
    `_target_` names, so the runner's builder imports it from there."""
    blocks = readme_blocks()
    ((name, spec),) = yaml.safe_load(blocks["yaml"]).items()
    assert blocks["yaml"].startswith(f"# benchmark/configs/defense/{name}.yaml\n")
    module_name, cls_name = spec["module"]["_target_"].rsplit(".", 1)
    assert blocks["python"].startswith(f"# {module_name.replace('.', '/')}.py\n")
    module = types.ModuleType(module_name)
    exec(compile(blocks["python"], f"README.md ({module_name})", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, module_name, module)
    return spec, getattr(module, cls_name)


def _student(cls, digits, **kwargs):
    model = build_classifier("small_cnn", 10, 1, digits.mean, digits.std)
    return cls(model, teacher_state=model.state_dict(), mode="finetune", **kwargs)


def test_readme_defense_builds_from_its_config_with_the_base_attacks(readme_defense, digits):
    spec, cls = readme_defense
    model = build_classifier("small_cnn", 10, 1, digits.mean, digits.std)
    d = build(spec["module"], model=model, teacher_state=model.state_dict())  # as the runner builds it
    assert type(d) is cls and isinstance(d, AdversarialStudent)
    budget = spec["module"]["train_attack"]
    expected = PGD(parse_eps(budget["eps"]), steps=budget["steps"], early_stop=False)
    assert d.attack.config() == expected.config() == d.val_attack.config() and d.val_attack is not d.attack
    assert d.selection_metric == "val/robust_acc"


def test_readme_defense_trains_through_the_base_loop(readme_defense, digits):
    _, cls = readme_defense
    d = _student(cls, digits, train_attack={"eps": 16 / 255, "steps": 2}, lr=0.01)
    short = {"max_epochs": 1, "accelerator": "cpu", "limit_train_batches": 2, "limit_val_batches": 1}
    info = fit(d, digits.domain("target"), short, progress=False)
    assert info["epochs"] == 1 and info["best_value"] is not None
    assert info["selection_metric"] == "val/robust_acc" and "val/robust_acc" in info["trainer"].callback_metrics


def test_readme_defense_step_is_the_gradient_of_its_loss(readme_defense, digits):
    """One plain SGD step of the base loop moves every trainable weight by -lr * grad of the README loss."""
    _, cls = readme_defense
    d = _student(cls, digits, weight=0.5, lr=0.1, momentum=0.0, weight_decay=0.0, scheduler="none")
    d.attack = _Recording()
    d.train()
    x, y = next(iter(digits.domain("target").train_dataloader()))
    params = {n: p for n, p in d.model.named_parameters() if p.requires_grad}
    before = {n: p.detach().clone() for n, p in params.items()}
    x_adv = (x + 0.05).clamp(0, 1)
    loss = F.cross_entropy(d.model(x), y) + 0.5 * F.cross_entropy(d.model(x_adv), y)
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    one_step = {"max_epochs": 1, "accelerator": "cpu", "limit_train_batches": 1, "limit_val_batches": 0}
    fit(d, _OneBatch(x, y), one_step, progress=False)
    (seen_x, seen_y), *_ = d.attack.seen
    assert torch.equal(seen_x, x) and torch.equal(seen_y, y), "the attack crafts on the training batch"
    for n, p in params.items():
        torch.testing.assert_close(p.detach(), before[n] - 0.1 * grads[n], atol=1e-5, rtol=1e-4)


class TwoOptimizers(StudentModule):
    """Head and body with their own optimizers, stepped together on one loss (as Gen-AF does)."""

    def __init__(self, model, **kwargs):
        super().__init__(model, **kwargs)
        self.automatic_optimization = False

    def configure_optimizers(self):
        head = list(self.model.head.parameters())
        body = [p for p in self.model.parameters() if all(p is not q for q in head)]
        return [torch.optim.Adam(body, lr=1e-3), torch.optim.Adam(head, lr=1e-2)]


class _Recording:
    """A stand-in attack that returns a fixed perturbation of its input and records what it was given."""

    def __init__(self):
        self.seen = []

    def __call__(self, model, x, y):
        self.seen.append((x.clone(), y.clone()))
        return (x + 0.05).clamp(0, 1)


def test_two_optimizers_are_both_stepped(digits):
    d = _student(TwoOptimizers, digits)
    head_before = d.model.head.weight.clone()
    body_before = d.model.backbone.features[0].weight.clone()
    fit(d, digits.domain("target"), {"max_epochs": 1, "accelerator": "cpu", "limit_train_batches": 2}, progress=False)
    assert not torch.equal(d.model.head.weight, head_before)
    assert not torch.equal(d.model.backbone.features[0].weight, body_before)


# ---------------------------------------------------------------------------------------------------------------
# AdversarialStudent: the training attack, the validation attack and the selection metric, set once
# ---------------------------------------------------------------------------------------------------------------


class CleanAndAdversarial(AdversarialStudent):
    """A new adversarial defense is a loss and nothing else: attacks and selection come from the base."""

    def training_loss(self, x, y):
        logits = self.model(x)
        return F.cross_entropy(logits, y) + F.cross_entropy(self.model(self.attack(self.model, x, y)), y), logits


def _pgd(eps, **kwargs):
    return PGD(eps, early_stop=False, **kwargs)


#: Each defense's attacks as they were written by hand in each file before the base class: (defense, arguments,
#: training attack, validation attack, selection metric). The configs hold every constructor argument.
EXPECTED = {
    "pgd_at-defaults": (PGDAT, {}, _pgd(8 / 255), _pgd(8 / 255), "val/robust_acc"),
    "pgd_at-l2": (
        PGDAT,
        {"train_attack": {"eps": "1/2", "norm": "L2", "steps": 3, "step_size": 0.2}},
        _pgd(0.5, norm="l2", steps=3, step_size=0.2),
        _pgd(0.5, norm="l2", steps=3, step_size=0.2),
        "val/robust_acc",
    ),
    # TRADES: the KL maximization steps eps / 4; its validation PGD keeps PGD's default step.
    "trades-defaults": (TRADES, {}, _pgd(8 / 255, step_size=2 / 255), _pgd(8 / 255), "val/robust_acc"),
    "trades-3-steps": (
        TRADES,
        {"train_attack": {"eps": 0.1, "steps": 3}},
        _pgd(0.1, steps=3, step_size=0.025),
        _pgd(0.1, steps=3),
        "val/robust_acc",
    ),
    "trades-step": (
        TRADES,
        {"train_attack": {"eps": "16/255", "steps": 3, "step_size": "1/255"}},
        _pgd(16 / 255, steps=3, step_size=1 / 255),
        _pgd(16 / 255, steps=3),
        "val/robust_acc",
    ),
    "tla": (
        TLA,
        {"train_attack": {"eps": 0.1, "steps": 3, "step_size": 0.02}},
        _pgd(0.1, steps=3, step_size=0.02),
        _pgd(0.1, steps=3, step_size=0.02),
        "val/robust_acc",
    ),
    "genaf_stage1-defaults": (
        GenAFDualTrack,
        {},
        _pgd(0.03, step_size=0.007, random_start=False),
        _pgd(0.03, step_size=0.007, random_start=False),
        "val/robust_acc",
    ),
    "atop-fgsm": (
        AToP,
        {"adversarial": True, "train_attack": {"eps": "16/255"}},
        FGSM(16 / 255),
        FGSM(16 / 255),
        "val/robust_acc",
    ),
    "atop-pgd": (
        AToP,
        {"adversarial": True, "train_attack": {"eps": 0.1, "steps": 3}},
        _pgd(0.1, steps=3),
        _pgd(0.1, steps=3),
        "val/robust_acc",
    ),
    "atop-stage1": (AToP, {"adversarial": False}, FGSM(8 / 255), None, "val/acc"),
}


@pytest.mark.parametrize("case", list(EXPECTED))
def test_each_defense_keeps_its_attacks_and_selection(case, digits):
    cls, kwargs, train, val, metric = EXPECTED[case]
    d = _student(cls, digits, **kwargs)
    assert isinstance(d, AdversarialStudent)
    assert d.attack.config() == train.config()
    assert (d.val_attack and d.val_attack.config()) == (val and val.config())
    assert d.selection_metric == metric
    assert d.val_attack is not d.attack, "validation must not add to the training attack's pass counts"


def test_given_validation_attack_and_metric_win(digits):
    fgsm = FGSM(0.1)
    d = _student(PGDAT, digits, val_attack=fgsm)
    assert d.val_attack is fgsm and d.selection_metric == "val/robust_acc"
    d = _student(TLA, digits, selection_metric="val/acc")
    assert d.selection_metric == "val/acc" and d.val_attack is not None
    d = _student(CleanAndAdversarial, digits, val_attack=None)
    assert d.val_attack is None and d.selection_metric == "val/acc"


def test_a_step_larger_than_the_ball_is_an_error(digits):
    with pytest.raises(
        ConfigError, match=r"^PGDAT: train_attack.step_size 0.5 exceeds the eps ball's diameter 2 \* 8/255$"
    ):
        _student(PGDAT, digits, train_attack={"eps": "8/255", "step_size": 0.5})
    with pytest.raises(ConfigError, match="exceeds"):
        _student(TLA, digits, train_attack={"eps": 0.1, "step_size": 0.21})
    assert _student(TLA, digits, train_attack={"eps": 0.1, "step_size": 0.2}).attack.step_size == 0.2


@pytest.mark.parametrize("cls", [PGDAT, TRADES, TLA, GenAFDualTrack, AToP, CleanAndAdversarial])
def test_no_defense_redeclares_the_training_attack(cls):
    """The training attack's settings are one argument of the base: a subclass declares none of them."""
    own = set(inspect.signature(cls.__init__).parameters)
    assert own.isdisjoint(TRAIN_ATTACK_KEYS), f"{cls.__name__} re-declares {own & set(TRAIN_ATTACK_KEYS)}"


def test_train_attack_keys_are_checked(digits):
    with pytest.raises(ConfigError, match=r"^PGDAT: eps is a setting of the training attack: give train_attack.eps$"):
        _student(PGDAT, digits, eps="8/255")
    with pytest.raises(ConfigError, match=r"^TLA: random_start is a setting .*train_attack.random_start$"):
        _student(TLA, digits, random_start=False)
    valid = "eps, norm, random_start, step_size, steps"
    with pytest.raises(ConfigError, match=rf"^unknown TRADES train_attack key 'epsilon'; valid: {valid}$"):
        _student(TRADES, digits, train_attack={"epsilon": 0.1})
    # a key left out keeps the defense's own default (Gen-AF: the authors' 0.007 step, no random start)
    d = _student(GenAFDualTrack, digits, train_attack={"steps": 3})
    assert d.attack.config() == _pgd(0.03, steps=3, step_size=0.007, random_start=False).config()


def test_new_adversarial_defense_trains_and_selects_on_robust_accuracy(digits):
    d = _student(CleanAndAdversarial, digits, train_attack={"eps": 0.1, "steps": 2}, lr=0.01)
    assert d.attack.config() == _pgd(0.1, steps=2).config() == d.val_attack.config()
    short = {"max_epochs": 1, "accelerator": "cpu", "limit_train_batches": 2, "limit_val_batches": 1}
    info = fit(d, digits.domain("target"), short, progress=False)
    assert info["selection_metric"] == "val/robust_acc"
    assert "val/robust_acc" in info["trainer"].callback_metrics
    assert d.attack.forward_passes > 0 and d.val_attack.forward_passes > 0


class _OneBatch(L.LightningDataModule):
    """One fixed training batch (and no validation)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        super().__init__()
        self.x, self.y = x, y

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.x, self.y), batch_size=len(self.x), shuffle=False)


@pytest.mark.slow
def test_the_readmes_add_a_defense_walkthrough_runs_end_to_end(readme_defense, tmp_path, monkeypatch):
    """As a newcomer follows the README: its defense file and config in place, then its `make bench` command (made
    small), run by the runner: the defense trains and is attacked, its sweep writes its own folder, not the
    experiment's, and the claim in its config is one of the leaderboard's findings."""
    import shlex
    import shutil

    from benchmark import run as runner
    from benchmark.runner import config as config_module

    configs = tmp_path / "configs"
    shutil.copytree(config_module.CONFIG_DIR, configs)
    blocks = readme_blocks()
    name = next(iter(yaml.safe_load(blocks["yaml"])))
    (configs / "defense" / f"{name}.yaml").write_text(blocks["yaml"])
    monkeypatch.setattr(config_module, "CONFIG_DIR", configs)
    command = re.search(r'`make bench EXPERIMENT=(\w+) ARGS="(.*?)"`', README.read_text())
    assert command, "the README gives the command that runs the new defense"
    experiment, args = command.group(1), shlex.split(command.group(2))
    small = ["logger=none", "progress=false", "attack=[fgsm]", "attack.fgsm.epsilons=[8/255]", "eval.n_examples=32",
             "eval.detection=false", "teacher.trainer.max_epochs=1", "defense.finetune.trainer.max_epochs=1",
             f"defense.{name}.trainer.max_epochs=1", f"defense.{name}.module.train_attack.steps=2",
             f"cache_dir={tmp_path / 'cache'}"]  # fmt: skip
    monkeypatch.chdir(tmp_path)
    assert runner.main([f"experiment={experiment}", *args, *small]) == 0
    assert not (tmp_path / "results" / experiment / "results.csv").exists(), "the experiment's own results untouched"
    (csv_path,) = (tmp_path / "results" / experiment / "sweeps").glob("*/results.csv")
    defenses = {line.split(",")[6] for line in csv_path.read_text().splitlines()[1:]}
    assert defenses == {"teacher", "finetune", name}
    (claim,) = yaml.safe_load(blocks["yaml"])[name]["claims"]
    assert claim["text"] in (csv_path.parent / "leaderboard.md").read_text(), "its config's claim is a finding"
