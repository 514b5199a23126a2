"""Record a default run on the contextual user model into experiments/contextual/results.json.

    python experiments/contextual/from_run.py RUN_FOLDER ARTIFACTS_DIR COMMIT

RUN_FOLDER is `make run`'s run folder (its evaluation.json); ARTIFACTS_DIR holds the rm stage's rm.json. Every
number the README shows about that run comes from here: the policies against the floor and the ceiling, the
paired lifts with topic-clustered CIs, best-of-16 by the composite reward, and the reward models' agreement with
the oracle.
"""
from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path

from omegaconf import OmegaConf

from clicks2pref.data.simulator import context_splits, load_world
from clicks2pref.eval.ctr import bootstrap_mean

HERE = Path(__file__).resolve().parent
LABELS = {"baseline": "prompted baseline", "sft": "SFT", "grpo": "GRPO (192 samples)",
          "sft+bo16": "SFT, best of 16 by the composite reward", "canned": "canned panel (floor, no model)",
          "ideal": "ideal panel (oracle's best of the world's questions: upper bound)"}


def test_topics(run_folder: str, n: int) -> list[str]:
    """The topic of each evaluated context, from the run's own config (evaluate's contexts, in order)."""
    cfg = OmegaConf.load(Path(run_folder) / ".hydra" / "config.yaml")
    world = load_world(cfg.simulator.world, cfg.simulator.domains)
    contexts = context_splits(world, cfg.data.split)[cfg.eval.split][:cfg.eval.max_contexts or None]
    assert len(contexts) == n, (len(contexts), n)
    return [t for t, _ in contexts]


def main(run_folder: str, artifacts: str, commit: str) -> None:
    ev = json.loads((Path(run_folder) / "evaluation.json").read_text())
    rm = json.loads(next(Path(artifacts).glob("rm/*/rm.json")).read_text())
    path = HERE / "results.json"
    results = json.loads(path.read_text())
    run = "default_contextual"
    results["runs"][run] = {"date": date.today().isoformat(), "commit": commit, "machine": "2-core CPU, fp32",
                            "command": "make run", "note": f"{ev['contexts']} held-out test contexts of held-out "
                                                           f"topics, 16 panels each; CIs resample topics"}
    rows = {r["policy"]: r for r in ev["rows"]}
    best = {b["policy"]: b for b in ev["best_of"]}
    val = results["values"]

    def put(name, v, what, ci=None, fmt="{:+.4f}"):
        val[name] = {"v": v, **({"ci": ci} if ci else {}), "fmt": fmt, "run": run, "what": what}

    sft, base, grpo = rows["sft"], rows["baseline"], rows.get("grpo")
    put("sft_minus_baseline", sft["oracle_ctr"] - base["oracle_ctr"], "SFT − prompted baseline, paired, 16 panels "
        "per context; CI resamples topics", [sft["diff_ci_low"], sft["diff_ci_high"]])
    canned, ideal = rows["canned"], rows["ideal"]
    put("sft_minus_canned", sft["oracle_ctr"] - canned["oracle_ctr"], "SFT − canned panel (oracle CTR)")
    put("ideal_over_sft", ideal["oracle_ctr"] / sft["oracle_ctr"], "ideal panel / SFT", fmt="{:.2f}×")
    put("canned_over_ideal_run", canned["oracle_ctr"] / ideal["oracle_ctr"], "canned / ideal, this run's contexts",
        fmt="{:.2f}")
    if grpo is not None:
        put("grpo_minus_sft_canned_cosine", grpo["canned_cosine"] - sft["canned_cosine"],
            "GRPO − SFT: mean largest cosine of a suggestion to the canned panel (positive: nearer the floor)",
            fmt="{:+.3f}")
    b = best.get("sft+bo16")
    if b:
        put("best_of_16_composite", b["vs_policy"], "best-of-16 by the composite reward − a random one of the same "
            "16 SFT samples, paired", [b["vs_ci_low"], b["vs_ci_high"]])
        put("composite_rho", b["reward_spearman"], "within-context Spearman ρ of the composite reward with the "
            "oracle over SFT's 16 samples per context", fmt="{:.3f}")
    for kind in ("garm", "btrm"):
        m = rm["metrics"][kind]["iid"]
        put(f"{kind}_oracle_rho", m["oracle_spearman"], f"{kind.upper()}'s Spearman ρ with the oracle's "
            "per-suggestion click probability on the IID week", fmt="{:.3f}")
        put(f"{kind}_iid_accuracy", m["accuracy"], f"{kind.upper()} pair accuracy on the IID week", fmt="{:.3f}")
    # GRPO − SFT (paired): evaluate's rows give each policy against the reference (baseline); the GRPO stage's
    # own comparison is against SFT on the same contexts
    per = ev["per_context_ctr"]
    if grpo is not None:
        diff = [g - s for g, s in zip(per["grpo"], per["sft"])]
        est = bootstrap_mean(diff, 1000, 0.95, 1234, test_topics(run_folder, len(diff)))
        put("grpo_minus_sft_16", est.mean, "GRPO (192 samples) − SFT, paired over the same contexts, 16 panels "
            "each; CI resamples topics", [est.low, est.high])
    table_rows = []
    for name, r in rows.items():
        table_rows.append([LABELS.get(name, name), {"v": r["oracle_ctr"], "ci": [r["ci_low"], r["ci_high"]]},
                           None if name == "baseline" else {"v": r["oracle_ctr"] - base["oracle_ctr"],
                                                            "ci": [r["diff_ci_low"], r["diff_ci_high"]]},
                           r["gsb"], r["format_rate"], r["distinct_2"], r["canned_cosine"]])
    results["tables"]["default_run"] = {
        "columns": ["policy", "oracle CTR [95 % CI]", "vs. prompted baseline, paired", "GSB", "format rate",
                    "distinct-2", "nearness to canned"],
        "fmt": {"oracle CTR [95 % CI]": "{:.4f}", "vs. prompted baseline, paired": "{:+.4f}", "GSB": "{:+.1f}",
                "format rate": "{:.2f}", "distinct-2": "{:.3f}", "nearness to canned": "{:.3f}"},
        "rows": table_rows, "run": run}
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({k: v["v"] for k, v in val.items() if v.get("run") == run}, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:4])
