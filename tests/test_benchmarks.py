"""The benchmark scripts in experiments/benchmarks at smoke size: a tiny random Llama, a few tokens, one warm-up
and two timed steps. Each script must run every side (TRL's included) in its own process and print one JSON
line per side with a positive rate, then a line of ratios. The timings at this size mean nothing."""
from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks"
SMOKE = ["--model", "tiny-llama", "--warmup", "1", "--reps", "2"]
TIMEOUT_S = 600


def run_script(name: str, *args: str) -> list[dict]:
    done = subprocess.run([sys.executable, str(BENCH / name), *args, "--json"], capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def check_sides(lines: list[dict], sides: list[str]) -> dict:
    """Every side's line is well formed with a positive rate; returns the last (ratios) line."""
    *per_side, last = lines
    assert [line["side"] for line in per_side] == sides
    for line in per_side:
        assert line["rate"] > 0 and line["unit"] and line["peak_rss_mb"] > 0, line
        assert line["reps"] == 2 and len(line["seconds"]) == 2 and all(s > 0 for s in line["seconds"]), line
        assert line["median_seconds"] > 0 and isinstance(line["settings"], dict), line
    assert all(v > 0 and math.isfinite(v) for v in last["ratio"].values()), last
    return last


def test_grpo_step_against_trl():
    lines = run_script("grpo_step.py", *SMOKE, "--max-completion-length", "4", "--pool", "8")
    last = check_sides(lines, ["ours", "trl"])
    assert set(last["ratio"]) == {"ours/trl"}
    for line in lines[:2]:  # both sides sampled the same, full-length completions
        assert line["settings"]["mean_completion_len"] == 4 and line["work"] == [8, 8], line


def test_grpo_step_against_an_earlier_tree_with_reward_models_and_iterations():
    """`--base-tree` runs our side on another checkout's code (here this one) and ours, alternating; the reward
    models load and score, and μ = 2 runs."""
    root = str(BENCH.parents[1])
    lines = run_script("grpo_step.py", *SMOKE, "--max-completion-length", "4", "--pool", "8", "--reward-models",
                       "--num-iterations", "2", "--base-tree", root, "--pairs", "1")
    *sides, last = lines
    assert [line["side"] for line in sides] == ["base", "ours"]
    for line in sides:
        assert line["settings"]["reward_models"] and line["settings"]["num_iterations"] == 2, line
        assert line["settings"]["code"].startswith(root) and len(line["seconds"]) == 2, line
    assert last["ratio"]["ours/base"] > 0 and set(last["median_seconds"]) == {"base", "ours"}


def test_reward_training_against_trl_and_garm():
    lines = run_script("reward_training.py", *SMOKE, "--panels", "8", "--users-per-panel", "6",
                       "--trl-micro-batch", "4")
    last = check_sides(lines, ["ours_btrm", "trl", "ours_garm", "ours_btrm_full"])
    assert set(last["ratio"]) == {"ours_btrm/trl", "ours_garm/ours_btrm", "ours_btrm/ours_btrm_full"}
    assert lines[0]["settings"]["shared_prefix"] and not lines[3]["settings"]["shared_prefix"]
    trl = lines[1]
    assert trl["settings"]["trl_micro_batch"] == 4 and trl["settings"]["trl_accumulation_steps"] > 1
    assert trl["settings"]["trl_pairs_per_step"] == 4 * trl["settings"]["trl_accumulation_steps"]
    assert trl["settings"]["pairs_within_max_length"] == trl["settings"]["pairs"]  # TRL dropped no long pair


def test_rollout_paths_and_compute_limit():
    lines = run_script("rollout.py", *SMOKE, "--batches", "4", "--group", "2", "--max-new-tokens", "3",
                       "--matmul-size", "128")
    last = check_sides(lines, ["ours@4", "grpo@4", "plain@4", "roofline"])
    assert set(last["ratio"]) == {"ours@4/plain@4", "grpo@4/plain@4"}
    assert all(line["settings"]["group"] == 2 for line in lines[:3])
    assert last["limit_tok_s"] > 0 and last["params"] > 0
    assert set(last["share_of_limit"]) == {"ours@4", "grpo@4", "plain@4"}
    assert all(v > 0 for v in last["share_of_limit"].values())


def test_scaling_sweeps_group_size():
    lines = run_script("scaling.py", *SMOKE, "--groups", "2", "4", "--lengths", "2", "--group-size", "2",
                       "--max-completion-length", "2", "--pool", "8")
    last = check_sides(lines, ["G2_L2", "G4_L2"])
    fit = last["group_size"]
    assert fit["points"] == 2 and math.isfinite(fit["exponent"]) and math.isfinite(fit["slope_seconds"]), fit
    assert fit["growth"] in ("linear", "sub-linear", "super-linear")
    assert last["completion_length"] == {"at_group_size": 2, "points": 1}  # one length: nothing to fit


@pytest.fixture
def bench(monkeypatch):
    """Import a benchmark script as a module (the scripts import their neighbours by file name)."""
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module


def test_scaling_fit_reads_growth(bench):
    fit = bench("scaling").fit
    xs = [2.0, 4.0, 8.0, 16.0]
    line = fit(xs, [0.5 * x for x in xs], 0.15)
    assert line["growth"] == "linear" and line["slope_seconds"] == pytest.approx(0.5)
    assert line["exponent"] == pytest.approx(1.0) and line["r2"] == pytest.approx(1.0)
    assert fit(xs, [10.0 + 0.1 * x for x in xs], 0.15)["growth"] == "sub-linear"  # a fixed cost dominates
    assert fit(xs, [x * x for x in xs], 0.15)["growth"] == "super-linear"


def test_pipeline_reads_stage_seconds(bench, tmp_path):
    artifacts, logs = tmp_path / "artifacts", tmp_path / "logs"
    (artifacts / "collect" / "k1").mkdir(parents=True)
    (artifacts / "collect" / "k1" / "templates.json").write_text(json.dumps({"seconds": 3.5, "key": "k1"}))
    (artifacts / "collect" / ".work-k1").mkdir()  # a work folder is no result
    (artifacts / "rm" / "k2").mkdir(parents=True)
    (artifacts / "rm" / "k2" / "rm.json").write_text(json.dumps({"seconds": 10.0, "train_seconds": {"garm": 4.0}}))
    (artifacts / "grpo" / "k3.tmp").mkdir(parents=True)  # unfinished: no marker
    run = logs / "evaluate" / "runs" / "r1"
    run.mkdir(parents=True)
    (run / "evaluation.json").write_text(json.dumps({"seconds": 2.0, "rows": []}))
    rows = bench("pipeline").stage_seconds(artifacts, logs, "noise\nstage times: collect 4s, rm 11s\n")
    got = [(r["stage"], r["seconds"], r["source"].split("/")[-1]) for r in rows]
    assert got == [("collect", 3.5, "templates.json"), ("rm", 10.0, "rm.json"), ("evaluate", 2.0, "evaluation.json"),
                   ("collect", 4.0, "stage=pipeline output"), ("rm", 11.0, "stage=pipeline output")]
    assert rows[1]["train_seconds"] == {"garm": 4.0}


@pytest.mark.slow
def test_pipeline_times_a_smoke_collect_from_an_empty_cache(tmp_path):
    lines = run_script("pipeline.py", "--workdir", str(tmp_path), "experiment=smoke", "stage=collect")
    *stages, total = lines
    assert total["returncode"] == 0 and total["total_seconds"] > 0 and total["peak_rss_mb"] > 0
    assert [s["stage"] for s in stages] == ["collect"] and stages[0]["seconds"] > 0
    assert total["stages_seconds_sum"] <= total["total_seconds"]
