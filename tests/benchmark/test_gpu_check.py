"""`make gpu-check` on the CPU at toy sizes: its report holds what ran, and the sweeps train under DDP / workers."""

from __future__ import annotations

import json

import pytest

from benchmark.devtools import gpu_check


def test_precision_part_reports_time_and_robust_accuracy_per_precision(tmp_path):
    out = tmp_path / "gpu_check.json"
    rc = gpu_check.main(["--device", "cpu", "--tiny", "--rounds", "1", "--steps", "2", "--parts", "precision",
                         "--out", str(out)])  # fmt: skip
    report = json.loads(out.read_text())
    assert rc == 0 and report["device"] == "cpu" and report["gpus"] == 0 and report["tiny"]
    assert set(report["precision"]) == {"resnet18_32px", "vit_s16_224px"}
    for r in report["precision"].values():
        for prec in ("fp32", "bf16"):
            assert r[prec]["seconds"] > 0 and 0 <= r[prec]["robust_acc"] <= 1
        assert 0 <= r["bf16"]["changed_predictions"] <= 1
        assert r["batch_size_auto"]["fp32"] == gpu_check.AUTO_BATCH_CPU  # off CUDA: the executor's fixed size
    assert "ddp" not in report


@pytest.mark.e2e
def test_ddp_and_workers_sweeps_run_on_two_cpu_processes(tmp_path):
    out = tmp_path / "gpu_check.json"
    rc = gpu_check.main(["--device", "cpu", "--tiny", "--parts", "ddp", "workers", "--out", str(out)])
    report = json.loads(out.read_text())
    assert rc == 0
    for kind in ("ddp", "workers"):
        assert report[kind]["returncode"] == 0 and report[kind]["rows"] > 0, report[kind]
    ddp_sizes = {m["world_size"] for m in report["ddp"]["trained"]}
    assert ddp_sizes == {2}, report["ddp"]["trained"]  # every training stage ran on 2 processes
    assert {m["world_size"] for m in report["workers"]["trained"]} == {1}
