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
