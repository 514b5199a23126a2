"""The click-log schema, the one loader and the atomic writers (SPEC sections 3 and 10)."""

import copy
import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clicks2pref.data.io import (
    LoadReport,
    atomic_write_text,
    iter_problems,
    load_impressions,
    read_impressions,
    read_jsonl,
    write_impressions,
    write_jsonl,
)
from clicks2pref.data.schema import MAX_SUGGESTIONS, REQUIRED_FIELDS, validate_record
from clicks2pref.errors import ClickLogError


def make_record(i: int, **changes) -> dict:
    rec = {
        "impression_id": f"w1-{i:06d}",
        "week": 1,
        "policy": "prompt_v2",
        "context": [{"role": "user", "content": f"plan a trip {i}"}, {"role": "assistant", "content": "Sure."}],
        "suggestions": ["Best time to visit?", "Rail pass worth it?", "Where to stay?"],
        "clicks": [0, 1, 0],
        "topic": "japan_travel",
    }
    rec.update(changes)
    return rec


def without(field: str) -> dict:
    rec = make_record(3)
    del rec[field]
    return rec


# (id, bad record placed at line 3, expected field, fragment of the message)
BAD_RECORDS = [
    *[(f"missing-{f}", without(f), f, "missing required field") for f in REQUIRED_FIELDS],
    ("id-empty", make_record(3, impression_id=""), "impression_id", "non-empty string"),
    ("id-not-str", make_record(3, impression_id=123), "impression_id", "must be a string, got int"),
    ("week-zero", make_record(3, week=0), "week", "must be >= 1, got 0"),
    ("week-bool", make_record(3, week=True), "week", "got bool"),
    ("week-float", make_record(3, week=1.0), "week", "got float"),
    ("week-str", make_record(3, week="1"), "week", "got str"),
    ("policy-empty", make_record(3, policy=""), "policy", "non-empty string"),
    ("policy-null", make_record(3, policy=None), "policy", "got null"),
    ("context-not-list", make_record(3, context="hello"), "context", "must be a list of turns"),
    ("context-empty", make_record(3, context=[]), "context", "at least one turn"),
    ("context-turn-not-object", make_record(3, context=["hi", {"role": "assistant", "content": "ok"}]), "context", "turn 0 must be an object"),
    ("context-bad-role", make_record(3, context=[{"role": "bot", "content": "x"}, {"role": "assistant", "content": "ok"}]), "context", "turn 0 role 'bot'"),
    ("context-empty-content", make_record(3, context=[{"role": "user", "content": ""}, {"role": "assistant", "content": "ok"}]), "context", "turn 0 content must be a non-empty string"),
    ("context-content-not-str", make_record(3, context=[{"role": "user", "content": 5}, {"role": "assistant", "content": "ok"}]), "context", "turn 0 content"),
    ("context-last-not-assistant", make_record(3, context=[{"role": "user", "content": "hi"}]), "context", "last turn must be an assistant turn"),
    ("suggestions-not-list", make_record(3, suggestions="a", clicks=[0]), "suggestions", "must be a list"),
    ("suggestions-empty", make_record(3, suggestions=[], clicks=[]), "suggestions", "1 to 5 suggestions, got 0"),
    ("suggestions-too-many", make_record(3, suggestions=list("abcdef"), clicks=[0] * 6), "suggestions", "1 to 5 suggestions, got 6"),
    ("suggestions-empty-str", make_record(3, suggestions=["a", " "], clicks=[0, 0]), "suggestions", "suggestion 1 must be a non-empty string"),
    ("suggestions-not-str", make_record(3, suggestions=["a", 7], clicks=[0, 0]), "suggestions", "suggestion 1 must be a non-empty string, got int"),
    ("clicks-not-list", make_record(3, clicks=1), "clicks", "must be a list"),
    ("clicks-length", make_record(3, clicks=[0, 1]), "clicks", "length 2 does not match 3 suggestions"),
    ("clicks-value-2", make_record(3, clicks=[0, 2, 0]), "clicks", "position 1 must be 0 or 1, got int 2"),
    ("clicks-bool", make_record(3, clicks=[0, True, 0]), "clicks", "got bool"),
    ("clicks-float", make_record(3, clicks=[0, 1.0, 0]), "clicks", "got float"),
    ("duplicate-id", make_record(1), "impression_id", "duplicate 'w1-000001', first seen at line 1"),
]

# raw JSON Lines text placed at line 3
BAD_LINES = [
    ("not-json", '{"impression_id": "w1-3", oops}', "not valid JSON"),
    ("json-list", "[1, 2, 3]", "must be a JSON object, got list"),
    ("json-number", "42", "must be a JSON object, got int"),
]


def write_raw_jsonl(path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def log_with_bad_record(path, bad: dict) -> None:
    """Good records at lines 1, 2 and 4; the bad one at line 3."""
    write_raw_jsonl(path, [json.dumps(r) for r in (make_record(1), make_record(2), bad, make_record(4))])


def parquet_with_bad_record(path, bad: dict) -> None:
    """Same layout in Parquet, written with pyarrow directly (our writer refuses bad records)."""
    rows = [make_record(1), make_record(2), bad, make_record(4)]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    pq.write_table(pa.table({k: pa.array([r.get(k) for r in rows]) for k in keys}), path)


# --- the rules -----------------------------------------------------------------------------------


def test_valid_record_has_no_problems():
    assert validate_record(make_record(1)) == []
    assert MAX_SUGGESTIONS == 5


def test_each_rule_reports_its_own_problem():
    rec = make_record(1, week=0, clicks=[0, 1])
    assert validate_record(rec) == [("week", "must be >= 1, got 0"), ("clicks", "length 2 does not match 3 suggestions")]


def test_extra_fields_are_optional_and_kept(tmp_path):
    bare = {k: v for k, v in make_record(1).items() if k in REQUIRED_FIELDS}
    rich = make_record(2, segment={"country": "JP", "new_user": True}, topic="food")
    path = tmp_path / "log.jsonl"
    write_raw_jsonl(path, [json.dumps(bare), json.dumps(rich)])
    assert load_impressions(path) == [bare, rich]


@pytest.mark.parametrize("bad,field,fragment", [b[1:] for b in BAD_RECORDS], ids=[b[0] for b in BAD_RECORDS])
def test_loader_rejects_bad_record_with_line_and_field(tmp_path, bad, field, fragment):
    path = tmp_path / "w1.jsonl"
    log_with_bad_record(path, bad)
    with pytest.raises(ClickLogError) as info:
        read_impressions(path)
    err = info.value
    assert (err.path, err.line, err.field) == (str(path), 3, field)
    assert fragment in err.reason
    assert str(err).startswith(f"{path}:3: {field}: ")


@pytest.mark.parametrize("raw,fragment", [b[1:] for b in BAD_LINES], ids=[b[0] for b in BAD_LINES])
def test_loader_rejects_bad_json_line(tmp_path, raw, fragment):
    path = tmp_path / "w1.jsonl"
    write_raw_jsonl(path, [json.dumps(make_record(1)), json.dumps(make_record(2)), raw, json.dumps(make_record(4))])
    with pytest.raises(ClickLogError) as info:
        read_impressions(path)
    assert (info.value.path, info.value.line, info.value.field) == (str(path), 3, "record")
    assert fragment in str(info.value)


# cases whose bad value still fits the column types, so pyarrow can store them
PARQUET_CASES = [b for b in BAD_RECORDS if b[0] in ("week-zero", "policy-null", "context-last-not-assistant", "clicks-length", "duplicate-id")]


@pytest.mark.parametrize("bad,field,fragment", [b[1:] for b in PARQUET_CASES], ids=[b[0] for b in PARQUET_CASES])
def test_parquet_reports_row_number_plus_one(tmp_path, bad, field, fragment):
    path = tmp_path / "w1.parquet"
    parquet_with_bad_record(path, bad)
    with pytest.raises(ClickLogError) as info:
        read_impressions(path)
    assert (info.value.path, info.value.line, info.value.field) == (str(path), 3, field)
    assert fragment in info.value.reason


def test_blank_lines_are_ignored_but_line_numbers_stay_physical(tmp_path):
    path = tmp_path / "w1.jsonl"
    write_raw_jsonl(path, [json.dumps(make_record(1)), "", json.dumps(make_record(3, week=0))])
    with pytest.raises(ClickLogError) as info:
        read_impressions(path)
    assert info.value.line == 3


def test_unreadable_parquet_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(ClickLogError, match="cannot read as Parquet") as info:
        read_impressions(path, on_invalid="skip")
    assert info.value.path == str(path)


# --- skip mode -----------------------------------------------------------------------------------


def test_skip_returns_good_records_and_counts_bad(tmp_path, caplog):
    path = tmp_path / "w1.jsonl"
    good = [make_record(1), make_record(2), make_record(5)]
    write_raw_jsonl(path, [
        json.dumps(good[0]), json.dumps(good[1]), "{broken",
        json.dumps(make_record(4, clicks=[0, 1])), json.dumps(good[2]), json.dumps(make_record(1)),
    ])
    records, report = read_impressions(path, on_invalid="skip")
    assert records == good
    assert isinstance(report, LoadReport)
    assert (report.files, report.n_read, report.n_skipped, report.n_kept) == ([str(path)], 6, 3, 3)
    assert report.reasons[0].startswith(f"{path}:3: record: not valid JSON")
    assert report.reasons[1] == f"{path}:4: clicks: length 2 does not match 3 suggestions"
    assert report.reasons[2].startswith(f"{path}:6: impression_id: duplicate")
    assert "skipped 3 invalid" in report.summary() and "kept 3" in report.summary()

    with caplog.at_level(logging.WARNING, logger="clicks2pref.data.io"):
        assert load_impressions(path, on_invalid="skip") == good
    [warning] = caplog.records
    assert "skipped 3 of 6" in warning.getMessage() and f"{path}:4: clicks" in warning.getMessage()


def test_skip_keeps_only_the_first_ten_reasons(tmp_path):
    path = tmp_path / "w1.jsonl"
    write_raw_jsonl(path, [json.dumps(make_record(i, week=0)) for i in range(15)])
    records, report = read_impressions(path, on_invalid="skip")
    assert records == [] and report.n_skipped == 15 and len(report.reasons) == 10


def test_load_without_skips_does_not_warn(tmp_path, caplog):
    path = tmp_path / "w1.jsonl"
    write_impressions([make_record(1)], path)
    with caplog.at_level(logging.WARNING):
        load_impressions(path)
    assert caplog.records == []


def test_unknown_on_invalid_value_is_a_value_error(tmp_path):
    path = tmp_path / "w1.jsonl"
    write_impressions([make_record(1)], path)
    with pytest.raises(ValueError, match="'error', 'skip'"):
        read_impressions(path, on_invalid="drop")


# --- sources -------------------------------------------------------------------------------------


def test_glob_loads_across_two_files(tmp_path):
    write_impressions([make_record(1), make_record(2)], tmp_path / "w1.jsonl")
    write_impressions([make_record(1, week=2), make_record(3, week=2)], tmp_path / "w2.parquet")
    (tmp_path / "notes.txt").write_text("not a log")
    records, report = read_impressions(str(tmp_path / "w*"))
    assert report.files == [str(tmp_path / "w1.jsonl"), str(tmp_path / "w2.parquet")]
    assert [(r["week"], r["impression_id"]) for r in records] == [(1, "w1-000001"), (1, "w1-000002"), (2, "w1-000001"), (2, "w1-000003")]
    # a list mixing a Path and a glob string works too, and a file is loaded once
    records2, _ = read_impressions([tmp_path / "w1.jsonl", str(tmp_path / "*.parquet"), str(tmp_path / "w1.jsonl")])
    assert records2 == records


@pytest.mark.parametrize("name,fragment", [
    ("*.jsonl", "glob matches no files"),
    ("missing.jsonl", "file not found"),
    ("log.csv", "unknown suffix '.csv'"),
])
def test_bad_sources_name_the_path_and_what_is_accepted(tmp_path, name, fragment):
    (tmp_path / "log.csv").write_text("a,b\n")
    with pytest.raises(ClickLogError) as info:
        read_impressions(str(tmp_path / name))
    assert fragment in str(info.value) and str(tmp_path / name) in str(info.value)
    assert ".jsonl" in str(info.value) and ".parquet" in str(info.value)


def test_iter_problems_reports_every_problem_in_every_file(tmp_path):
    log_with_bad_record(tmp_path / "a.jsonl", make_record(3, week=0, clicks=[0]))
    write_raw_jsonl(tmp_path / "b.jsonl", ["nope", json.dumps(make_record(2))])
    problems = [(p.path, p.line, p.field) for p in iter_problems(str(tmp_path / "*.jsonl"))]
    a, b = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    assert problems == [(a, 3, "week"), (a, 3, "clicks"), (b, 1, "record")]


# --- writing -------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_round_trip(tmp_path, suffix):
    records = [
        make_record(1),
        make_record(2, week=3, topic="café ☕", clicks=[1, 1, 0]),
        make_record(3, suggestions=["only one"], clicks=[1], context=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi", "name": "u1"},
            {"role": "assistant", "content": "hello"},
        ]),
        {k: v for k, v in make_record(4).items() if k != "topic"} | {"segment": "new_user", "score": 7},
    ]
    original = copy.deepcopy(records)
    path = write_impressions(records, tmp_path / "sub" / f"log{suffix}")
    loaded = load_impressions(path)
    assert loaded == original
    assert all(type(r["week"]) is int and all(type(c) is int for c in r["clicks"]) for r in loaded)
    assert type(loaded[3]["score"]) is int


def test_failed_validation_writes_nothing(tmp_path):
    records = [make_record(1), make_record(2), make_record(3, clicks=[0, 1])]
    for name in ("log.jsonl", "log.parquet"):
        with pytest.raises(ClickLogError) as info:
            write_impressions(records, tmp_path / "out" / name)
        assert (info.value.line, info.value.field) == (3, "clicks")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_failed_write_does_not_clobber_existing_file(tmp_path):
    path = tmp_path / "log.jsonl"
    write_impressions([make_record(1)], path)
    before = path.read_bytes()
    with pytest.raises(ClickLogError, match="duplicate"):
        write_impressions([make_record(7), make_record(7)], path)
    assert path.read_bytes() == before
    with pytest.raises(TypeError):  # not JSON-serialisable: fails mid-write, after the temp file exists
        write_jsonl([{"a": 1}, {"b": object()}], path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.jsonl"]


def test_parquet_with_mixed_extra_field_types_is_a_clear_error(tmp_path):
    with pytest.raises(ClickLogError, match="write .jsonl"):
        write_impressions([make_record(1, segment=1), make_record(2, segment="a")], tmp_path / "log.parquet")
    assert list(tmp_path.iterdir()) == []


def test_write_impressions_rejects_unknown_suffix(tmp_path):
    with pytest.raises(ClickLogError, match="unknown suffix"):
        write_impressions([make_record(1)], tmp_path / "log.csv")


def test_generic_jsonl_and_text_helpers(tmp_path):
    rows = [{"context": [{"role": "user", "content": "x"}], "target": "1. a\n2. b\n3. c", "source": "click"}, {"n": 2}]
    path = write_jsonl(rows, tmp_path / "a" / "b" / "sft.jsonl")
    assert read_jsonl(path) == rows
    write_raw_jsonl(path, ['{"ok": 1}', '{"bad"'])
    with pytest.raises(ClickLogError) as info:
        read_jsonl(path)
    assert (info.value.path, info.value.line) == (str(path), 2)
    with pytest.raises(ClickLogError, match="file not found"):
        read_jsonl(tmp_path / "nope.jsonl")

    text_path = atomic_write_text("hello\n", tmp_path / "c" / "note.txt")
    assert text_path.read_text() == "hello\n"
    atomic_write_text("replaced", text_path)
    assert text_path.read_text() == "replaced"
    assert [p.name for p in text_path.parent.iterdir()] == ["note.txt"]
