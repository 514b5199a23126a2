"""The floor and the ceiling of each user model, with no policy: canned and ideal panels on the test contexts.

    python experiments/contextual/reference_rows.py    # updates experiments/contextual/results.json

The canned panel (eval.reference_panels.canned: three questions made from the topic's title, the same for every
context of a topic) and the ideal panel (the oracle's greedy best of the world's own questions) on each model's
own test split: v1 with its published split (by context), the contextual model with the default split (by
topic), and population B on v1. Also the three most likely intents' canonical questions, which needs the oracle's
intent distribution (a second upper-bound reference). The oracle only evaluates here: nothing is chosen.
"""
from __future__ import annotations

import json
import subprocess
from datetime import date
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from clicks2pref.config import compose_job, register_configs
from clicks2pref.data.simulator import build_simulator, context_splits
from clicks2pref.eval.ctr import bootstrap_mean, cluster_labels
from clicks2pref.eval.reference_panels import reference_panels

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MODELS = {  # name -> overrides (v1 as published: its own world and split)
    "v1": ["simulator=v1", "data.split.by=context"],
    "contextual": [],
    "population B": ["experiment=population_b", "simulator=v1", "data.split.by=context", "eval.ci_clusters=topic"],
}


def measure(overrides: list[str]) -> dict:
    cfg = compose_job(str(ROOT / "conf"), overrides)
    sim = build_simulator(OmegaConf.to_object(cfg.simulator))
    contexts = context_splits(sim.world, cfg.data.split)["test"]
    ev = cfg.eval
    panels = reference_panels(sim, contexts, list(ev.reference_panels.canned), len(sim.cfg.examination))
    top = []
    for t, f in contexts:
        it = sim.intents(t, f)
        p = it.segment_p @ it.intent_p
        top.append([it.intents[i].question for i in np.argsort(-p, kind="stable")[:len(sim.cfg.examination)]])
    panels["top_intents"] = top
    labels = cluster_labels(contexts, ev.ci_clusters)
    out = {"contexts": len(contexts), "topics": len({t for t, _ in contexts})}
    for name, rows in panels.items():
        ctr = sim.oracle_ctr_many([(t, f, p) for (t, f), p in zip(contexts, rows)])
        est = bootstrap_mean(ctr, ev.bootstrap_samples, ev.ci_level, cfg.seed, labels)
        out[name] = {"v": est.mean, "ci": [est.low, est.high]}
    out["canned_over_ideal"] = out["canned"]["v"] / out["ideal"]["v"]
    return out


def main() -> None:
    register_configs()
    path = HERE / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {"runs": {}, "values": {}, "tables": {}}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    run = "reference_rows"
    results["runs"][run] = {"date": date.today().isoformat(), "commit": commit, "machine": "2-core CPU",
                            "command": "python experiments/contextual/reference_rows.py",
                            "note": "oracle CTR of panels no policy produced, on each model's own test split"}
    rows = []
    for model, overrides in MODELS.items():
        m = measure(overrides)
        key = model.replace(" ", "_").lower()
        for name in ("canned", "ideal", "top_intents"):
            results["values"][f"{key}_{name}"] = {**m[name], "fmt": "{:.3f}", "run": run,
                                                   "what": f"{name} panel, oracle CTR on {m['contexts']} test contexts "
                                                           f"of {m['topics']} topics ({model})"}
        results["values"][f"{key}_canned_over_ideal"] = {"v": m["canned_over_ideal"], "fmt": "{:.2f}", "run": run,
                                                         "what": f"canned / ideal ({model})"}
        rows.append([model, m["contexts"], m["topics"], m["canned"], m["top_intents"], m["ideal"],
                     m["canned_over_ideal"]])
        print(f"{model:13s} canned {m['canned']['v']:.3f}  top intents {m['top_intents']['v']:.3f}  "
              f"ideal {m['ideal']['v']:.3f}  canned/ideal {m['canned_over_ideal']:.2f}  ({m['contexts']} contexts)")
    results["tables"]["reference_rows"] = {
        "columns": ["user model", "test contexts", "topics", "canned", "three likeliest intents", "ideal",
                    "canned / ideal"],
        "fmt": {"test contexts": "{:.0f}", "topics": "{:.0f}", "canned": "{:.3f}", "three likeliest intents": "{:.3f}",
                "ideal": "{:.3f}", "canned / ideal": "{:.2f}"},
        "rows": [[r[0], r[1], r[2], {"v": r[3]["v"], "ci": r[3]["ci"]}, {"v": r[4]["v"], "ci": r[4]["ci"]},
                  {"v": r[5]["v"], "ci": r[5]["ci"]}, r[6]] for r in rows],
        "run": run}
    path.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
