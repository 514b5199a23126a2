"""The one click-log loader, its problem scanner, and atomic writers (SPEC sections 3 and 10).

Every impression enters the package through `read_impressions`/`load_impressions`, which validate
each record with `clicks2pref.data.schema`. Every file we write goes through a temp file in the
same folder + fsync + `os.replace`, so a crash or a bad record never leaves a half-written
artifact that a later run would reuse.
"""

import glob as globlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock, abandoned temp files stay
    fcntl = None

import pyarrow as pa
import pyarrow.parquet as pq

from clicks2pref.config.data import ON_INVALID
from clicks2pref.data.schema import REQUIRED_FIELDS, validate_record
from clicks2pref.errors import ClickLogError

log = logging.getLogger(__name__)

JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
ACCEPTED = ".jsonl or .json (JSON Lines, one object per line) or .parquet"
MAX_REASONS = 10


@dataclass
class LoadReport:
    """What a load did. `n_read` counts every record found (kept + skipped)."""

    files: list[str] = field(default_factory=list)
    n_read: int = 0
    n_skipped: int = 0
    reasons: list[str] = field(default_factory=list)

    @property
    def n_kept(self) -> int:
        return self.n_read - self.n_skipped

    def summary(self) -> str:
        text = f"read {self.n_read} impressions from {len(self.files)} file(s), kept {self.n_kept}"
        if self.n_skipped:
            text += f", skipped {self.n_skipped} invalid (first: {'; '.join(self.reasons[:3])})"
        return text


# --- finding files -------------------------------------------------------------------------------


def expand_sources(source) -> list[Path]:
    """Turn a path, a glob, or a list of those into existing click-log files, in a stable order.

    Raises ClickLogError for a glob that matches nothing, a missing file, or an unknown suffix,
    because silently loading fewer files than asked for would bias every later number.
    """
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not items:
        raise ClickLogError(f"no click-log path given; pass {ACCEPTED} files or a glob")
    paths: list[Path] = []
    for item in items:
        text = os.fspath(item)
        if isinstance(item, str) and globlib.has_magic(text):
            found = [Path(m) for m in sorted(globlib.glob(text, recursive=True)) if not Path(m).is_dir()]
            if not found:
                raise ClickLogError(f"glob matches no files; pass {ACCEPTED} files or a glob that matches them", text)
        else:
            found = [Path(text)]
        for path in found:
            if path.is_dir():
                raise ClickLogError(f"is a folder; pass {ACCEPTED} files or a glob such as {path}/*.jsonl", str(path))
            if not path.exists():
                raise ClickLogError(f"file not found; pass existing {ACCEPTED} files", str(path))
            if path.suffix.lower() not in JSONL_SUFFIXES + PARQUET_SUFFIXES:
                raise ClickLogError(f"unknown suffix {path.suffix!r}; accepted: {ACCEPTED}", str(path))
            if path not in paths:
                paths.append(path)
    return paths


# --- reading -------------------------------------------------------------------------------------


def _parse_json_line(raw: bytes, path: str, line: int):
    """Parse one JSON Lines line into a dict, or return the ClickLogError saying why not."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        return ClickLogError(f"not valid UTF-8 ({e.reason} at byte {e.start})", path, line, "record")
    except json.JSONDecodeError as e:
        return ClickLogError(f"not valid JSON ({e.msg}; column {e.colno})", path, line, "record")
    if not isinstance(value, dict):
        kind = "null" if value is None else type(value).__name__
        return ClickLogError(f"must be a JSON object, got {kind}; write one object per line", path, line, "record")
    return value


def _jsonl_rows(path: Path) -> Iterator[tuple[int, object]]:
    """Yield (1-based line, dict or ClickLogError) for each non-blank line."""
    with open(path, "rb") as f:
        for line, raw in enumerate(f, start=1):
            if raw.strip():
                yield line, _parse_json_line(raw, str(path), line)


def _drop_nulls(value):
    """Parquet has no 'absent': a key missing from some rows reads back as null. Drop those."""
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _parquet_rows(path: Path) -> Iterator[tuple[int | None, object]]:
    """Yield (row number + 1, dict) per Parquet row; an unreadable file is one error with line None."""
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as e:  # pyarrow raises several types for corrupt or non-Parquet files
        yield None, ClickLogError(f"cannot read as Parquet ({e}); check the file or re-export it", str(path))
        return
    for i, row in enumerate(rows):
        # keep a null required field so the schema says "got null" rather than "missing"
        yield i + 1, {k: _drop_nulls(v) for k, v in row.items() if v is not None or k in REQUIRED_FIELDS}


def _scan_file(path: Path) -> Iterator[tuple[int | None, dict | None, list[ClickLogError]]]:
    """Yield (line, record, problems) per record in one file; line None means the whole file is unreadable."""
    rows = _parquet_rows(path) if path.suffix.lower() in PARQUET_SUFFIXES else _jsonl_rows(path)
    seen: dict[str, int] = {}
    for line, rec in rows:
        if isinstance(rec, ClickLogError):
            yield line, None, [rec]
            continue
        problems = [ClickLogError(msg, str(path), line, fld) for fld, msg in validate_record(rec)]
        iid = rec.get("impression_id")
        if isinstance(iid, str) and iid:
            if iid in seen:
                problems.append(ClickLogError(f"duplicate {iid!r}, first seen at line {seen[iid]}", str(path), line,
                                              "impression_id"))
            else:
                seen[iid] = line
        yield line, rec, problems


def read_impressions(source, on_invalid: str = "error") -> tuple[list[dict], LoadReport]:
    """Load and validate impressions from paths/globs; "error" raises on the first bad record,
    "skip" drops bad records but counts them and keeps the first reasons (never silently)."""
    if on_invalid not in ON_INVALID:
        raise ValueError(f"on_invalid must be one of {', '.join(map(repr, ON_INVALID))}, got {on_invalid!r}")
    paths = expand_sources(source)
    report = LoadReport(files=[str(p) for p in paths])
    records: list[dict] = []
    for path in paths:
        for line, rec, problems in _scan_file(path):
            if line is None or problems and on_invalid == "error":
                raise problems[0]  # an unreadable file is not a record that could be skipped
            report.n_read += 1
            if problems:
                report.n_skipped += 1
                report.reasons += [str(p) for p in problems][: MAX_REASONS - len(report.reasons)]
            else:
                records.append(rec)
    if not report.n_read:  # empty or blank files: nothing downstream can learn from them
        shown = source if isinstance(source, (str, os.PathLike)) else ", ".join(map(os.fspath, source))
        raise ClickLogError(f"read 0 impressions from {shown} ({len(paths)} file(s)); every file is empty or blank")
    return records, report


def load_impressions(source, on_invalid: str = "error") -> list[dict]:
    """read_impressions that logs one warning when records were skipped, for callers that only want records."""
    records, report = read_impressions(source, on_invalid)
    if report.n_skipped:
        log.warning("skipped %d of %d impressions as invalid; first reasons: %s",
                    report.n_skipped, report.n_read, "; ".join(report.reasons))
    return records


def iter_problems(source) -> Iterator[ClickLogError]:
    """Yield every problem in every file (does not stop at the first), for `validate`; a file with no
    impression at all (empty or blank) is a problem too."""
    for path in expand_sources(source):
        rows = 0
        for _, _, problems in _scan_file(path):
            rows += 1
            yield from problems
        if not rows:
            yield ClickLogError("no impressions", str(path))


def read_jsonl(path) -> list[dict]:
    """Read any JSON Lines file of objects (SFT data, pairs, ...); errors name file and line."""
    path = Path(path)
    if not path.is_file():
        raise ClickLogError("file not found; pass an existing .jsonl file", str(path))
    rows = []
    for _, row in _jsonl_rows(path):
        if isinstance(row, ClickLogError):
            raise row
        rows.append(row)
    return rows


# --- writing -------------------------------------------------------------------------------------


def _atomic_write(path, write: Callable, binary: bool) -> Path:
    """Run write(file) on a temp file next to `path`, fsync, then os.replace; clean up on failure.

    The temp file is locked (flock) until it has replaced `path`: a process killed mid-write (SIGKILL, no
    cleanup) leaves an unlocked `.<name>.<random>.tmp`, which the next write of the same path removes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_temps(path)
    fd, tmp = _locked_temp(path)
    try:
        with open(fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
            mode = path.stat().st_mode if path.exists() else 0o666 & ~_umask()
            os.chmod(tmp, mode & 0o7777)  # mkstemp makes 0600; give the file the usual permissions
            os.replace(tmp, path)  # still open, so still locked: never taken for a killed writer's
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _temp_pattern(path: Path) -> str:
    return f".{globlib.escape(path.name)}.*.tmp"


def _locked_temp(path: Path) -> tuple[int, str]:
    """A new temp file beside `path`, locked by this process (where flock exists)."""
    while True:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        if fcntl is None:
            return fd, tmp
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink:  # not removed as abandoned between its creation and the lock: ours
            return fd, tmp
        os.close(fd)


def _remove_abandoned_temps(path: Path) -> None:
    """Remove the temp files of `path` whose writer died: nobody holds their lock."""
    if fcntl is None:
        return
    for stale in path.parent.glob(_temp_pattern(path)):
        try:
            fd = os.open(stale, os.O_RDONLY)
        except OSError:  # renamed into place or removed meanwhile
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.stat(stale).st_ino == os.fstat(fd).st_ino:
                os.unlink(stale)
                log.info("removed %s, left by a writer that was killed", stale)
        except OSError:  # a live writer holds it, or it is gone
            pass
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_cached_json(path) -> dict | None:
    """A cache file's JSON; None when it is absent, or unreadable (then moved aside with a warning, so the
    caller recomputes it and a later run is not stuck on the same broken file)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        aside = path.with_name(f"{path.name}.corrupt-{os.getpid()}")
        os.replace(path, aside)
        log.warning("cache file %s is unreadable (%s); moved to %s, recomputing", path, e, aside.name)
        return None


def atomic_write_text(text: str, path) -> Path:
    """Write text to `path` atomically (UTF-8)."""
    return _atomic_write(path, lambda f: f.write(text), binary=False)


def write_jsonl(rows: Iterable[dict], path) -> Path:
    """Write rows as JSON Lines atomically; no schema check (for SFT data, pairs, reports)."""
    rows = list(rows)
    return _atomic_write(path, lambda f: f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                         binary=False)


def _parquet_table(records: list[dict], path: Path):
    """Build a table column by column: pyarrow's from_pylist keeps only the first row's keys."""
    keys = list(dict.fromkeys(k for r in records for k in r))
    try:
        return pa.table({k: pa.array([r.get(k) for r in records]) for k in keys})
    except (pa.ArrowException, TypeError, ValueError) as e:
        raise ClickLogError(f"cannot store as Parquet ({e}); give each extra field one type or write .jsonl",
                            str(path)) from e


def write_impressions(records: Iterable[dict], path) -> Path:
    """Validate every impression, then write JSONL or Parquet (by suffix) atomically.

    A bad record raises ClickLogError with line = its 1-based position in `records` (the line it
    would have had in the file) before anything is written.
    """
    path, records = Path(path), list(records)
    suffix = path.suffix.lower()
    if suffix not in JSONL_SUFFIXES + PARQUET_SUFFIXES:
        raise ClickLogError(f"unknown suffix {path.suffix!r}; accepted: {ACCEPTED}", str(path))
    seen: dict[str, int] = {}
    for line, rec in enumerate(records, start=1):
        problems = validate_record(rec)
        if problems:
            fld, msg = problems[0]
            raise ClickLogError(msg, str(path), line, fld)
        iid = rec["impression_id"]
        if iid in seen:
            raise ClickLogError(f"duplicate {iid!r}, first seen at line {seen[iid]}", str(path), line, "impression_id")
        seen[iid] = line
    if suffix in JSONL_SUFFIXES:
        return write_jsonl(records, path)
    table = _parquet_table(records, path)
    return _atomic_write(path, lambda f: pq.write_table(table, f), binary=True)
