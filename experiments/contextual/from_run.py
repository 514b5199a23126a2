"""Record a default run on the contextual user model into experiments/contextual/results.json.

    python experiments/contextual/from_run.py ARTIFACTS_DIR COMMIT [COMMAND]
    python experiments/contextual/from_run.py --log-volume ARTIFACTS_DIR:USERS:COMMIT ...
    python experiments/contextual/from_run.py --rl-scale ARTIFACTS_DIR EVALUATE_RUN_DIR COMMIT
    python experiments/contextual/from_run.py --stage-budget PIPELINE_RUN_DIR COMMIT

Reads the stage artifacts a `make run` wrote (sft, rm, grpo and, once it finished, evaluate), so a run cut short
still records what it measured; every number the READMEs show about the run comes from here. The floor and the
ceiling come from `reference_rows.py` on the same test contexts.
"""
from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_dir

from clicks2pref.config import register_configs
from clicks2pref.eval.ctr import bootstrap_mean, split_clusters

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import record  # noqa: E402
LABELS = {"baseline": "prompted baseline", "sft": "SFT", "grpo": "GRPO (192 samples)",
          "sft+bo16": "SFT, best of 16 by the composite reward", "canned": "canned panel (floor, no model)",
          "ideal": "ideal panel (upper bound)"}


def artifact(root: Path, stage: str, name: str, pick=None):
    """The newest `stage/*/name` of `root` (among those `pick` accepts)."""
    found = [json.loads(p.read_text()) for p in sorted(root.glob(f"{stage}/*/{name}"), key=lambda p: p.stat().st_mtime)]
    found = [f for f in found if pick is None or pick(f)]
    return found[-1] if found else None


def budget(root: Path, choose=min):
    """Accepts the GRPO artifact with `choose` (min: the default budget; max: experiment=rl_scale, which shares
    the folder) of the policy samples present."""
    budgets = [json.loads(p.read_text()).get("policy_samples") for p in root.glob("grpo/*/grpo.json")]
    wanted = choose((b for b in budgets if b), default=None)
    return lambda job: job.get("policy_samples") == wanted


def paired(evaluation: dict, policy: str, reference: str):
    """policy − reference on the evaluation's own contexts and panels, resampled as its CIs are (whole topics)."""
    register_configs()
    with initialize_config_dir(str(HERE.parent.parent / "conf"), version_base="1.3"):
        cfg = compose("config")
    per_context = evaluation["per_context_ctr"]
    return bootstrap_mean(np.asarray(per_context[policy]) - np.asarray(per_context[reference]),
                          clusters=split_clusters(cfg, evaluation["split"], evaluation["contexts"]))


def main(artifacts: str, commit: str, command: str = "make run") -> None:
    root = Path(artifacts)
    path = HERE / "results.json"
    results = json.loads(path.read_text())
    val = results["values"]
    run = "default_contextual"
    sft, rm = artifact(root, "sft", "sft.json"), artifact(root, "rm", "rm.json")
    default = budget(root)  # experiment=table4 may share the folder: the default run's reward preset is `full`
    grpo = artifact(root, "grpo", "grpo.json", lambda job: default(job) and job.get("rewards") == "full")
    ev = artifact(root, "evaluate", "evaluation.json", lambda e: e.get("best_of"))  # the pipeline's, with best-of
    ev = record.evaluation(ev) if ev else ev  # the stored measurements, as the run's report
    done = [s for s, r in (("sft", sft), ("rm", rm), ("grpo", grpo), ("evaluate", ev)) if r]
    results["runs"][run] = {"date": date.today().isoformat(), "commit": commit, "machine": "2-core CPU, fp32",
                            "command": command, "note": f"stages measured: {', '.join(done)}; whole test topics held "
                                                        f"out; CIs resample topics"}

    def put(name, v, what, ci=None, fmt="{:+.4f}"):
        val[name] = {"v": v, **({"ci": ci} if ci else {}), "fmt": fmt, "run": run, "what": what}

    canned, ideal = val["contextual_canned"]["v"], val["contextual_ideal"]["v"]  # same test contexts
    if sft:
        e = sft["eval"]
        put("sft_minus_baseline_1_panel", e["lift"]["ctr_diff"], f"SFT − prompted baseline, paired over "
            f"{e['contexts']} test contexts, 1 panel each (the sft stage's comparison)",
            [e["lift"]["ci_low"], e["lift"]["ci_high"]])
        put("sft_ctr", e["sft"]["oracle_ctr"], "SFT oracle CTR, 1 panel per test context",
            [e["sft"]["ci_low"], e["sft"]["ci_high"]], fmt="{:.4f}")
        put("sft_minus_canned", e["sft"]["oracle_ctr"] - canned, "SFT − canned panel, oracle CTR")
        put("ideal_over_sft", ideal / e["sft"]["oracle_ctr"], "ideal panel / SFT", fmt="{:.2f}×")
        ref = {n: {"v": val[f"contextual_{n}"]["v"], "ci": val[f"contextual_{n}"]["ci"]} for n in ("canned", "ideal")}
        results["tables"]["sft_stage"] = {
            "columns": ["panel", f"oracle CTR on {e['contexts']} test contexts [95 % CI, topics resampled]"],
            "fmt": {f"oracle CTR on {e['contexts']} test contexts [95 % CI, topics resampled]": "{:.4f}"},
            "rows": [[LABELS["canned"], ref["canned"]],
                     ["prompted baseline (1 panel per context)",
                      {"v": e["baseline"]["oracle_ctr"], "ci": [e["baseline"]["ci_low"], e["baseline"]["ci_high"]]}],
                     ["SFT (1 panel per context)", {"v": e["sft"]["oracle_ctr"], "ci": [e["sft"]["ci_low"],
                                                                                           e["sft"]["ci_high"]]}],
                     [LABELS["ideal"], ref["ideal"]]],
            "run": run}
    if rm:
        for kind in ("garm", "btrm"):
            m = rm["metrics"][kind]["iid"]
            put(f"{kind}_oracle_rho", m["oracle_spearman"], f"{kind.upper()}'s Spearman ρ with the oracle's "
                "per-suggestion click probability on the IID week", fmt="{:.3f}")
            put(f"{kind}_iid_accuracy", m["accuracy"], f"{kind.upper()} pair accuracy, IID week", fmt="{:.3f}")
        results["tables"]["reward_models"] = {
            "columns": ["reward model", "IID pairs", "pair accuracy", "oracle ρ (per suggestion)"],
            "fmt": {"IID pairs": "{:,}", "pair accuracy": "{:.3f}", "oracle ρ (per suggestion)": "{:.3f}"},
            "rows": [[kind.upper(), rm["metrics"][kind]["iid"]["n_pairs"], rm["metrics"][kind]["iid"]["accuracy"],
                      rm["metrics"][kind]["iid"]["oracle_spearman"]] for kind in ("garm", "btrm")],
            "run": run}
    if grpo:
        e = grpo["eval"]
        put("grpo_minus_sft", e["lift"]["ctr_diff"], f"GRPO ({grpo['policy_samples']} samples, kept step "
            f"{grpo['selected']['step']}) − SFT, paired over {e['contexts']} test contexts, 1 panel each",
            [e["lift"]["ci_low"], e["lift"]["ci_high"]])
    if ev:
        rows = {r["policy"]: r for r in ev["rows"]}
        base = rows["baseline"]
        samples = ev.get("samples_per_context", 16)
        put("sft_minus_baseline", rows["sft"]["oracle_ctr"] - base["oracle_ctr"], f"SFT − prompted baseline, paired "
            f"over {ev['contexts']} test contexts, {samples} panels each (evaluate)",
            [rows["sft"]["diff_ci_low"], rows["sft"]["diff_ci_high"]])
        sft_ctr = rows["sft"]["oracle_ctr"]  # the floor and the ceiling against SFT's panels of the same evaluation
        put("sft_ctr", sft_ctr, f"SFT oracle CTR, {samples} panels per test context",
            [rows["sft"]["ci_low"], rows["sft"]["ci_high"]], fmt="{:.4f}")
        put("sft_minus_canned", sft_ctr - canned, "SFT − canned panel, oracle CTR")
        put("ideal_over_sft", ideal / sft_ctr, "ideal panel / SFT", fmt="{:.2f}×")
        for b in ev["best_of"]:
            if b["policy"] == "sft+bo16":
                put("best_of_16_composite", b["vs_policy"], "best-of-16 by the composite reward − a random one of "
                    "the same 16 SFT samples, paired", [b["vs_ci_low"], b["vs_ci_high"]])
                put("composite_rho", b["reward_spearman"], "within-context Spearman ρ of the composite reward with "
                    "the oracle over SFT's 16 samples", fmt="{:.3f}")
        if "grpo" in rows:
            est = paired(ev, "grpo", "sft")
            put("grpo_minus_sft_16", est.mean, f"GRPO ({grpo['policy_samples'] if grpo else '?'} samples) − SFT, "
                f"paired over {ev['contexts']} test contexts, {samples} panels each (evaluate), topics resampled",
                [est.low, est.high])
            put("grpo_minus_sft_canned_cosine", rows["grpo"]["canned_cosine"] - rows["sft"]["canned_cosine"],
                "GRPO − SFT: mean largest cosine of a suggestion to the canned panel (positive: nearer the floor)",
                fmt="{:+.3f}")
        est = ev.get("estimated") or {}
        for label, name, minus in (("grpo", "grpo", "sft"), ("best_of_16", "sft+bo16", "sft")):
            if name in est and minus in est:  # a lift over SFT, by the offline estimator and by the oracle
                # both lifts are relative to the baseline: (1 + lift_x) / (1 + lift_sft) − 1 is x's over SFT
                e, o = ((1 + est[name][k]) / (1 + est[minus][k]) - 1 for k in ("est_lift", "oracle_lift"))
                what = f"{LABELS.get(name, name)} over SFT on the test contexts, relative lift"
                put(f"{label}_over_sft_estimated", e, f"{what}, estimated offline (GaRM's click model, no oracle)",
                    fmt="{:+.1%}")
                put(f"{label}_over_sft_oracle", o, f"{what}, oracle", fmt="{:+.1%}")
                put(f"{label}_over_sft_estimate_gap", e - o, f"{what}: estimated − oracle", fmt="{:+.1%}")
        if est:
            results["tables"]["estimated"] = {
                "columns": ["policy", "estimated CTR", "estimated lift over the baseline [95 % CI]", "oracle lift",
                            "gap (estimated − oracle)"],
                "fmt": {"estimated CTR": "{:.4f}", "estimated lift over the baseline [95 % CI]": "{:+.1%}",
                        "oracle lift": "{:+.1%}", "gap (estimated − oracle)": "{:+.1%}"},
                "rows": [[LABELS.get(n, n), r["est_ctr"], {"v": r["est_lift"], "ci": [r["est_lift_low"],
                                                                                       r["est_lift_high"]]},
                          r["oracle_lift"], r["lift_gap"]] for n, r in est.items()],
                "run": run}
        results["tables"]["default_run"] = {
            "columns": ["policy", "oracle CTR [95 % CI]", "vs. prompted baseline, paired", "GSB", "format rate",
                        "distinct-2", "nearness to canned"],
            "fmt": {"oracle CTR [95 % CI]": "{:.4f}", "vs. prompted baseline, paired": "{:+.4f}", "GSB": "{:+.1f}",
                    "format rate": "{:.2f}", "distinct-2": "{:.3f}", "nearness to canned": "{:.3f}"},
            "rows": [[LABELS.get(n, n), {"v": r["oracle_ctr"], "ci": [r["ci_low"], r["ci_high"]]},
                      None if n == "baseline" else {"v": r["oracle_ctr"] - base["oracle_ctr"],
                                                    "ci": [r["diff_ci_low"], r["diff_ci_high"]]},
                      r["gsb"], r["format_rate"], r["distinct_2"], r["canned_cosine"]] for n, r in rows.items()],
            "run": run}
    path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps({k: v["v"] for k, v in val.items() if v.get("run") == run}, indent=1))


# the default run's budget on 2 cores: 20 minutes in all, split by what each stage must do
TARGET_SECONDS = {"collect": 150, "sft": 240, "serve": 60, "rm": 300, "fusion": 90, "grpo": 180, "evaluate": 180}


def stage_budget(run_dir: str, commit: str, command: str = "make run") -> None:
    """Each stage's wall seconds in a pipeline run folder (`stage_seconds.json`, written by `stage=pipeline`) beside
    its target; the run must have built every stage (an empty artifact cache), or reused ones read as ~0 s."""
    seconds = json.loads((Path(run_dir) / "stage_seconds.json").read_text())
    path = HERE / "results.json"
    results = json.loads(path.read_text())
    run = "default_contextual_budget"
    results["runs"][run] = {"date": date.today().isoformat(), "commit": commit, "machine": "2-core CPU, fp32",
                            "command": command, "note": "from an empty artifact cache; stage_seconds.json of the run"}
    rows = [[name, seconds.get(name), target] for name, target in TARGET_SECONDS.items()]
    rows.append(["total", sum(seconds.values()), sum(TARGET_SECONDS.values())])
    results["tables"]["stage_budget"] = {"columns": ["stage", "seconds", "target"],
                                         "fmt": {"seconds": "{:,.0f}", "target": "{:,.0f}"}, "rows": rows,
                                         "run": run}
    path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps(seconds, indent=1))


def rl_scale(artifacts: str, evaluation: str, commit: str,
             command: str = "python -m clicks2pref experiment=rl_scale stage=grpo grpo.rl_logs.enabled=false, then "
                            "stage=evaluate eval.best_of.n=0 eval.calibration=false") -> None:
    """GRPO at experiment=rl_scale (the most policy samples in ARTIFACTS_DIR) and its evaluation (the folder of
    its evaluation.json): the lift over SFT and the nearness to the canned panel."""
    path = HERE / "results.json"
    results = json.loads(path.read_text())
    val, run = results["values"], "rl_scale_contextual"
    grpo = artifact(Path(artifacts), "grpo", "grpo.json", budget(Path(artifacts), max))
    samples = grpo["policy_samples"]
    e = grpo["eval"]
    results["runs"][run] = {"date": date.today().isoformat(), "commit": commit, "machine": "2-core CPU, fp32",
                            "command": command, "note": f"the default run's reward; {samples:,} samples"}
    val["grpo_minus_sft_rl_scale"] = {"v": e["lift"]["ctr_diff"], "fmt": "{:+.4f}", "run": run,
                                      "ci": [e["lift"]["ci_low"], e["lift"]["ci_high"]],
                                      "what": f"GRPO ({samples:,} samples, kept step {grpo['selected']['step']}) "
                                              f"− SFT, paired over {e['contexts']} test contexts, 16 panels each"}
    ev_path = Path(evaluation) / "evaluation.json"
    if ev_path.exists():
        rows = {r["policy"]: r for r in json.loads(ev_path.read_text())["rows"]}
        val["grpo_minus_sft_canned_cosine_rl_scale"] = {
            "v": rows["grpo"]["canned_cosine"] - rows["sft"]["canned_cosine"], "fmt": "{:+.3f}", "run": run,
            "what": "GRPO at rl_scale − SFT: mean largest cosine of a suggestion to the canned panel"}
        val["grpo_rl_scale_ctr"] = {"v": rows["grpo"]["oracle_ctr"], "ci": [rows["grpo"]["ci_low"],
                                                                           rows["grpo"]["ci_high"]],
                                    "fmt": "{:.4f}", "run": run, "what": "GRPO at rl_scale, oracle CTR (evaluate)"}
    path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps({k: v["v"] for k, v in val.items() if v.get("run") == run}, indent=1))


def log_volume(runs: list[str]) -> None:
    """The `log_volume` table: per default run (ARTIFACTS_DIR:USERS:COMMIT), what its logs held and what the
    reward models and the fused reward made of them."""
    path = HERE / "results.json"
    results = json.loads(path.read_text())
    rows = []
    for spec in runs:
        folder, users, commit = spec.rsplit(":", 2)
        root = Path(folder)
        sft, rm, fused = (artifact(root, s, f) for s, f in (("sft", "sft.json"), ("rm", "rm.json"),
                                                             ("fusion", "fusion_weights.json")))
        weights = fused["chosen"]["weights"]
        rows.append([f"{int(users)} users per panel ({commit})", sft["data"]["impressions"],
                     sft["data"]["clicked_suggestions"], rm["metrics"]["garm"]["iid"]["n_pairs"],
                     rm["metrics"]["garm"]["iid"]["oracle_spearman"], rm["metrics"]["btrm"]["iid"]["oracle_spearman"],
                     weights.get("garm", 0.0) + weights.get("external", 0.0), weights.get("rule", 0.0)])
    results["tables"]["log_volume"] = {
        "columns": ["logs", "impressions (4 weeks)", "clicked suggestions", "IID pairs", "GaRM oracle ρ",
                    "BTRM oracle ρ", "fused weight on the reward models", "fused weight on the rule"],
        "fmt": {"impressions (4 weeks)": "{:,}", "clicked suggestions": "{:,}", "IID pairs": "{:,}",
                "GaRM oracle ρ": "{:.3f}", "BTRM oracle ρ": "{:.3f}", "fused weight on the reward models": "{:.2f}",
                "fused weight on the rule": "{:.2f}"},
        "rows": rows, "run": "default_contextual"}
    path.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--log-volume"]:
        log_volume(sys.argv[2:])
    elif sys.argv[1:2] == ["--stage-budget"]:
        stage_budget(*sys.argv[2:5])
    elif sys.argv[1:2] == ["--rl-scale"]:
        rl_scale(*sys.argv[2:6])
    else:
        main(*sys.argv[1:4])
