"""`stage=X` alone in an empty artifact folder runs (or reuses) every stage X reads, at smoke size."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import compose_config

# what each stage reads, and so must find built in the artifact folder afterwards
BUILT = {"sft": {"collect", "sft"}, "rm": {"collect", "rm"}, "grpo": {"collect", "sft", "rm", "fusion", "grpo"},
         "evaluate": {"collect", "sft", "rm", "fusion", "grpo"}}


# each starts with its own smoke collect (SmolLM2): evaluate, which builds every stage before it, runs by default
@pytest.mark.parametrize("stage", [pytest.param("sft", marks=pytest.mark.slow), pytest.param("rm", marks=pytest.mark.slow),
                                   pytest.param("grpo", marks=pytest.mark.slow), "evaluate"])
def test_stage_runs_from_an_empty_artifact_folder(tmp_path, stage):
    from clicks2pref.__main__ import run_stage

    cfg = compose_config(["experiment=smoke", f"stage={stage}", "logger=[]"], tmp_path)
    assert not Path(cfg.paths.artifacts_dir).exists()
    result = run_stage(cfg)
    built = {p.parent.name for p in Path(cfg.paths.artifacts_dir).glob("*/*") if not p.name.startswith(".")}
    assert BUILT[stage] <= built
    if stage == "evaluate":
        assert {r["policy"] for r in result["rows"]} == {"baseline", "sft", "grpo", "sft+bo4", "canned", "ideal"}
        assert (tmp_path / "results.md").exists()
    else:
        assert result["key"] and (Path(cfg.paths.artifacts_dir) / stage / result["key"]).is_dir()
    if stage in ("sft", "rm"):  # the job's own stage writes the run folder's metrics.json
        assert json.loads((tmp_path / "metrics.json").read_text())
