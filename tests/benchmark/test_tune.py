"""Choosing a defense setting on the validation split: the test split is never read, the best validation value wins."""

from __future__ import annotations

import pytest
import torch

from benchmark.devtools import tune
from datamodules.base import TransferDataModule


@pytest.mark.slow
def test_tuning_reads_only_the_validation_split(tmp_path, monkeypatch):
    stacked, lazy = TransferDataModule.tensors, TransferDataModule.lazy_tensors

    def guarded(real):
        def read(self, domain, split, *n):
            assert split != "test", "tuning read the test split"
            return real(self, domain, split, *n)

        return read

    monkeypatch.setattr(TransferDataModule, "tensors", guarded(stacked))
    monkeypatch.setattr(TransferDataModule, "lazy_tensors", guarded(lazy))
    overrides = [
        "defense=trades",
        "teacher.trainer.max_epochs=2",
        "defense.trades.trainer.max_epochs=1",
        "defense.trades.module.train_attack.steps=2",
        "attack.pgd_linf.attack.steps=3",
        "progress=false",
        f"cache_dir={tmp_path / 'cache'}",
        f"results_dir={tmp_path / 'r'}",
    ]
    t = tune.tune("defense.trades.module.beta", ["0.5", "6"], overrides)
    best = max(t["results"], key=lambda r: (r["val_robust"], r["val_clean"]))
    assert t["chosen"] == best["value"]
    assert {r["value"] for r in t["results"]} == {"0.5", "6"}
    assert t["results"][0]["key"] != t["results"][1]["key"], "each value is its own training stage"
    assert all(r["n_val"] > 0 for r in t["results"])
    assert "validation" in tune.markdown(t) and "test split was not read" in tune.markdown(t)


@pytest.mark.slow
def test_the_validation_pass_on_images_read_a_batch_at_a_time_is_the_pass_on_the_stacked_split(tmp_path, monkeypatch):
    """The validation split and the attacker's data are read a batch at a time, and a crafted attack's examples are
    kept in a file: the same numbers as with every split stacked whole (a deterministic defense; a crafted attack)."""
    from benchmark.runner.config import compose

    attacks = ["pgd_linf", "transfer_pgd_linf"]
    cfg = compose([
        "defense=finetune", "teacher.trainer.max_epochs=2", "defense.finetune.trainer.max_epochs=1",
        "attack.pgd_linf.attack.steps=3", "attack.transfer_pgd_linf.attack.attack.steps=3",
        "attack.transfer_pgd_linf.epsilons=[16/255]", f"attack=[{','.join(attacks)}]", "logger=none", "progress=false",
        f"cache_dir={tmp_path / 'cache'}", f"results_dir={tmp_path / 'r'}",
    ])  # fmt: skip
    read = tune.validation_robustness(cfg, attacks)
    monkeypatch.setattr(TransferDataModule, "lazy_tensors", TransferDataModule.tensors)  # every split stacked whole
    whole = tune.validation_robustness(cfg, attacks)
    assert read == whole
    assert read["per_attack"]["transfer_pgd_linf"] < read["val_clean"], "the crafted attack must do some work"


@pytest.mark.slow
def test_a_randomized_defense_is_tuned_with_the_same_draws_whatever_ran_before(tmp_path):
    """Its clean draws are seeded (eval.seed), as the runner's: a cold tune (training first) and a warm one agree."""
    from benchmark.runner.config import compose

    cfg = compose([
        "defense=dropout", "teacher.trainer.max_epochs=1", "++defense.freeze.trainer.max_epochs=1",
        "defense.dropout.trainer.max_epochs=1", "attack.pgd_linf.attack.steps=2", "attack=[pgd_linf]", "eval.draws=4",
        "logger=none", "progress=false", f"cache_dir={tmp_path / 'cache'}", f"results_dir={tmp_path / 'r'}",
    ])  # fmt: skip
    runs = []
    for burn in (0, 7):
        torch.rand(burn)  # whatever this process drew before
        runs.append(tune.validation_robustness(cfg, ["pgd_linf"]))
    assert runs[0] == runs[1]
