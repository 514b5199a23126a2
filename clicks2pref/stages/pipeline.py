"""The stage graph: every stage's `run` by name, and the one function that starts a stage.

A stage is a function of its config and the results of the stages it reads: `run(cfg, inputs, loggers)`.
What it reads is its spec's `reads` (`clicks2pref.stages.artifacts.SPECS`, which also says what its key
hashes); `run_stage` runs or reuses those first, depth first, and hands their results over, so no stage starts
another and an import graph follows `python -m clicks2pref` into every stage from here.

`stage=pipeline` runs the pipeline's steps in SPECS order, numbered the same everywhere (README, docstrings):
1 collect (paper stage 1) → 2 sft (paper stage 2; `teacher` is its sub-stage) → 3 serve → 4 rm (paper stage 3)
→ 5 fusion → 6 grpo (paper stage 4) → 7 evaluate; each reused when its key matches, ending with the results
table.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from clicks2pref.errors import ConfigError
from clicks2pref.stages import collect, evaluate, fusion, grpo, rm, serve, sft, teacher
from clicks2pref.stages.artifacts import SPECS

log = logging.getLogger(__name__)
STAGES = tuple(name for name, spec in SPECS.items() if spec.pipeline)  # the pipeline's steps, SPECS order


def run(cfg, inputs: dict, loggers=()) -> dict:
    """`stage=pipeline`: every step in order (it reads nothing itself; each step's inputs come from the graph)."""
    results, seconds = {}, {}
    for name in STAGES:
        if name == "collect" and cfg.data.logs:
            log.info("pipeline: collect skipped, click logs from data.logs=%s", cfg.data.logs)
            continue
        start = time.time()
        log.info("pipeline: %s", name)
        results[name] = run_stage(cfg, name, loggers)
        seconds[name] = time.time() - start
    print("\nstage times: " + ", ".join(f"{n} {s:.0f}s" for n, s in seconds.items()))
    out = Path(cfg.paths.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "stage_seconds.json").write_text(json.dumps(seconds, indent=1))  # the run's own stage budget
    return {"stages": results, "seconds": seconds}


RUNS = {"collect": collect.run, "teacher": teacher.run, "sft": sft.run, "serve": serve.run, "rm": rm.run,
        "fusion": fusion.run, "grpo": grpo.run, "evaluate": evaluate.run, "pipeline": run}
assert set(RUNS) == set(SPECS), "every stage of SPECS has its run here"


def run_stage(cfg, name: str, loggers=()) -> dict:
    """Stage `name`'s result: the stages it reads run (or reused) first, then the stage on their results."""
    if name not in RUNS:
        raise ConfigError(f"stage.name: '{name}' is not a stage; use one of {', '.join(RUNS)}")
    inputs = {upstream: run_stage(cfg, upstream, loggers) for upstream in SPECS[name].reads(cfg)}
    return RUNS[name](cfg, inputs, loggers)
