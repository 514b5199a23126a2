"""experiments/table4/from_runs.py: a Table 4 sweep's evaluation becomes the presets table and paired differences."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def report():
    path = ROOT / "experiments" / "table4" / "from_runs.py"
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(policy: str, ctr: float, sft: float) -> dict:
    return {"policy": policy, "oracle_ctr": ctr, "ci_low": ctr - 0.01, "ci_high": ctr + 0.01, "lift": ctr / sft - 1,
            "diff_ci_low": ctr - sft - 0.005, "diff_ci_high": ctr - sft + 0.005, "gsb": 10.0, "format_rate": 1.0,
            "distinct_2": 0.4, "mean_cosine": 0.6, "canned_cosine": 0.5}


def test_a_sweeps_evaluation_becomes_the_presets_table_and_topic_paired_differences(report, tmp_path, monkeypatch):
    contexts = report.test_clusters({"split": "test", "contexts": 10_000, "examples": []})
    n = len(contexts)
    rng = np.random.default_rng(0)
    sft = rng.uniform(0.02, 0.1, n)
    per_context = {"sft": sft, "canned": sft / 2, "ideal": sft * 4}
    rows = [row("sft", sft.mean(), sft.mean()), row("canned", sft.mean() / 2, sft.mean()),
            row("ideal", sft.mean() * 4, sft.mean())]
    for preset, shift in (("full", 0.02), ("no_fusion", 0.005)):
        folder = tmp_path / "art" / "grpo" / preset
        folder.mkdir(parents=True)
        (folder / "grpo.json").write_text(json.dumps({
            "rewards": preset, "policy_samples": 192, "selected": {"step": 4}, "monitor": {"flagged": False},
            "weights": {"garm": 0.7, "rule": 0.3} if preset == "full" else {"garm": 0.5, "rule": 0.5}}))
        per_context[str(folder)] = sft + shift + rng.normal(0, 0.001, n)
        rows.append(row(str(folder), float(per_context[str(folder)].mean()), sft.mean()))
    ev = tmp_path / "eval"
    ev.mkdir()
    (ev / "evaluation.json").write_text(json.dumps({
        "split": "test", "contexts": n, "samples_per_context": 4, "rows": rows, "examples": [],
        "per_context_ctr": {k: list(map(float, v)) for k, v in per_context.items()}}))
    monkeypatch.setattr(report, "HERE", tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"runs": {}, "values": {}, "tables": {}}))

    report.main(str(ev), "abc1234", "presets")

    results = json.loads((tmp_path / "results.json").read_text())
    table = results["tables"]["presets"]
    assert [r[0] for r in table["rows"]] == ["SFT", "full", "no_fusion", "canned panel (floor)",
                                             "ideal panel (upper bound)"]
    full = table["rows"][1]
    assert full[2]["v"] == pytest.approx(rows[3]["oracle_ctr"] - sft.mean())  # an absolute difference, not relative
    assert full[7] == {"v": 0.7, "note": " garm, 0.300 rule"} and full[8] == 4 and full[9] == "no"
    paired = results["tables"]["presets_paired"]["rows"]
    assert [p[0] for p in paired] == ["`full` − `no_fusion`"]
    expected = float(np.mean(per_context[rows[3]["policy"]] - per_context[rows[4]["policy"]]))
    value = results["values"]["contextual_full_minus_no_fusion"]
    assert value["v"] == pytest.approx(expected) and value["ci"][0] < expected < value["ci"][1]
    assert value["ci"][0] > 0.01  # a steady +0.015 per context: the CI is narrow and above 0
