"""The chaos test (`tests/chaos.py`, `make chaos` with 10 kills) at a few kills: the smoke pipeline killed with
SIGKILL at random moments and in the middle of its writes, rerun with the same command after each kill, ends with
the uninterrupted run's numbers, every artifact verified, no lock held and no temporary folder left."""
from __future__ import annotations

import pytest

from tests import chaos


def test_the_files_a_kill_waits_for_are_the_files_each_stage_writes_last():
    from clicks2pref.stages.artifacts import SPECS

    assert chaos.MARKERS == {name: spec.marker for name, spec in SPECS.items() if spec.marker}


def test_a_temp_file_left_by_a_killed_write_goes_with_the_next_write_of_its_path(tmp_path):
    """What a SIGKILL mid-write leaves in `artifacts/eval/` (an atomic write's temp file, no cleanup ran) is
    removed by the next write of the same file; a temp file whose writer is alive (it holds its lock) stays."""
    fcntl = pytest.importorskip("fcntl")
    from clicks2pref.data.io import atomic_write_text

    path = tmp_path / "eval" / "0123abcd.json"
    atomic_write_text("{}", path)
    abandoned, live = path.with_name(f".{path.name}.k1ll3d.tmp"), path.with_name(f".{path.name}.al1ve.tmp")
    abandoned.write_text('{"half')
    live.write_text('{"half')
    with open(live) as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        atomic_write_text('{"a": 1}', path)
        assert sorted(p.name for p in path.parent.iterdir()) == [live.name, path.name]
    atomic_write_text('{"a": 2}', path)
    assert [p.name for p in path.parent.iterdir()] == [path.name] and path.read_text() == '{"a": 2}'


@pytest.mark.slow
def test_a_pipeline_killed_three_times_ends_as_an_uninterrupted_one(smoke_collect, tmp_path, capsys):
    """On the smoke click logs (collect is `make chaos`'s to kill): two kills at writes, one at a random moment."""
    _, collected = smoke_collect
    status = chaos.main(["--kills", "3", "--workdir", str(tmp_path), "--logs", collected["logs"]])
    out = capsys.readouterr().out
    print(out)
    assert status == 0, out
    assert "chaos test passed: 3 kills" in out
