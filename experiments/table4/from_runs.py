"""Record a Table 4 sweep's evaluation into experiments/table4/results.json.

    python experiments/table4/from_runs.py EVALUATE_RUN_DIR COMMIT [NAME]

EVALUATE_RUN_DIR holds the evaluation.json of `stage=evaluate 'eval.policies=[sft,<the sweep's grpo folders>]'
eval.reference=sft`; each folder's grpo.json says which `rewards` preset trained it. Writes the tables NAME
(one row per preset, with the canned floor and the ideal ceiling of the same contexts) and NAME_paired
(differences between presets, paired on the same contexts, CIs that resample whole topics as the evaluation's
own do), and the values the claims table cites.
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
CONF = HERE.parent.parent / "conf"
# (label, minuend, subtrahend, what the difference asks)
PAIRS = [("`full` − `no_fusion`", "full", "no_fusion", "fusion's weights against equal weights"),
         ("`mean_only` − `full`", "mean_only", "full", "GaRM's μ alone against μ − κσ"),
         ("`full` − `btrm_instead_of_garm`", "full", "btrm_instead_of_garm", "GaRM against the BTRM"),
         ("`full` − `no_ppl`", "full", "no_ppl", "the perplexity OOD term"),
         ("`full` − `no_external`", "full", "no_external", "the external reward model")]


def test_clusters(evaluation: dict) -> list[str] | None:
    """The bootstrap's unit of each evaluated context (its topic, as `eval.ci_clusters` says), in the evaluation's
    order; None: contexts resampled alone. Checked against the contexts the evaluation shows."""
    register_configs()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("config")
    clusters = split_clusters(cfg, evaluation["split"], evaluation["contexts"])
    first = [e["context"][0] for e in evaluation["examples"]]
    if clusters is not None and clusters[:len(first)] != first:
        raise SystemExit("the config's test split is not the evaluation's contexts: record with the sweep's config")
    return clusters


def dumps(results: dict) -> str:
    """results.json as this folder writes it by hand: a run or a value per line, a table's rows one per line."""
    line = lambda x: json.dumps(x, ensure_ascii=False)  # noqa: E731

    def table(t: dict) -> str:
        keys = [f'      "{k}": ' + ("[\n" + ",\n".join("        " + line(r) for r in v) + "\n      ]" if k == "rows"
                                    else line(v)) for k, v in t.items()]
        return "{\n" + ",\n".join(keys) + "\n    }"

    parts = []
    for section, entries in results.items():
        body = [f'    "{k}": ' + (table(v) if section == "tables" else line(v)) for k, v in entries.items()]
        parts.append(f'  "{section}": ' + ("{\n" + ",\n".join(body) + "\n  }" if body else "{}"))
    return "{\n" + ",\n".join(parts) + "\n}\n"


def main(evaluation_dir: str, commit: str, name: str = "presets_contextual") -> None:
    evaluation = json.loads((Path(evaluation_dir) / "evaluation.json").read_text())
    rows = {r["policy"]: r for r in evaluation["rows"]}
    per_context = {k: np.asarray(v) for k, v in evaluation["per_context_ctr"].items()}
    presets, jobs = {}, {}
    for policy in rows:
        if (Path(policy) / "grpo.json").exists():
            job = json.loads((Path(policy) / "grpo.json").read_text())
            presets[job["rewards"]], jobs[job["rewards"]] = policy, job
    samples = evaluation.get("samples_per_context")
    path = HERE / "results.json"
    results = json.loads(path.read_text())
    run = f"contextual_{date.today().isoformat()}"
    budgets = sorted({j["policy_samples"] for j in jobs.values()})
    results["runs"][run] = {
        "date": date.today().isoformat(), "commit": commit, "machine": "2-core CPU, fp32",
        "command": "python -m clicks2pref -m experiment=table4, then stage=evaluate 'eval.policies=[sft,<the "
                   f"sweep's grpo folders>]' eval.reference=sft eval.samples_per_context={samples} "
                   "eval.best_of.n=0 eval.calibration=false",
        "note": f"contextual user model (the default), {evaluation['contexts']} test contexts of held-out topics, "
                f"{samples} panels each, CIs resample topics; GRPO at {', '.join(map(str, budgets))} samples; "
                "the upstream artifacts of the default run at the same commit"}

    def row(label, r, job=None):
        if job is None:  # SFT and the reference panels: no reward, no difference to itself
            return [label, {"v": r["oracle_ctr"], "ci": [r["ci_low"], r["ci_high"]]}, None, None, r["distinct_2"],
                    r["mean_cosine"], r["canned_cosine"], None, None, None]
        (top, w), *rest = sorted(job["weights"].items(), key=lambda kv: -kv[1])
        return [label, {"v": r["oracle_ctr"], "ci": [r["ci_low"], r["ci_high"]]},
                {"v": r["oracle_ctr"] - rows["sft"]["oracle_ctr"], "ci": [r["diff_ci_low"], r["diff_ci_high"]]},
                r["gsb"], r["distinct_2"], r["mean_cosine"], r["canned_cosine"],
                {"v": w, "note": f" {top}, " + ", ".join(f"{v:.3f} {k}" for k, v in rest)}, job["selected"]["step"],
                "yes" if job["monitor"]["flagged"] else "no"]

    order = [p for p in ("full", "no_ppl", "no_rule", "no_diversity", "no_external", "btrm_instead_of_garm",
                         "mean_only", "no_fusion") if p in presets]
    table = [row("SFT", rows["sft"])] + [row(p, rows[presets[p]], jobs[p]) for p in order]
    table += [row(label, rows[n]) for n, label in (("canned", "canned panel (floor)"),
                                                   ("ideal", "ideal panel (upper bound)")) if n in rows]
    results["tables"][name] = {
        "run": run,
        "columns": ["rewards", "oracle CTR [95 % CI]", "vs. SFT, paired [95 % CI]", "GSB", "distinct-2",
                    "mean cosine", "nearness to canned", "fused weights", "kept step", "hacking flag"],
        "fmt": {"oracle CTR [95 % CI]": "{:.4f}", "vs. SFT, paired [95 % CI]": "{:+.4f}", "GSB": "{:+.1f}",
                "distinct-2": "{:.3f}", "mean cosine": "{:.3f}", "nearness to canned": "{:.3f}",
                "fused weights": "{:.3f}", "kept step": "{:.0f}"},
        "rows": table}

    clusters = test_clusters(evaluation)
    paired = []
    for label, a, b, what in PAIRS:
        if a in presets and b in presets:
            est = bootstrap_mean(per_context[presets[a]] - per_context[presets[b]], clusters=clusters)
            paired.append([label, {"v": est.mean, "ci": [est.low, est.high]}, what])
            results["values"][f"contextual_{a}_minus_{b}"] = {
                "v": est.mean, "ci": [est.low, est.high], "fmt": "{:+.4f}", "run": run,
                "what": f"GRPO with rewards={a} − rewards={b}, oracle CTR paired over {evaluation['contexts']} test "
                        f"contexts, {samples} panels each{', topics resampled' if clusters else ''}"}
    results["tables"][f"{name}_paired"] = {
        "run": run, "columns": ["paired difference (same contexts)", "oracle CTR difference [95 % CI]",
                                "what it asks"],
        "fmt": {"oracle CTR difference [95 % CI]": "{:+.4f}"}, "rows": paired}
    path.write_text(dumps(results))
    print(json.dumps({r[0]: r[1] for r in paired}, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:4])
