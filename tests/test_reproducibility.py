"""Same commit, config and seed, same machine: the same numbers, exactly (a smoke run, twice, from scratch)."""
from __future__ import annotations

import pytest

from tests.conftest import compose_config

NUMBERS = {"sft": lambda r: (r["train"]["train_loss"], r["train"]["val_loss"],
                            {k: v for k, v in r["eval"].items() if k != "seconds"}),
           "rm": lambda r: r["metrics"]}


@pytest.mark.parametrize("stage, extra", [("sft", ["policy=smollm2"]), ("rm", [])], ids=["sft-smollm2-lora", "rm"])
def test_a_stage_run_twice_from_scratch_gives_identical_metrics(smoke_collect, tmp_path, stage, extra):
    """The second run follows the first in this process (another history of random draws), as a stage does
    when its upstream stages ran just before it rather than coming from the cache."""
    from clicks2pref.__main__ import run_stage

    _, collected = smoke_collect
    overrides = ["experiment=smoke", f"stage={stage}", f"data.logs={collected['logs']}", "logger=[]",
                 "sft.train.val_every_n_steps=2", "policy.generation.max_new_tokens=24", *extra]
    first = run_stage(compose_config(overrides, tmp_path / "one"))
    second = run_stage(compose_config(overrides, tmp_path / "two"))  # its own empty artifact folder
    assert first["key"] == second["key"]
    assert NUMBERS[stage](first) == NUMBERS[stage](second)
