"""An artifact's key follows the code its stage runs, code loaded by name included, and nothing else: each test
edits a file in a temporary copy of the package and compares the keys before and after."""
from __future__ import annotations

import shutil

import pytest

from tests.conftest import compose_config

STAGES = ("sft", "rm", "fusion", "grpo", "evaluate")


@pytest.fixture
def keys(tmp_path, monkeypatch):
    """keys(edited_files, overrides) -> {stage: key}, the named files of a copy of the package edited."""
    from clicks2pref import fingerprint
    from clicks2pref.stages import artifacts

    copy = tmp_path / "copy" / "clicks2pref"
    shutil.copytree(fingerprint.PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "conf"))
    monkeypatch.setattr(artifacts, "_files_digest", lambda source: "logs")
    monkeypatch.setattr(artifacts, "uses_simulator", lambda cfg: True)  # x.jsonl stands for the simulator's own logs
    monkeypatch.setattr(fingerprint, "PACKAGE", copy)

    def compute(edited: tuple[str, ...] = (), overrides: tuple[str, ...] = ()) -> dict:
        cfg = compose_config(["experiment=smoke", "stage=pipeline", "data.logs=x.jsonl", *overrides],
                             tmp_path / "run")
        originals = {f: (copy / f).read_bytes() for f in edited}
        for f in edited:
            (copy / f).write_bytes(originals[f] + b"\n# edited\n")
        fingerprint.fingerprint.cache_clear()
        try:
            return {s: artifacts.key(cfg, s) for s in STAGES}
        finally:
            for f, data in originals.items():
                (copy / f).write_bytes(data)
            fingerprint.fingerprint.cache_clear()

    return compute


def changed(before: dict, after: dict) -> set[str]:
    return {s for s in before if before[s] != after[s]}


def test_editing_garm_changes_the_stages_that_score_with_it(keys):
    """GaRM is built from its `_target_` string, imported by no stage: the key follows it all the same."""
    assert changed(keys(), keys(("rewards/garm.py",))) == {"fusion", "grpo", "evaluate"}


def test_every_enabled_reward_component_is_in_the_grpo_key(keys):
    before = keys()
    for component in ("external", "rule", "ppl", "diversity"):
        assert "grpo" in changed(before, keys((f"rewards/{component}.py",))), component
    assert not changed(before, keys(("rewards/btrm.py",)))  # off in the full preset
    btrm = ("rewards=btrm_instead_of_garm",)
    assert "grpo" in changed(keys(overrides=btrm), keys(("rewards/btrm.py",), btrm))


def test_the_pairwise_objective_is_in_the_rm_key_only_when_it_trains(keys):
    """`reward_model.objective` names a module loaded by importlib."""
    pairwise = ("reward_model.objective=pairwise",)
    assert "rm" in changed(keys(overrides=pairwise), keys(("objectives/pairwise.py",), pairwise))
    assert "rm" not in changed(keys(), keys(("objectives/pairwise.py",)))
    assert "rm" in changed(keys(), keys(("objectives/click_model.py",)))


def test_report_code_is_in_no_key(keys):
    before = keys()
    for report in ("eval/training.py", "eval/calibration_report.py", "eval/results_report.py", "report.py",
                   "loggers.py", "console.py"):
        assert not changed(before, keys((report,))), report


def test_editing_collect_or_the_teacher_keeps_every_later_stage(keys):
    assert not changed(keys(), keys(("stages/collect.py", "stages/teacher.py")))


def test_editing_the_garm_loss_changes_the_reward_models_key(keys):
    assert "rm" in changed(keys(), keys(("objectives/gaussian.py",)))


def test_a_stage_fingerprints_no_other_stage(tmp_path):
    from clicks2pref.stages import artifacts

    cfg = compose_config(["experiment=smoke", "stage=pipeline"], tmp_path)
    for stage in artifacts.SPECS:
        others = {f"clicks2pref/stages/{s}.py" for s in artifacts.SPECS if s != stage}
        assert not set(artifacts.code_modules(stage, cfg)) & others, stage


def test_a_grpo_training_seed_reuses_every_upstream_artifact(keys):
    """`grpo.seed` seeds training only: a seed sweep retrains GRPO (and evaluates it) on the same SFT policy,
    reward models and fusion weights, where the global `seed` would rebuild them all."""
    before = keys()
    # (the keys here are computed without upstream inputs; a run's evaluate key folds in grpo's)
    assert changed(before, keys(overrides=("grpo.seed=2",))) == {"grpo"}
    assert changed(before, keys(overrides=("seed=2",))) == set(STAGES)
