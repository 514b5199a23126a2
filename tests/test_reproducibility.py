"""Same commit, config and seed, same machine: the same numbers, exactly (a smoke run, twice, from scratch)."""
from __future__ import annotations

import pytest

from tests.conftest import compose_config

NUMBERS = {"sft": lambda r: (r["train"]["train_loss"], r["train"]["val_loss"], r["eval"]),
           "rm": lambda r: r["metrics"]}


@pytest.mark.parametrize("stage", ["sft", "rm"])
def test_a_stage_run_twice_from_scratch_gives_identical_metrics(smoke_collect, tmp_path, stage):
    from clicks2pref.__main__ import run_stage

    _, collected = smoke_collect
    overrides = ["experiment=smoke", f"stage={stage}", f"data.logs={collected['logs']}", "logger=[]",
                 "sft.train.val_every_n_steps=2"]
    first = run_stage(compose_config(overrides, tmp_path / "one"))
    second = run_stage(compose_config(overrides, tmp_path / "two"))  # its own empty artifact folder
    assert first["key"] == second["key"]
    assert NUMBERS[stage](first) == NUMBERS[stage](second)
