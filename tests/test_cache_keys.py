"""An artifact's key follows the code its stage runs: an edit elsewhere keeps a cached result."""
from __future__ import annotations

import pytest

from tests.conftest import compose_config

DOWNSTREAM = ("rm", "fusion", "grpo")


@pytest.fixture
def keys(tmp_path, monkeypatch):
    """keys(edited_file_names) -> {stage: key} with a comment appended to each named file of the package."""
    from clicks2pref.stages import artifacts

    cfg = compose_config(["experiment=smoke", "stage=pipeline", "data.logs=x.jsonl"], tmp_path)
    monkeypatch.setattr(artifacts, "_files_digest", lambda source: "logs")
    monkeypatch.setattr(artifacts, "uses_simulator", lambda cfg: True)  # x.jsonl stands for the simulator's own logs
    real = type(artifacts._PACKAGE).read_bytes

    def compute(edited: tuple[str, ...] = ()) -> dict:
        def read(path):
            data = real(path)
            rel = path.relative_to(artifacts._PACKAGE).as_posix() if path.is_relative_to(artifacts._PACKAGE) else ""
            return data + b"\n# edited" if rel in edited else data

        artifacts.code_fingerprint.cache_clear()
        with monkeypatch.context() as m:
            m.setattr(type(artifacts._PACKAGE), "read_bytes", read)
            try:
                return {s: artifacts.key(cfg, s) for s in DOWNSTREAM}
            finally:
                artifacts.code_fingerprint.cache_clear()

    return compute


def test_editing_collect_or_the_teacher_keeps_the_reward_models_fusion_and_grpo(keys):
    before = keys()
    assert keys(("stages/collect.py", "stages/teacher.py")) == before


def test_editing_the_garm_loss_changes_the_reward_models_key(keys):
    before = keys()
    after = keys(("objectives/gaussian.py",))
    assert after["rm"] != before["rm"]


def test_a_stage_fingerprints_no_other_stage():
    from clicks2pref.stages import artifacts

    for stage in artifacts.SPECS:
        others = {f"clicks2pref/stages/{s}.py" for s in artifacts.SPECS if s != stage}
        assert not set(artifacts.code_modules(stage)) & others, stage
