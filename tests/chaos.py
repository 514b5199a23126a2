"""Chaos test of the artifact cache: kill the smoke pipeline with SIGKILL at random moments and in the middle of
its writes, rerun the same command after each kill, and check that the kills cost nothing.

    python tests/chaos.py --kills 10        # `make chaos`; the slow test in tests/test_chaos.py runs fewer

1. The smoke pipeline (`python -m clicks2pref experiment=smoke stage=pipeline`, collect included unless `--logs`
   names click logs) runs once uninterrupted in `<workdir>/uninterrupted`, watched: when each stage starts, which
   writes were seen.
2. The kill points are planned on that run's timeline (seeded): some kills at a write of each kind, the first
   one seen of that kind at or after a chosen stage (`WRITES`: click logs, a Lightning checkpoint, a manifest,
   model weights exported into an artifact), the rest at moments drawn uniformly over the run's duration, each
   replayed as the same point of progress: so many seconds (at the killed runs' pace) after the same step printed
   the same line of output, and before it prints the next.
3. In `<workdir>/chaos` the same command starts in its own process group, is killed at each point in turn (the
   whole group, SIGKILL) and started again; after the last kill it runs to the end.
4. Checked: the final `evaluation.json` holds the same numbers as the uninterrupted run's (every section but
   timings: rows, best_of, per_context_ctr, ...; floats to float32 rounding, as in tests/test_reproducibility.py);
   every artifact under `artifacts/<stage>/` verifies against its manifest and none was moved aside as corrupt;
   every `*.lock` can be taken at once (the files may stay: filelock does not delete them); no temporary folder or
   file (`.<key>.tmp-*`, `.work-<key>`, an atomic write's `.<name>.*.tmp`) is left in `artifacts/`; every
   evaluation cache file parses and every reward-model score cache passes SQLite's integrity check; both runs
   built the same artifact keys, and every weights and data file in them (`*.safetensors`, `*.jsonl`, ...) and
   every stage's result file (`sft.json`, ...: what later stages and the
   reports read) holds the same values. Also printed, not checked: what the kills left in the runs' TMPDIR
   (Lightning's half-written checkpoints).

Exit status 0 when every kill landed and every check holds. Only the standard library, `filelock`,
`clicks2pref.manifest` and (for the weights) `safetensors.numpy` are imported here: torch runs in one process at
a time, the pipeline's.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from filelock import FileLock, Timeout  # noqa: E402

from clicks2pref.manifest import MANIFEST, verify  # noqa: E402

COMMAND = ["-m", "clicks2pref", "experiment=smoke", "stage=pipeline", "logger=csv"]
STAGE_LINE = re.compile(r"\] - pipeline: (\w+)\s*$")  # `stages.pipeline` logs each step as it starts
# the file each stage writes last into its temporary folder, right before the manifest (stages.artifacts.SPECS;
# tests/test_chaos.py checks that the two agree)
MARKERS = {"collect": "templates.json", "teacher": "teacher.json", "sft": "sft.json", "serve": "serve.json",
           "rm": "rm.json", "fusion": "fusion_weights.json", "grpo": "grpo.json", "evaluate": "evaluation.json"}
WRITES = ("logs", "checkpoint", "manifest", "export")
WEIGHTS = (".safetensors", ".bin")
POLL = 0.002  # seconds between looks at the folders while a write is awaited (a week of logs takes a few ms)
TIMINGS = {"seconds", "train_seconds", "eval_seconds"}  # keys whose values are wall-clock times
# Same numbers, as tests/test_reproducibility.py counts them: floats to float32 rounding, since on some CPUs the
# BLAS kernels round differently with the memory alignment of their inputs, so two uninterrupted runs differ in
# the seventh digit. Weights trained on CPU gather that rounding over the steps (seen: 8e-7). Another history of
# random draws moves numbers in their first digits.
ROUNDING = 1e-6
WEIGHT_ROUNDING = 1e-5
# a stage's result file holds numbers fitted on the reward models' outputs (fusion's weights), where that rounding
# grows to ~1e-5 relative; a lost loss, an evaluation counted twice or other prompts differ in kind
RESULT_ROUNDING = 1e-4
PROVENANCE = {"resumed_from"}  # a result's record of how it was built, which a kill may change


# --- one run of the command -------------------------------------------------------------------------------------


class Attempt:
    """The pipeline command in its own process group (so a kill takes its workers too), its output in
    `<run_dir>.out`, the start of each pipeline step time-stamped (seconds since the process started)."""

    def __init__(self, root: Path, number: int, command: list[str]):
        self.stale = frozenset(os.listdir(tmp_dir(root))) if tmp_dir(root).is_dir() else frozenset()
        self.run_dir = root / "runs" / f"{number:02d}"
        self.run_dir.parent.mkdir(parents=True, exist_ok=True)
        self.output = self.run_dir.with_suffix(".out")
        env = {**os.environ, "TMPDIR": str(tmp_dir(root)), "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}
        tmp_dir(root).mkdir(exist_ok=True)
        cmd = [*command, f"paths.root_dir={root}", f"hydra.run.dir={self.run_dir}"]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True, preexec_fn=die_with_parent)
        self.stages: list[tuple[float, str]] = []
        self.lines: list[tuple[float, str, int]] = []  # each output line: (seconds, step, its index in the step)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        with open(self.output, "w", buffering=1) as out:  # line-buffered: readable while it runs
            for line in self.proc.stdout:
                out.write(line)
                if m := STAGE_LINE.search(line):
                    self.stages.append((self.elapsed(), m.group(1)))
                stage = self.stage()
                index = self.lines[-1][2] + 1 if self.lines and self.lines[-1][1] == stage else 0
                self.lines.append((self.elapsed(), stage, index))

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def stage(self) -> str:
        return self.stages[-1][1] if self.stages else "startup"

    def stage_started(self, name: str) -> Optional[float]:
        """When `name` started in this run (seconds since the process started); 0 for `startup`."""
        if name == "startup":
            return 0.0
        return next((t for t, s in self.stages if s == name), None)

    def line_at(self, stage: str, index: int) -> Optional[float]:
        """When the step printed its line `index` (0: the line that starts it)."""
        return next((t for t, s, i in self.lines if s == stage and i == index), None)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.reader.join()

    def finish(self, timeout: float) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = None
        self.reader.join()
        return rc

    def tail(self, lines: int = 25) -> str:
        return "".join(self.output.read_text().splitlines(keepends=True)[-lines:])


def die_with_parent() -> None:
    """In the child (Linux): SIGKILL when this script ends, by Ctrl-C or a kill, rather than train on alone."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def tmp_dir(root: Path) -> Path:
    """The runs' TMPDIR: Lightning writes a checkpoint into a temporary file there, then moves it into place."""
    return root / "tmp"


# --- writes in progress ------------------------------------------------------------------------------------------


def temp_folders(artifacts: Path):
    """(stage, temporary folder) of every artifact being written (`stages.artifacts.atomic_dir`)."""
    for stage in MARKERS:
        folder = artifacts / stage
        if folder.is_dir():
            for entry in os.scandir(folder):
                if ".tmp-" in entry.name and entry.name.startswith("."):
                    yield stage, Path(entry.path)


def writes_now(root: Path, stale: frozenset = frozenset()) -> dict[str, str]:
    """kind -> what is being written at this moment, for each of `WRITES` seen in progress (`stale`: names in the
    TMPDIR that an earlier, killed run left)."""
    artifacts, found = root / "artifacts", {}
    for stage, folder in temp_folders(artifacts):
        try:
            names = [p for p in folder.rglob("*") if p.is_file()]
        except FileNotFoundError:  # renamed into place while we looked
            continue
        rel = lambda p: p.relative_to(artifacts)  # noqa: E731
        marker = folder / MARKERS[stage]
        if marker.exists() or (folder / MANIFEST).exists():
            found.setdefault("manifest", f"{rel(folder)}: its manifest (the result file is written, the folder "
                                         "not yet renamed)")
            continue
        for p in names:  # an atomic write (clicks2pref.data.io) in progress: `.<name>.<random>.tmp`
            if p.name.startswith(".week") and p.name.endswith(".tmp"):
                found.setdefault("logs", f"{rel(p)} (click logs, {size(p)} bytes so far)")
            elif p.suffix in WEIGHTS:
                found.setdefault("export", f"{rel(p)} (weights, {size(p)} bytes so far)")
    tmp = tmp_dir(root)
    if tmp.is_dir():
        for entry in os.scandir(tmp):
            if entry.is_file() and entry.name.startswith("tmp") and entry.name not in stale:  # fsspec's checkpoint
                found.setdefault("checkpoint", f"TMPDIR/{entry.name} (a checkpoint on its way to "
                                               f"{work_checkpoints(artifacts) or '.work-<key>/ckpt'}, "
                                               f"{size(Path(entry.path))} bytes so far)")
    return found


def work_checkpoints(artifacts: Path) -> str:
    return ", ".join(str(p.relative_to(artifacts)) for p in artifacts.glob("*/.work-*/**/ckpt"))


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def after_kill(description: str, root: Path) -> str:
    """What the kill left of the write: a weights or checkpoint file complete or cut short."""
    m = re.match(r"(\S+)", description)
    path = m and (root / "artifacts" / m.group(1) if not m.group(1).startswith("TMPDIR/")
                  else tmp_dir(root) / m.group(1).split("/", 1)[1])
    if not path or not path.is_file():
        return description
    n = path.stat().st_size
    if path.suffix == ".safetensors":
        held = sorted(p.name for p in path.parent.iterdir())
        state = ("complete" if safetensors_complete(path) else "cut short") + f"; its folder held {', '.join(held)}"
    elif path.parent == tmp_dir(root):
        state = "a readable zip" if zip_readable(path) else "cut short"
    else:
        return re.sub(r"\d+ bytes so far", f"{n} bytes when killed", description)
    return re.sub(r"\d+ bytes so far", f"{n} bytes when killed, {state}", description)


def safetensors_complete(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        return path.stat().st_size == 8 + n + end
    except (OSError, ValueError, KeyError, TypeError):
        return False


def zip_readable(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except (zipfile.BadZipFile, OSError, EOFError):
        return False


# --- the uninterrupted run and the kill plan ---------------------------------------------------------------------


@dataclass
class Timeline:
    seconds: float
    stages: list  # [seconds since start, stage] of each pipeline step
    writes: list  # [seconds since start, kind, stage, description] of each write seen
    command: list = field(default_factory=list)  # what ran, less the folders
    lines: list = field(default_factory=list)  # [seconds since start, stage, index in the stage] of each output line

    def stage_at(self, t: float) -> tuple[str, float]:
        """The step running `t` seconds into the run, and when it started."""
        current = ("startup", 0.0)
        for start, name in self.stages:
            if start <= t:
                current = (name, start)
        return current


def uninterrupted(root: Path, command: list[str], timeout: float) -> Timeline:
    """Run the pipeline to the end, noting when each step starts and which writes the watcher sees."""
    run = Attempt(root, 0, command)
    writes, seen = [], set()
    while run.proc.poll() is None:
        for kind, what in writes_now(root).items():
            if (kind, what.split(" ")[0]) not in seen:
                seen.add((kind, what.split(" ")[0]))
                writes.append([round(run.elapsed(), 3), kind, run.stage(), what])
        if run.elapsed() > timeout:
            run.kill()
            raise SystemExit(f"the uninterrupted run took over {timeout:.0f}s; see {run.output}")
        time.sleep(POLL)
    rc = run.finish(60)
    if rc != 0:
        raise SystemExit(f"the uninterrupted run failed (exit {rc}); see {run.output}:\n{run.tail()}")
    timeline = Timeline(round(run.elapsed(), 1), [[round(t, 3), s] for t, s in run.stages], writes, command[1:],
                        [[round(t, 3), s, i] for t, s, i in run.lines])
    (root / "timeline.json").write_text(json.dumps(asdict(timeline), indent=1))
    return timeline


@dataclass
class Kill:
    at: float  # seconds into the uninterrupted run this kill stands for
    stage: str  # the step running then ('startup' before the first)
    offset: float  # seconds after that step started (a random moment)
    write: Optional[str] = None  # else: kill when a write of this kind is seen, at or after `stage`
    # a random moment as progress: `delay` seconds after the step printed its line `line`, `gap` before its next one
    line: int = 0
    delay: float = 0.0
    gap: float = 0.0
    # what happened
    landed: Optional[float] = None  # seconds into its run
    landed_stage: str = ""
    what: str = ""

    def planned(self) -> str:
        return f"during a write of {self.write} ({self.stage})" if self.write else \
            f"{self.stage} +{self.offset:.1f}s"


def plan(timeline: Timeline, kills: int, rng: random.Random) -> list[Kill]:
    """`kills` points on the uninterrupted run's timeline: one write of each kind (up to 4, leaving at least one
    random moment), the rest uniform over its duration."""
    kinds = [k for k in WRITES if any(w[1] == k for w in timeline.writes)]
    for k in set(WRITES) - set(kinds):
        print(f"warning: no write of {k} was seen in the uninterrupted run; a random moment stands in for it")
    n_writes = min(len(kinds), kills - 1) if kills > 1 else 0
    points = []
    for kind in rng.sample(kinds, n_writes):
        at, _, stage, _ = rng.choice([w for w in timeline.writes if w[1] == kind])
        points.append(Kill(at, stage, 0.0, kind))
    for _ in range(kills - n_writes):
        at = rng.uniform(0, timeline.seconds)
        stage, start = timeline.stage_at(at)
        lines = [(t, i) for t, s, i in timeline.lines if s == stage] or [(start, 0)]
        t_line, line = max((x for x in lines if x[0] <= at), default=lines[0])
        after = [t for t, _ in lines if t > at] + [t for t, _ in timeline.stages if t > at] + [timeline.seconds]
        points.append(Kill(round(at, 1), stage, round(at - start, 1), line=line, delay=round(at - t_line, 2),
                           gap=round(min(after) - t_line, 2)))
    # in step order, and within a step the kills at a write first: a random moment replayed on a faster run may
    # fall after the step has finished, and then a write of that step (collect's logs) would never come again
    steps = ["startup", *(s for _, s in timeline.stages)]
    return sorted(points, key=lambda k: (steps.index(k.stage), k.write is None, k.at))


# --- the chaos run -----------------------------------------------------------------------------------------------


def reached(run: Attempt, stage: str, order: list[str]) -> bool:
    """Has `run` started `stage` (or a later step)?"""
    if stage == "startup" or run.stage_started(stage) is not None:
        return True
    return run.stage() in order and stage in order and order.index(run.stage()) > order.index(stage)


class Pace:
    """How long the killed runs take for a stretch of work that took the uninterrupted run one second (the load
    on a shared machine changes, and torch slows down many times over when its threads outnumber the cores)."""

    def __init__(self):
        self.ratios: list[float] = []

    def observe(self, run: Attempt, point: Kill, timeline: Timeline) -> None:
        """The stretch from the step's start to the line the kill waits for, in both runs."""
        ours, theirs = run.line_at(point.stage, point.line), timeline_line(timeline, point.stage, point.line)
        start, their_start = run.stage_started(point.stage), timeline_line(timeline, point.stage, 0)
        if None not in (ours, theirs, start, their_start) and theirs - their_start > 1.0:
            self.ratios.append((ours - start) / (theirs - their_start))

    def factor(self) -> float:
        return sorted(self.ratios)[len(self.ratios) // 2] if self.ratios else 1.0


def timeline_line(timeline: Timeline, stage: str, index: int) -> Optional[float]:
    return next((t for t, s, i in timeline.lines if s == stage and i == index), None)


def due(run: Attempt, point: Kill, order: list[str], pace: Pace) -> bool:
    """Has a run reached a random moment? The same point of progress as in the uninterrupted run: `delay` (at the
    killed runs' pace) after the step's line `line`, and never past its next line or the step's end."""
    later = order.index(run.stage()) > order.index(point.stage) if run.stage() in order else False
    if later or run.line_at(point.stage, point.line + 1) is not None:
        return True
    printed = run.line_at(point.stage, point.line)
    return printed is not None and run.elapsed() - printed >= min(point.delay, point.gap) * pace.factor()


def chaos(root: Path, points: list[Kill], timeline: Timeline, command: list[str], timeout: float
          ) -> tuple[bool, str]:
    """Kill a run at each point and start it again; then let the last run end. (ok, the final run folder)."""
    order = ["startup", *(s for _, s in timeline.stages)]
    number, pace = 1, Pace()
    for point in points:
        run = Attempt(root, number, command)
        number += 1
        while True:
            rc = run.proc.poll()
            if rc is not None:
                run.finish(60)
                if rc == 0:
                    point.what = "not reached: the run ended first"
                    print(f"kill at {point.planned()}: the run ended first")
                    return True, str(run.run_dir)
                print(f"a rerun after a kill failed (exit {rc}); {run.output}:\n{run.tail()}")
                return False, str(run.run_dir)
            if run.elapsed() > timeout:
                run.kill()
                print(f"a rerun after a kill hung for {timeout:.0f}s; {run.output}:\n{run.tail()}")
                return False, str(run.run_dir)
            if point.write and reached(run, point.stage, order):
                if what := writes_now(root, run.stale).get(point.write):
                    break
            elif not point.write and due(run, point, order, pace):
                what = ", ".join(writes_now(root, run.stale).values()) or "no write in progress"
                break
            time.sleep(POLL if point.write else 0.02)
        point.landed, point.landed_stage = round(run.elapsed(), 2), run.stage()
        run.kill()
        if not point.write:
            pace.observe(run, point, timeline)
        point.what = after_kill(what, root)
        print(f"killed run {run.run_dir.name} at {point.landed:.1f}s ({point.landed_stage}), planned "
              f"{point.planned()}: {point.what}", flush=True)
    run = Attempt(root, number, command)
    rc = run.finish(timeout)
    if rc != 0:
        print(f"the final run failed (exit {rc}); {run.output}:\n{run.tail()}")
        return False, str(run.run_dir)
    return True, str(run.run_dir)


# --- the checks --------------------------------------------------------------------------------------------------


def without_timings(value):
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def same(a, b, rounding: float = 0.0) -> bool:
    """Equal in structure and every non-float leaf; floats equal (NaN to NaN), or within `rounding` relative or
    absolute."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= rounding * max(1.0, abs(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], rounding) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y, rounding) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def verdict(a, b) -> Optional[str]:
    """'identical', 'equal to float32 rounding' or None (they differ)."""
    return "identical" if same(a, b) else "equal to float32 rounding" if same(a, b, ROUNDING) else None


@dataclass
class Check:
    name: str
    ok: bool
    detail: list = field(default_factory=list)


def compare_evaluations(reference: Path, chaotic: Path) -> list[Check]:
    a, b = (without_timings(json.loads((p / "evaluation.json").read_text())) for p in (reference, chaotic))
    checks = []
    for section in ("rows", "best_of", "per_context_ctr"):
        found = verdict(a.get(section), b.get(section)) if section in a else None
        checks.append(Check(f"evaluation.json {section}: {found or 'DIFFERENT'}", found is not None))
    rest = sorted((set(a) | set(b)) - {"rows", "best_of", "per_context_ctr"})
    found = {s: verdict(a.get(s), b.get(s)) for s in rest}
    checks.append(Check(f"evaluation.json's other sections ({', '.join(rest)}; timings left out): "
                        + ("identical" if all(v == "identical" for v in found.values()) else "not all identical"),
                        all(found.values()), [f"{s}: {v or 'DIFFERENT'}" for s, v in found.items()
                                              if v != "identical"]))
    rows_b = {r["policy"]: r for r in b.get("rows", [])}
    table = ["policy     oracle_ctr (uninterrupted)  oracle_ctr (killed)  the row"]
    for r in a.get("rows", []):
        other = rows_b.get(r["policy"], {})
        table.append(f"{r['policy']:<10} {r['oracle_ctr']:<27.6f} {other.get('oracle_ctr', float('nan')):<20.6f} "
                     f"{verdict(r, other) or 'DIFFERENT'}")
    checks[0].detail = table
    return checks


def artifact_checks(artifacts: Path) -> list[Check]:
    problems, corrupt, checked = [], [], 0
    for stage in sorted(artifacts / name for name in MARKERS if (artifacts / name).is_dir()):
        for entry in sorted(stage.iterdir()):
            if not entry.is_dir() or entry.name.startswith("."):
                continue
            if ".corrupt-" in entry.name or ".old-" in entry.name:
                corrupt.append(f"{entry.relative_to(artifacts)}: moved aside by a rerun")
                continue
            checked += 1
            if (problem := verify(entry)) is not None:
                problems.append(f"{entry.relative_to(artifacts)}: {problem}")
    locks, held = sorted(artifacts.rglob("*.lock")), []
    for path in locks:
        lock = FileLock(path)
        try:
            lock.acquire(timeout=0)
            lock.release()
        except Timeout:
            held.append(str(path.relative_to(artifacts)))
    temporary = sorted(str(p.relative_to(artifacts)) for p in artifacts.rglob(".*")
                       if ".tmp-" in p.name or p.name.startswith(".work-") or p.name.endswith(".tmp"))
    caches, unreadable = sorted((artifacts / "eval").glob("*.json")), []
    for path in caches:
        try:
            json.loads(path.read_text())
        except (OSError, ValueError) as e:
            unreadable.append(f"{path.name}: {e}")
    unreadable += [f"{p.name}: moved aside as unreadable" for p in (artifacts / "eval").glob("*.corrupt-*")]
    scores = sorted((artifacts / "scores").rglob("*.sqlite"))
    for path in scores:  # the reward models' score caches: SQLite commits are atomic, so a kill loses a batch at most
        unreadable += [f"{path.relative_to(artifacts)}: {problem}" for problem in sqlite_problems(path)]
    return [Check(f"every artifact verifies against its manifest ({checked} artifacts)", not problems, problems),
            Check("no artifact moved aside as corrupt", not corrupt, corrupt),
            Check(f"no lock held ({len(locks)} lock files, each taken at once)", not held, held),
            Check("no temporary folder or file left in artifacts/", not temporary, temporary),
            Check(f"every evaluation cache file parses and every score cache passes SQLite's integrity check "
                  f"({len(caches)} + {len(scores)} files)", not unreadable, unreadable)]


def sqlite_problems(path: Path) -> list[str]:
    import sqlite3

    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            found = [row[0] for row in db.execute("PRAGMA integrity_check")]
    except sqlite3.Error as e:
        return [str(e)]
    return [] if found == ["ok"] else found


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def artifact_differences(reference: Path, chaotic: Path) -> list[Check]:
    """The same artifact keys in both runs, and in each the same weights (to float32 rounding accumulated over
    training) and the same data files (JSON Lines record by record, numbers to float32 rounding; other formats
    byte for byte). Reports and result files hold timings, so they are left out."""
    keys = lambda root: {str(p.relative_to(root)) for name in MARKERS for p in root.glob(f"{name}/*")  # noqa: E731
                         if p.is_dir() and not p.name.startswith(".") and "." not in p.name}
    a, b = keys(reference), keys(chaotic)
    missing = [f"only in the uninterrupted run: {k}" for k in sorted(a - b)] + \
        [f"only in the killed run: {k}" for k in sorted(b - a)]
    differ, counts = [], {"identical": 0, "equal to float32 rounding": 0}
    for key in sorted(a & b):
        for p in sorted((reference / key).rglob("*")):
            if p.is_file() and p.suffix in (*WEIGHTS, ".jsonl", ".parquet"):
                q = chaotic / key / p.relative_to(reference / key)
                found = compare_file(p, q) if q.is_file() else None
                if found:
                    counts[found] += 1
                else:
                    differ.append(f"DIFFERENT: {key}/{p.relative_to(reference / key)}")
    return [Check(f"the same artifact keys as the uninterrupted run ({len(a)})", not missing, missing),
            Check("weights and data files the same as the uninterrupted run's: "
                  + ", ".join(f"{n} {k}" for k, n in counts.items()) + (f", {len(differ)} different" if differ else ""),
                  not differ, differ)]


def result_differences(reference: Path, chaotic: Path) -> Check:
    """Each artifact's result file (what its stage returns and later stages and reports read) against the
    uninterrupted run's: timings, provenance and the artifacts folder left out."""
    found = []
    for stage, marker in MARKERS.items():
        for p in sorted((reference / stage).glob(f"*/{marker}")):
            q = chaotic / p.relative_to(reference)
            if q.is_file():
                a, b = (normalized(json.loads(f.read_text()), root) for f, root in ((p, reference), (q, chaotic)))
                found += [f"{p.relative_to(reference)}: {d}" for d in differences(a, b, RESULT_ROUNDING)[:4]]
    return Check(f"every artifact's result file holds the uninterrupted run's values (floats to {RESULT_ROUNDING:g}; "
                 "timings, provenance and paths left out)", not found, found)


def normalized(value, root: Path):
    if isinstance(value, dict):
        return {k: normalized(v, root) for k, v in value.items() if k not in TIMINGS | PROVENANCE}
    if isinstance(value, list):
        return [normalized(v, root) for v in value]
    return value.replace(str(root), "<artifacts>") if isinstance(value, str) else value


def differences(a, b, rounding: float, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b), key=str)
                for d in differences(a.get(k), b.get(k), rounding, f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, rounding, f"{path}[{i}]")]
    if same(a, b, rounding):
        return []
    show = lambda v: (json.dumps(v) if not isinstance(v, float) else repr(v))[:60]  # noqa: E731
    return [f"{path.lstrip('.') or '(all)'}: {show(a)} uninterrupted, {show(b)} killed"]


def compare_file(p: Path, q: Path) -> Optional[str]:
    if digest(p) == digest(q):
        return "identical"
    if p.suffix == ".jsonl":
        rows = lambda path: [json.loads(line) for line in path.read_text().splitlines() if line.strip()]  # noqa: E731
        return "equal to float32 rounding" if same(rows(p), rows(q), RESULT_ROUNDING) else None
    if p.suffix == ".safetensors":
        from safetensors.numpy import load_file

        x, y = load_file(p), load_file(q)
        close = x.keys() == y.keys() and all(
            x[n].shape == y[n].shape and bool(abs(x[n].astype("float64") - y[n].astype("float64")).max(initial=0)
                                              <= WEIGHT_ROUNDING) for n in x)
        return "equal to float32 rounding" if close else None
    return None


# --- main --------------------------------------------------------------------------------------------------------


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10, help="how many times the pipeline is killed")
    parser.add_argument("--seed", type=int, default=0, help="seeds the kill plan")
    parser.add_argument("--workdir", type=Path, help="where both runs go (default: a new temporary folder)")
    parser.add_argument("--reference", type=Path,
                        help="a finished uninterrupted run of this script (its `uninterrupted` folder) to reuse")
    parser.add_argument("--logs", help="click logs (data.logs) for both runs: collect is skipped, so no kill "
                                        "falls in it")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds one run may take")
    parser.add_argument("--keep", action="store_true", help="keep the work folder when every check holds")
    args = parser.parse_args(argv)
    for stop in (signal.SIGTERM, signal.SIGHUP):  # say why it stopped; the run under way dies with this process
        signal.signal(stop, lambda n, _: sys.exit(f"chaos test stopped by signal {signal.Signals(n).name}"))
    command = [sys.executable, *COMMAND, *([f"data.logs={args.logs}"] if args.logs else [])]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="clicks2pref-chaos-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"chaos test in {work}: {args.kills} kills, seed {args.seed}", flush=True)

    if args.reference:
        reference = args.reference.resolve()
        timeline = Timeline(**json.loads((reference / "timeline.json").read_text()))
        if timeline.command != command[1:]:
            raise SystemExit(f"{reference} ran {' '.join(timeline.command)}, not {' '.join(command[1:])}")
        print(f"uninterrupted run reused from {reference}")
    else:
        reference = work / "uninterrupted"
        timeline = uninterrupted(reference, command, args.timeout)
    print(f"uninterrupted run: {timeline.seconds:.0f}s; steps started at "
          + ", ".join(f"{s} {t:.0f}s" for t, s in timeline.stages)
          + "; writes seen: " + ", ".join(f"{k} ({n})" for k, n in
                                          ((k, sum(w[1] == k for w in timeline.writes)) for k in WRITES)), flush=True)

    points = plan(timeline, args.kills, random.Random(args.seed))
    print("kill plan: " + "; ".join(f"{p.at:.0f}s {p.planned()}" for p in points), flush=True)
    root = work / "chaos"
    if root.exists():
        shutil.rmtree(root)
    start = time.monotonic()
    completed, final = chaos(root, points, timeline, command, args.timeout)
    print(f"\nkilled run: {time.monotonic() - start:.0f}s in all; final run folder {final}\n")

    print("kill points (planned on the uninterrupted run's timeline; landed: seconds into that run, and its step):")
    print(f"{'#':>2}  {'at':>7}  {'planned':<34}  {'landed':>7}  {'step':<9}  what was being written")
    for i, p in enumerate(points, 1):
        landed = f"{p.landed:.1f}s" if p.landed is not None else "-"
        print(f"{i:>2}  {p.at:>6.1f}s  {p.planned():<34}  {landed:>7}  {p.landed_stage or '-':<9}  {p.what}")
    checks = [Check("every run after a kill resumed and the last one completed", completed),
              Check(f"all {len(points)} kills landed", all(p.landed is not None for p in points))]
    kinds_hit = {p.write for p in points if p.write and p.landed is not None}
    wanted = {p.write for p in points if p.write}
    checks.append(Check(f"kills during a write of {', '.join(sorted(wanted)) or 'nothing'}", kinds_hit == wanted))
    if completed:
        checks += compare_evaluations(reference / "runs" / "00", Path(final))
        checks += artifact_checks(root / "artifacts")
        checks += artifact_differences(reference / "artifacts", root / "artifacts")
        checks.append(result_differences(reference / "artifacts", root / "artifacts"))

    print("\nchecks:")
    for c in checks:
        print(f"  [{'ok' if c.ok else 'FAILED'}] {c.name}")
        for line in c.detail:
            print(f"         {line}")
    left = sorted(p.name for p in tmp_dir(root).iterdir() if p.is_file()) if tmp_dir(root).is_dir() else []
    print(f"\nleft in the runs' TMPDIR (outside artifacts/, not checked): {', '.join(left) if left else 'nothing'}")
    ok = all(c.ok for c in checks)
    print(f"\nchaos test {'passed' if ok else 'FAILED'}: {sum(p.landed is not None for p in points)} kills")
    if ok and not args.keep and not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
