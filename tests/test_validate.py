"""`python -m clicks2pref.validate`: exit codes, one stderr line per problem, and the summary numbers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from clicks2pref.data.io import write_impressions
from clicks2pref.validate import main, summarize

sys.path.insert(0, str(Path(__file__).parent))  # share the bad-record table with test_clicklog_io
from test_clicklog_io import BAD_LINES, BAD_RECORDS, log_with_bad_record, make_record, write_raw_jsonl

REPO = Path(__file__).resolve().parents[1]


def panel(i: int, clicks: list[int], policy: str = "prompt_v2", week: int = 1) -> dict:
    return make_record(i, policy=policy, week=week, suggestions=[f"s{k}" for k in range(len(clicks))], clicks=clicks)


# hand-made log: 5 impressions, panel sizes 3, 3, 1, 5, 2
HAND_LOG = [
    panel(1, [1, 0, 0]),
    panel(2, [0, 1, 1]),
    panel(3, [0], policy="sft"),
    panel(4, [0, 0, 0, 0, 1], week=2),
    panel(5, [1, 0], policy="sft", week=2),
]
# (position, impressions with >= k suggestions, clicks at k, ctr), computed by hand
HAND_CTR_BY_POSITION = [(1, 5, 2, 2 / 5), (2, 4, 1, 1 / 4), (3, 3, 1, 1 / 3), (4, 1, 0, 0 / 1), (5, 1, 1, 1 / 1)]


@pytest.mark.parametrize("bad,field,fragment", [b[1:] for b in BAD_RECORDS], ids=[b[0] for b in BAD_RECORDS])
def test_bad_record_is_one_stderr_line_and_exit_1(tmp_path, capsys, bad, field, fragment):
    path = tmp_path / "w1.jsonl"
    log_with_bad_record(path, bad)
    assert main([str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith(f"{path}:3: {field}: ") and fragment in line for line in err), err
    assert err[-1].startswith(f"{len(err) - 1} problem(s) in 1 of 1 file(s)")


@pytest.mark.parametrize("raw,fragment", [b[1:] for b in BAD_LINES], ids=[b[0] for b in BAD_LINES])
def test_bad_json_line_is_reported(tmp_path, capsys, raw, fragment):
    path = tmp_path / "w1.jsonl"
    write_raw_jsonl(path, [json.dumps(make_record(1)), json.dumps(make_record(2)), raw])
    assert main([str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{path}:3: record: ") and fragment in err[0]
    assert err[1] == "1 problem(s) in 1 of 1 file(s)"


def test_every_problem_in_every_file_is_listed(tmp_path, capsys):
    log_with_bad_record(tmp_path / "a.jsonl", make_record(3, week=0, clicks=[0]))
    write_raw_jsonl(tmp_path / "b.jsonl", [json.dumps(make_record(1)), "nope"])
    write_impressions([make_record(1)], tmp_path / "c.parquet")
    assert main([str(tmp_path / "*.jsonl"), str(tmp_path / "c.parquet")]) == 1
    err = capsys.readouterr().err.splitlines()
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert [line.split(": ")[0:2] for line in err[:-1]] == [[f"{a}:3", "week"], [f"{a}:3", "clicks"], [f"{b}:2", "record"]]
    assert err[-1] == "3 problem(s) in 2 of 3 file(s)"


def test_summary_ctr_by_position_matches_hand_computed_values(tmp_path, capsys):
    write_impressions(HAND_LOG[:3], tmp_path / "w1.jsonl")
    write_impressions(HAND_LOG[3:], tmp_path / "w2.parquet")
    assert main([str(tmp_path / "w1.jsonl"), str(tmp_path / "w2.parquet")]) == 0
    out = capsys.readouterr().out.splitlines()

    stats = summarize(HAND_LOG)
    assert [(p["position"], p["impressions"], p["clicks"], p["ctr"]) for p in stats["ctr_by_position"]] == HAND_CTR_BY_POSITION
    assert stats["ctr"] == pytest.approx(4 / 5)

    fields = {line[:20].strip(): line[20:].strip() for line in out[:6]}
    assert fields == {
        "files": "2",
        "impressions": "5",
        "policies": "2 (prompt_v2: 3, sft: 2)",
        "weeks": "2 (1: 3, 2: 2)",
        "suggestions/panel": "1: 1, 2: 1, 3: 2, 5: 1",
        "CTR (any click)": "0.800",
    }
    header = out.index("CTR by position") + 1
    end = out.index("", header)
    assert out[header].split() == ["position", "impressions", "clicks", "ctr"]
    table = [line.split() for line in out[header + 1:end]]
    assert [(int(p), int(n), int(c), r) for p, n, c, r in table] == [(p, n, c, f"{r:.3f}") for p, n, c, r in HAND_CTR_BY_POSITION]
    assert [r for *_, r in table] == ["0.400", "0.250", "0.333", "0.000", "1.000"]
    assert len({len(line) for line in out[header:end]}) == 1  # columns are aligned
    assert stats["no_click_share"] == pytest.approx(1 / 5) and stats["conversations"] == 5


def test_no_arguments_is_usage_and_exit_2(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage:") and err.count("\n") == 1


@pytest.mark.parametrize("name", ["missing.jsonl", "*.parquet", "log.csv"])
def test_missing_path_is_one_line_and_exit_2(tmp_path, capsys, name):
    (tmp_path / "log.csv").write_text("x")
    assert main([str(tmp_path / name)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / name) in err


def run_module(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "clicks2pref.validate", *args], capture_output=True, text=True, env=env, cwd=REPO)


def test_module_entry_point_on_good_and_bad_files(tmp_path):
    good = write_impressions(HAND_LOG, tmp_path / "good.jsonl")
    bad = tmp_path / "bad.jsonl"
    log_with_bad_record(bad, make_record(3, clicks=[0, 1]))

    ok = run_module(str(good))
    assert ok.returncode == 0, ok.stderr
    assert "impressions         5" in ok.stdout and ok.stderr == ""

    fail = run_module(str(bad))
    assert fail.returncode == 1 and fail.stdout == ""
    assert fail.stderr.splitlines() == [f"{bad}:3: clicks: length 2 does not match 3 suggestions", "1 problem(s) in 1 of 1 file(s)"]

    assert run_module().returncode == 2


def conversation(i: int) -> list[dict]:
    return [{"role": "user", "content": f"how do I repot a cactus {i}"}, {"role": "assistant", "content": "Gently."}]


def repeated_log(shuffle: bool) -> list[dict]:
    """Two weeks, four conversations, each panel shown four times: in one order, or rotated per impression."""
    texts = ["Which soil?", "How often to water?", "Does it need sun?"]
    records = []
    for i in range(16):
        shift = i % 3 if shuffle else 0
        records.append(make_record(i, week=1 + i // 8, context=conversation(i % 4 + 4 * (i // 8)),
                                   suggestions=texts[shift:] + texts[:shift], clicks=[0, 0, int(i % 2 == 0)]))
    for r in records:
        r.pop("topic")
    return records


def test_support_warns_when_positions_were_never_randomised(tmp_path, capsys):
    write_impressions(repeated_log(shuffle=False), tmp_path / "logs.jsonl")
    assert main([str(tmp_path / "logs.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "position order      fixed" in out
    assert "warning: positions were never randomised" in out and "shuffled per impression" in out
    assert "simulator           none" in out  # no topic of the packaged world
    assert "by time: weeks [1] train" in out  # week 2 brings new conversations
    assert "warning: template: no templates.json" in out and "sft.template=NAME" in out


def test_support_sees_randomised_order_and_one_week_splits_by_conversation(tmp_path, capsys):
    records = [dict(r, week=1) for r in repeated_log(shuffle=True)]
    write_impressions(records, tmp_path / "logs.jsonl")
    (tmp_path / "templates.json").write_text("{}")
    assert main([str(tmp_path / "logs.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "position order      randomised" in out and "never randomised" not in out
    assert "by conversation" in out and "warning: one week (1)" in out
    assert "template" not in out.split("What these logs support")[1]
    assert summarize(records)["order"] == {"repeated": 24, "moved": 24, "randomised": True}
