"""The content-addressed stage cache."""

from __future__ import annotations

import contextlib

import torch

from benchmark.cache import Cache, stage_key


def test_key_is_stable_and_order_independent():
    a = stage_key("student", {"lr": 0.1, "mode": "finetune", "layers": ["a", "b"]})
    assert a == stage_key("student", {"mode": "finetune", "layers": ["a", "b"], "lr": 0.1})
    assert a != stage_key("student", {"mode": "finetune", "layers": ["a", "b"], "lr": 0.01})
    assert a != stage_key("teacher", {"mode": "finetune", "layers": ["a", "b"], "lr": 0.1})
    assert a != stage_key("student", {"mode": "finetune", "layers": ["b", "a"], "lr": 0.1})


def test_put_then_read(tmp_path):
    cache = Cache(tmp_path)
    assert cache.meta("attack", "k") is None
    flags = {"clean_correct": torch.tensor([True, False])}
    cache.put("attack", "k", {"seconds": 1.5}, {"flags": flags})
    assert cache.meta("attack", "k") == {"seconds": 1.5}
    assert torch.equal(cache.tensors("attack", "k", "flags")["clean_correct"], flags["clean_correct"])
    assert not [p for p in (tmp_path / "attack").iterdir() if p.name.startswith(".")], "temporary folder left behind"


def test_an_interrupted_write_leaves_no_entry(tmp_path, monkeypatch):
    cache = Cache(tmp_path)

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with contextlib.suppress(KeyboardInterrupt):
        cache.put("attack", "k", {"x": 1}, {"flags": {}})
    assert cache.meta("attack", "k") is None
    assert list((tmp_path / "attack").iterdir()) == []
