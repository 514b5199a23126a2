"""The flywheel driver at smoke size: two rounds, the second trained on the first GRPO policy's logged week."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "flywheel" / "run.py"


def test_two_rounds_feed_the_first_policys_week_into_the_second(tmp_path):
    out = tmp_path / "fly"
    done = subprocess.run([sys.executable, str(SCRIPT), "--rounds", "2", "--out", str(out), "--eval-samples", "2",
                           "experiment=smoke",
                           "policy=smollm2", "grpo.max_completion_length=48",  # a real policy writes panels
                           f"paths.artifacts_dir={tmp_path / 'artifacts'}", f"paths.log_dir={tmp_path / 'logs'}"],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((out / "flywheel.json").read_text())
    assert [r["round"] for r in rows] == [1, 2] and [r["weeks"] for r in rows] == [4, 5]
    week5 = [json.loads(line) for line in (out / "round2" / "logs" / "week5.jsonl").read_text().splitlines()]
    assert week5 and {r["week"] for r in week5} == {5} and {r["policy"] for r in week5} == {"grpo"}
    assert "| 2 | 5 |" in (out / "flywheel.md").read_text()
    for r in rows:  # the powered comparison: its own SFT and GRPO CTRs, and a paired CI around their difference
        assert r["eval_ci_low"] <= r["eval_grpo_vs_sft"] <= r["eval_ci_high"]
        assert abs(r["eval_grpo_vs_sft"] - (r["eval_grpo_ctr"] - r["eval_sft_ctr"])) < 1e-9
        assert "eval_bo_gain" in r and "eval_reward_rho" in r  # the round's GaRM picking among SFT's samples
