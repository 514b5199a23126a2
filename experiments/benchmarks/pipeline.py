"""Benchmark: wall seconds per stage of one `python -m clicks2pref` run from an empty artifact cache.

    python experiments/benchmarks/pipeline.py [--workdir DIR] [OVERRIDE ...]
    python experiments/benchmarks/pipeline.py experiment=smoke            # the whole pipeline, smoke sizes
    python experiments/benchmarks/pipeline.py experiment=smoke stage=collect

Runs the command in a fresh process with `paths.artifacts_dir` and `paths.log_dir` in an empty folder (a
temporary one unless `--workdir` is given), so every stage the run needs is computed, none reused. Each
stage's own seconds (upstream stages excluded) are read from the result it writes last: the artifact's
marker file (`artifacts/<stage>/<key>/<marker>`, see `clicks2pref.stages.artifacts.SPECS`) or, for
`evaluate`, which keeps no artifact, `evaluation.json` in the run folder. Other `*_seconds` fields of the
result (training, evaluation) are printed beside it. `stage=pipeline` also prints its own per-stage wall
times, which are read from its output as well. One JSON line per stage, then one with the total wall
time, the run's exit status and its peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import OFFLINE, emit
from clicks2pref.stages.artifacts import SPECS

RUN_FOLDER_RESULTS = {"evaluate": "evaluation.json"}  # stages without an artifact: their result in the run folder
STAGE_TIMES = re.compile(r"stage times: (.*)")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=None, help="keep artifacts and logs here (default: a temporary folder)")
    ap.add_argument("--json", action="store_true", help="JSON lines only (no summary on stderr)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides passed to python -m clicks2pref")
    return ap.parse_args(argv)


def _timings(result: dict) -> dict:
    """`seconds` and every other top-level `*_seconds` field of a stage's result."""
    return {k: v for k, v in result.items() if k == "seconds" or k.endswith("_seconds")}


def stage_seconds(artifacts_dir: Path, log_dir: Path | None = None, output: str = "") -> list[dict]:
    """Per stage: its own seconds and where they were read. From artifact markers (one line per key), from
    run-folder results of stages without an artifact, and `stage=pipeline`'s "stage times:" line in `output`."""
    rows = []
    for stage, spec in SPECS.items():
        folder = Path(artifacts_dir) / stage
        if spec.marker is None or not folder.is_dir():
            continue
        for marker in sorted(folder.glob(f"[!.]*/{spec.marker}")):
            timings = _timings(json.loads(marker.read_text()))
            if "seconds" in timings:
                rows.append({"stage": stage, "seconds": timings.pop("seconds"), "source": str(marker), **timings})
    for stage, name in RUN_FOLDER_RESULTS.items():
        for path in sorted(Path(log_dir).rglob(name)) if log_dir is not None and Path(log_dir).is_dir() else []:
            timings = _timings(json.loads(path.read_text()))
            if "seconds" in timings:
                rows.append({"stage": stage, "seconds": timings.pop("seconds"), "source": str(path), **timings})
    for line in STAGE_TIMES.findall(output):
        for item in line.split(","):
            name, _, value = item.strip().rpartition(" ")
            if name and value.endswith("s"):
                rows.append({"stage": name, "seconds": float(value[:-1]), "source": "stage=pipeline output"})
    return rows


def run(overrides: list[str], workdir: Path) -> tuple[int, float, str]:
    """`python -m clicks2pref` with artifacts and logs under `workdir`: (exit status, wall seconds, output)."""
    cmd = [sys.executable, "-m", "clicks2pref", *overrides, f"paths.artifacts_dir={workdir / 'artifacts'}",
           f"paths.log_dir={workdir / 'logs'}"]
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env={**os.environ, **OFFLINE})
    wall = time.perf_counter() - start
    print(done.stdout, file=sys.stderr)
    return done.returncode, wall, done.stdout


def measure(overrides: list[str], workdir: Path, quiet: bool) -> dict:
    if (workdir / "artifacts").exists() and any((workdir / "artifacts").iterdir()):
        raise SystemExit(f"{workdir / 'artifacts'} is not empty: every stage must run, none be reused")
    code, wall, output = run(overrides, workdir)
    rows = stage_seconds(workdir / "artifacts", workdir / "logs", output)
    for row in rows:
        emit(row)
    own = [r["seconds"] for r in rows if r["source"] != "stage=pipeline output"]
    total = {"total_seconds": wall, "stages_seconds_sum": sum(own), "returncode": code,
             "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
             "overrides": overrides, "workdir": str(workdir)}
    emit(total)
    if not quiet:
        for r in rows:
            print(f"{r['stage']:>10}: {r['seconds']:8.1f} s  ({r['source']})", file=sys.stderr)
        print(f"{'total':>10}: {wall:8.1f} s wall, exit {code}", file=sys.stderr)
    return total


def main() -> None:
    args = parse_args()
    if args.workdir is not None:
        workdir = Path(args.workdir).expanduser().resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        total = measure(args.overrides, workdir, args.json)
    else:
        with tempfile.TemporaryDirectory(prefix="clicks2pref-bench-") as tmp:
            total = measure(args.overrides, Path(tmp), args.json)
    sys.exit(total["returncode"])


if __name__ == "__main__":
    main()
