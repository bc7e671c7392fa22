"""The test sweeps: one set of override lists that every test of the runner shares, so that their stages share cache
keys (the session's warm cache, `warm_cache` in tests/conftest.py, holds TINY's teacher, students and cells).

- `TINY`: a digits sweep that trains for seconds: the teacher, two students (plain fine-tuning and PGD-AT), three
  attacks at two budgets, 64 test examples. `tiny(tmp, *extra)` narrows it and points its cache and results into
  `tmp`.
- `FAST`: what makes any shipped experiment fast here (one epoch, two batches, two examples, two attack steps);
  `fast_experiment(name, tmp)` composes an experiment with it on the tiny fake data of `tests/fake_data.py`.
- `ONE_EPOCH`: the smallest sweep (the newcomer's plan and estimate tests).
- `run(overrides)`: a run of the composed overrides; `read_rows`, `spent`: what a finished run wrote (results.csv,
  run_stats.json's seconds by kind of work).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

#: A digits sweep that trains for seconds: 2 defenses, 3 attacks at 2 epsilons, 64 test examples.
TINY = [
    "logger=none",
    "progress=false",
    "teacher.trainer.max_epochs=3",
    "defense=[finetune,pgd_at]",
    "defense.finetune.trainer.max_epochs=2",
    "defense.pgd_at.trainer.max_epochs=2",
    "defense.pgd_at.module.train_attack.steps=3",
    "attack=[fgsm,pgd_linf,transfer_pgd_linf]",
    "attack.fgsm.epsilons=[8/255,16/255]",
    "attack.pgd_linf.epsilons=[8/255,16/255]",
    "attack.pgd_linf.attack.steps=5",
    "attack.transfer_pgd_linf.epsilons=[8/255,16/255]",
    "attack.transfer_pgd_linf.attack.attack.steps=5",
    "eval.n_examples=64",
]

#: The smallest sweep that runs every kind of stage but crafting: one or two epochs, one budget, 32 examples (a cold
#: run in seconds: the newcomer's plan and estimate tests).
ONE_EPOCH = [
    "logger=none",
    "progress=false",
    "teacher.trainer.max_epochs=2",
    "defense=[finetune,pgd_at]",
    "defense.finetune.trainer.max_epochs=1",
    "defense.pgd_at.trainer.max_epochs=1",
    "defense.pgd_at.module.train_attack.steps=2",
    "attack=[fgsm,pgd_linf]",
    "attack.fgsm.epsilons=[8/255]",
    "attack.pgd_linf.epsilons=[8/255]",
    "attack.pgd_linf.attack.steps=2",
    "eval.n_examples=32",
    "eval.detection=false",
]

#: Where the tiny sweep's time goes (run_stats.json's `seconds_by_kind`): every kind of work it computes.
SPENT = {"train", "craft", "attack/fgsm", "attack/pgd_linf", "attack/transfer_pgd_linf"}


def tiny(tmp: Path, *extra: str) -> list[str]:
    """TINY plus `extra`; an `extra` that selects defenses or attacks drops TINY's settings of the others."""
    base = list(TINY)
    for group in ("defense", "attack"):
        chosen = [e.split("=", 1)[1].strip("[]").split(",") for e in extra if e.startswith(f"{group}=")]
        if chosen:
            base = [o for o in base if not o.startswith(f"{group}=")]
            base = [o for o in base if not o.startswith(f"{group}.") or o.split(".")[1].split("=")[0] in chosen[0]]
    return [*base, f"cache_dir={tmp / 'cache'}", f"results_dir={tmp / 'results'}", *extra]


def run(overrides: list[str]) -> dict:
    """`benchmark.run` on the composed overrides: what it computed and where it wrote."""
    from benchmark import run as runner
    from benchmark.runner.config import compose

    return runner.run(compose(overrides))


def read_rows(tmp: Path) -> list[dict]:
    """results.csv of a run whose results went to `tmp / "results"` (as `tiny` sets them)."""
    with (tmp / "results" / "results.csv").open() as f:
        return list(csv.DictReader(f))


def spent(tmp: Path) -> dict[str, float]:
    """run_stats.json's seconds by kind of work of a run whose results went to `tmp / "results"`."""
    seconds = json.loads((tmp / "results" / "run_stats.json").read_text())["seconds_by_kind"]
    assert all(v >= 0 for v in seconds.values())
    return seconds


#: What makes each shipped experiment fast here: tiny fake data, one epoch, a few examples, short attacks.
FAST = [
    "logger=none",
    "progress=false",
    "seeds=[0]",
    "eval.n_examples=2",
    "eval.detection_reference=8",
    "teacher.trainer.max_epochs=1",
    "+trainer.limit_train_batches=2",
    "+trainer.limit_val_batches=1",
]


def fast_experiment(experiment: str, tmp: Path) -> list[str]:
    """The overrides that run `experiment` in seconds on the fake data written under `tmp / "data"`
    (`fake_data.write_all` and `write_fashion`), with its cache and results in `tmp`."""
    from benchmark.runner.config import compose

    cfg = compose([f"experiment={experiment}"])
    overrides = [f"experiment={experiment}", *FAST, f"cache_dir={tmp / 'cache'}", f"results_dir={tmp / 'r'}"]
    for name in cfg["data"]:
        if name != "digits":
            overrides.append(f"data.{name}.root={tmp / 'data'}")
        overrides.append(f"data.{name}.batch_size=4")
    for name, defense in cfg["defense"].items():
        overrides.append(f"defense.{name}.trainer.max_epochs=1")
        if "train_attack" in defense["module"]:
            overrides.append(f"defense.{name}.module.train_attack.steps=1")
    for name in cfg["earlier_defenses"]:  # defenses that selected ones start from (++: selected or not)
        overrides.append(f"++defense.{name}.trainer.max_epochs=1")
    if "genaf" in cfg["defense"]:
        overrides.append("defense.genaf.module.probe_epochs=1")
    if (cfg["teacher"].get("common") or {}).get("trainer"):  # a self-supervised common model (CommonInit)
        overrides.append("teacher.common.trainer.max_epochs=1")
    for name, attack in cfg["attack"].items():
        overrides.append(f"attack.{name}.epsilons=[{attack['epsilons'][-1]}]")
        inner = attack["attack"].get("attack", attack["attack"])
        if "epochs" in attack["attack"]:  # universal perturbations: one pass over a few attacker images
            overrides += [f"attack.{name}.attack.epochs=1", f"++attack.{name}.attack.max_examples=8"]
        if "steps" in inner:
            key = "attack.attack" if "attack" in attack["attack"] else "attack"
            overrides.append(f"attack.{name}.{key}.steps=2")
    return overrides


def expected_models(experiment: str) -> set[str]:
    """The models an experiment evaluates: the teacher, its defenses and, with CommonInit, the common model."""
    from benchmark.runner.config import compose

    cfg = compose([f"experiment={experiment}"])
    return {"teacher", *cfg["defense"], *({"common"} if cfg["teacher"].get("common") else set())}
