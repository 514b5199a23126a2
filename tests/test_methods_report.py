"""experiments/methods/from_runs.py: the methods table, the verdict and the figure from a sweep's grpo.json files."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def report():
    return load(ROOT / "experiments" / "methods" / "from_runs.py")


def job(optimizer: str, samples: int, lift: float, backward: int, sft: float = 0.1) -> dict:
    """A grpo.json as stage=grpo writes it (the fields the report reads)."""
    compute = {"generated_tokens": samples * 10, "sampling_tokens": 100, "forward_tokens": 2 * backward,
               "backward_tokens": backward, "reward_tokens": 50, "seconds": 1.5}
    compute["token_passes"] = 100 + 2 * backward + 1.035 * backward + 50  # sampling, forwards, LoRA backward, rewards
    return {"optimizer": optimizer, "policy_samples": samples, "compute": compute, "selected": {"step": 3},
            "eval": {"contexts": 12, "sft": {"oracle_ctr": sft},
                     "grpo": {"oracle_ctr": sft + lift, "ci_low": sft + lift - 0.01, "ci_high": sft + lift + 0.01},
                     "lift": {"ctr_diff": lift, "ci_low": lift - 0.01, "ci_high": lift + 0.01}}}


def write(root: Path, jobs: list[dict]) -> None:
    for i, j in enumerate(jobs):
        folder = root / "grpo" / f"job{i}"
        folder.mkdir(parents=True)
        (folder / "grpo.json").write_text(json.dumps(j))


def test_token_passes_are_the_meters_and_an_old_meter_is_refused(report):
    assert report.token_passes({"sampling_tokens": 10, "forward_tokens": 20, "backward_tokens": 5,
                                "reward_tokens": 7, "token_passes": 42.5}) == 42.5
    with pytest.raises(SystemExit, match="run the sweep again"):
        report.token_passes({"sampling_tokens": 10, "forward_tokens": 20, "backward_tokens": 5, "reward_tokens": 7})


def test_the_verdict_names_the_cheapest_method_reaching_grpos_largest_budget(report):
    rows = [report.summarise(j) for j in (job("grpo", 800, 0.01, 100), job("grpo", 3200, 0.03, 400),
                                          job("rft", 800, 0.035, 120), job("online_dpo", 800, 0.03, 90),
                                          job("dpo_clicks", 800, 0.02, 10))]
    # compute: 100 sampling + 2·b forward + 2·b backward + 50 reward; online_dpo 510, GRPO@3200 1,750
    assert report.verdict(rows) == ("online DPO (own samples, best vs worst)@800 reaches GRPO@3,200's lift "
                                    "(+0.0300 against +0.0300) at 31% of its compute")
    assert report.verdict(rows[:2] + rows[4:]) == "none reaches GRPO@3,200's lift (+0.0300)"


def test_the_sweep_becomes_a_table_a_verdict_and_a_figure(report, tmp_path, monkeypatch):
    other_preset = dict(job("grpo", 800, 0.09, 100), rewards="no_ppl")  # a Table 4 job sharing the folder
    default_budget = job("grpo", 192, 0.09, 10)  # the default run's GRPO: not a budget of the sweep
    write(tmp_path / "art", [job("grpo", 800, 0.01, 100), job("rft", 800, 0.02, 50), job("grpo", 3200, 0.015, 400),
                             other_preset, default_budget])
    monkeypatch.setattr(report, "HERE", tmp_path)
    results = report.main(str(tmp_path / "art"), "abc1234")
    table = results["tables"]["methods"]
    assert [row[:2] for row in table["rows"]] == [["GRPO", 800], ["GRPO", 3200],
                                                  ["rejection-sampling fine-tuning", 800]]
    assert "rejection-sampling fine-tuning@800 reaches GRPO@3,200's lift" in results["tables"]["verdict"]["rows"][0][1]
    assert (tmp_path / "methods.png").stat().st_size > 0
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        tables = load(ROOT / "experiments" / "tables.py")
    finally:
        sys.path.pop(0)
    text = tables.render_table(table, results["values"], results["runs"])
    assert "| GRPO | 3,200 | 0.1150 [0.1050, 0.1250] | +0.0150 [+0.0050, +0.0250] |" in text


def test_no_sweep_is_one_clear_error(report, tmp_path):
    with pytest.raises(SystemExit, match="no grpo/.*run the sweep first"):
        report.main(str(tmp_path), "abc1234")
