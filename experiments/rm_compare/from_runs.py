"""Record an `-m experiment=rm_compare` sweep into experiments/rm_compare/results.json.

    python experiments/rm_compare/from_runs.py SWEEP_DIR COMMIT [--machine TEXT]
    python experiments/rm_compare/from_runs.py --pending      # the tables before any run: "not yet measured"

SWEEP_DIR is the sweep's folder (`logs/rm/multiruns/<time>/`): one job per objective × backbone, each training GaRM
and BTRM. Every job's `calibration.json` (the rm stage's report) gives one row per trained model: pair accuracy and
ECE on the IID week and, with `data.ood_logs`, on the OOD logs; the Spearman ρ of its score with the oracle's
per-suggestion click probability and the share of within-panel pairs it orders like the oracle (IID week); GaRM's
mean σ; the largest gradient norm; training seconds. Writes the table `models`.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import record  # noqa: E402

RUN = "rm_compare"
COMMAND = "python -m clicks2pref -m experiment=rm_compare"
RECORD = "python experiments/rm_compare/from_runs.py SWEEP_DIR COMMIT"
BACKBONES = {"tiny": "tiny-llama (random, full FT)", "minilm": "MiniLM-L6 + LoRA", "default": "SmolLM2-135M + LoRA"}
COLUMNS = ["objective", "backbone", "model", "IID acc", "IID ECE", "IID oracle ρ", "within-panel order like the oracle",
           "OOD acc", "OOD ECE", "σ mean (IID)", "max grad norm", "train s"]
FMT = {"IID acc": "{:.3f}", "IID ECE": "{:.4f}", "IID oracle ρ": "{:.3f}",
       "within-panel order like the oracle": "{:.3f}", "OOD acc": "{:.3f}", "OOD ECE": "{:.4f}",
       "σ mean (IID)": "{:.3f}", "max grad norm": "{:.2f}", "train s": "{:,.0f}"}


def rows(job: Path) -> list[list]:
    """One row per reward model the job trained, from its calibration.json."""
    report = record.read(job, "calibration.json")
    if report is None:
        return []
    objective = report.get("objective") or record.swept(job, "reward_model.objective")
    backbone = record.swept(job, "reward_model") or "default"
    out = []
    for kind, res in report["kinds"].items():
        iid, ood = res["splits"].get("iid", {}), res["splits"].get("ood", {})
        out.append([objective, BACKBONES.get(backbone, backbone), record.KINDS.get(kind, kind), iid.get("accuracy"),
                    iid.get("ece"), iid.get("oracle_spearman"), iid.get("oracle_within_panel"), ood.get("accuracy"),
                    ood.get("ece"), iid.get("sigma_mean"), res.get("max_grad_norm"), res.get("train_seconds")])
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = record.parser(__doc__, "sweep_dir")
    args = parser.parse_args(argv)
    if args.pending:
        grid = record.sweep_params("rm_compare")
        labels = [[o, BACKBONES.get(b, b), kind] for o in grid["reward_model.objective"]
                  for b in grid["reward_model"] for kind in record.KINDS.values()]
        results = {"runs": {RUN: record.pending(COMMAND, RECORD, "add data.ood_logs=<another policy's logs> for the "
                                                "OOD columns")},
                   "values": {}, "tables": {"models": record.table(COLUMNS, record.pending_rows(labels, COLUMNS), RUN)}}
        record.write_results(HERE, results)
        return results
    if args.sweep_dir is None or args.commit is None:
        parser.error("SWEEP_DIR and COMMIT, or --pending")
    table = [row for job in record.jobs(args.sweep_dir) for row in rows(job)]
    if not table:
        raise SystemExit(f"{args.sweep_dir}: no job folder with a calibration.json; run the sweep first")
    info = record.provenance(args.sweep_dir, args.commit, args.machine)
    return record.update(HERE, RUN, info, {}, {"models": record.table(COLUMNS, table, RUN, FMT)})


if __name__ == "__main__":
    main()
