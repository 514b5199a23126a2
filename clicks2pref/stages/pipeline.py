"""`stage=pipeline`: the steps of SPECS in its order (collect → sft → serve → rm → fusion → grpo → evaluate), each
reused from the artifact cache when its key matches, ending with the results table."""
from __future__ import annotations

import logging
import time

from hydra.utils import get_method

from clicks2pref.stages.artifacts import SPECS

log = logging.getLogger(__name__)
STAGES = tuple(name for name, spec in SPECS.items() if spec.pipeline)  # SPECS order


def run(cfg, loggers=()) -> dict:
    results, seconds = {}, {}
    for name in STAGES:
        if name == "collect" and cfg.data.logs:
            log.info("pipeline: collect skipped, click logs from data.logs=%s", cfg.data.logs)
            continue
        start = time.time()
        log.info("pipeline: %s", name)
        results[name] = get_method(f"clicks2pref.stages.{name}.run")(cfg, loggers)
        seconds[name] = time.time() - start
    print("\nstage times: " + ", ".join(f"{n} {s:.0f}s" for n, s in seconds.items()))
    return {"stages": results, "seconds": seconds}
