"""Choosing a defense setting on the validation split: the test split is never read, the best validation value wins."""

from __future__ import annotations

import pytest

from benchmark import tune
from datamodules.base import TransferDataModule


@pytest.mark.slow
def test_tuning_reads_only_the_validation_split(tmp_path, monkeypatch):
    real = TransferDataModule.tensors

    def guarded(self, domain, split, n=None):
        assert split != "test", "tuning read the test split"
        return real(self, domain, split, n)

    monkeypatch.setattr(TransferDataModule, "tensors", guarded)
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
