"""Record a flywheel run (`experiments/flywheel/run.py`) into experiments/flywheel/results.json.

    python experiments/flywheel/from_run.py OUT_DIR COMMIT [--machine TEXT]
    python experiments/flywheel/from_run.py --pending     # the tables before any run: "not yet measured"

OUT_DIR is the driver's `--out` folder: `flywheel.json` (one row per round: GaRM's oracle ρ on the IID week, the GRPO
stage's own comparison of the round's GRPO and SFT policies, and stage evaluate's powered one with best-of-n),
`run.json` (the command and the overrides every round got) and each round's `round<r>/evaluate/evaluation.json`,
whose per-context CTRs pair a round's policies with the previous round's on the same test contexts (CIs resampled
as the evaluation's own). Writes the tables `rounds` and `between_rounds`.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import record  # noqa: E402

RUN = "flywheel"
COMMAND = "python experiments/flywheel/run.py --rounds 2"
RECORD = "python experiments/flywheel/from_run.py OUT_DIR COMMIT"
COLUMNS = ["round", "logged weeks", "GaRM oracle ρ (IID week)", "GRPO − SFT, the GRPO stage's own [95 % CI]", "GSB",
           "SFT CTR (evaluate)", "GRPO CTR (evaluate)", "GRPO − SFT, evaluate [95 % CI]", "GSB (evaluate)",
           "best-of-n gain", "reward ρ within contexts"]
FMT = {"logged weeks": "{:d}", "GaRM oracle ρ (IID week)": "{:.3f}", "GRPO − SFT, the GRPO stage's own [95 % CI]":
       "{:+.4f}", "GSB": "{:+.1f}", "SFT CTR (evaluate)": "{:.4f}", "GRPO CTR (evaluate)": "{:.4f}",
       "GRPO − SFT, evaluate [95 % CI]": "{:+.4f}", "GSB (evaluate)": "{:+.1f}",
       "best-of-n gain": "{:+.4f}", "reward ρ within contexts": "{:.3f}"}
BETWEEN = ["rounds", "policy", "oracle CTR difference, paired [95 % CI]"]


def round_row(r: dict) -> list:
    powered = "eval_grpo_vs_sft" in r
    return [str(r["round"]), r["weeks"], r["garm_iid_oracle_rho"], {"v": r["grpo_vs_sft"], "ci": [r["ci_low"],
                                                                                              r["ci_high"]]},
            r["gsb"], r.get("eval_sft_ctr"), r.get("eval_grpo_ctr"),
            {"v": r["eval_grpo_vs_sft"], "ci": [r["eval_ci_low"], r["eval_ci_high"]]} if powered else None,
            r.get("eval_gsb"), r.get("eval_bo_gain"), r.get("eval_reward_rho")]


def between_rounds(out: Path, overrides: list[str]) -> list[list]:
    """Each round's SFT and GRPO policies against the previous round's, paired over the same test contexts."""
    import numpy as np

    import clicks2pref
    from clicks2pref.eval.ctr import bootstrap_mean, split_clusters

    evaluations = {int(p.parent.parent.name[len("round"):]): record.read(p.parent, "evaluation.json")
                   for p in out.glob("round*/evaluate/evaluation.json")}
    if len(evaluations) < 2:
        return []
    cfg = clicks2pref.compose([*overrides, "stage=evaluate"], output_dir=out)
    rows = []
    for r in sorted(evaluations)[1:]:
        now, before = evaluations[r], evaluations[r - 1] if r - 1 in evaluations else None
        if before is None or now["contexts"] != before["contexts"]:
            continue
        clusters = split_clusters(cfg, now["split"], now["contexts"])
        for policy in ("sft", "grpo"):
            diff = np.asarray(now["per_context_ctr"][policy]) - np.asarray(before["per_context_ctr"][policy])
            est = bootstrap_mean(diff, int(cfg.eval.bootstrap_samples), float(cfg.eval.ci_level), int(cfg.seed),
                                 clusters)
            rows.append([f"round {r} − round {r - 1}", "SFT" if policy == "sft" else "GRPO",
                         {"v": est.mean, "ci": [est.low, est.high]}])
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = record.parser(__doc__, "out_dir")
    args = parser.parse_args(argv)
    if args.pending:
        pairs = [["round 2 − round 1", "SFT"], ["round 2 − round 1", "GRPO"]]
        results = {"runs": {RUN: record.pending(COMMAND, RECORD)}, "values": {}, "tables": {
            "rounds": record.table(COLUMNS, record.pending_rows(["1", "2"], COLUMNS), RUN),
            "between_rounds": record.table(BETWEEN, record.pending_rows(pairs, BETWEEN), RUN)}}
        record.write_results(HERE, results)
        return results
    if args.out_dir is None or args.commit is None:
        parser.error("OUT_DIR and COMMIT, or --pending")
    rounds = record.read(args.out_dir, "flywheel.json")
    if not rounds:
        raise SystemExit(f"{args.out_dir}: no flywheel.json; run experiments/flywheel/run.py --out {args.out_dir}")
    run = record.read(args.out_dir, "run.json") or {}
    info = record.provenance(args.out_dir, args.commit, args.machine, command_line=run.get("command", COMMAND))
    tables = {"rounds": record.table(COLUMNS, [round_row(r) for r in rounds], RUN, FMT),
              "between_rounds": record.table(BETWEEN, between_rounds(args.out_dir, run.get("overrides", [])), RUN,
                                             {BETWEEN[2]: "{:+.4f}"})}
    return record.update(HERE, RUN, info, {}, tables)


if __name__ == "__main__":
    main()
