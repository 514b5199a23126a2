"""Record an `-m experiment=lambda_sweep` sweep into experiments/lambda_sweep/results.json.

    python experiments/lambda_sweep/from_runs.py SWEEP_DIR COMMIT [--machine TEXT]
    python experiments/lambda_sweep/from_runs.py --pending    # the tables before any run: "not yet measured"

SWEEP_DIR is the sweep's folder (`logs/rm/multiruns/<time>/`): one GaRM job per λ (its override
`reward_model.loss.variance_reg.lambda`). Each job's `calibration.json` gives pair accuracy and ECE (validation, IID
week, and OOD logs with `data.ood_logs`), σ's mean on the IID pairs, the largest gradient norm and the training
seconds; its CSV log (`csv/metrics.csv`, `rm/garm/sigma_mean` and `sigma_std` of every training step) σ's mean and
spread over the last logged step's suggestions. Writes the table `sweep`.
"""
from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import record  # noqa: E402

RUN = "lambda_sweep"
KEY = "reward_model.loss.variance_reg.lambda"
COMMAND = "python -m clicks2pref -m experiment=lambda_sweep"
RECORD = "python experiments/lambda_sweep/from_runs.py SWEEP_DIR COMMIT"
COLUMNS = ["λ", "IID acc", "IID ECE", "OOD acc", "OOD ECE", "val acc", "σ mean (IID)", "σ mean, last train step",
           "σ std, last step", "max grad norm", "train s"]
FMT = {**{c: "{:.3f}" for c in COLUMNS[1:9]}, "max grad norm": "{:.2f}", "train s": "{:,.0f}"}


def last_step(job: Path, kind: str = "garm") -> tuple[Optional[float], Optional[float]]:
    """σ's mean and std over the suggestions of the last training step the job's CSV log holds."""
    path = job / "csv" / "metrics.csv"
    mean = std = None
    if path.exists():
        with path.open() as f:
            for row in csv.DictReader(f):
                if row.get(f"rm/{kind}/sigma_mean"):
                    mean, std = float(row[f"rm/{kind}/sigma_mean"]), float(row[f"rm/{kind}/sigma_std"])
    return mean, std


def row(job: Path) -> Optional[list]:
    report = record.read(job, "calibration.json")
    if report is None or "garm" not in report["kinds"]:
        return None
    res = report["kinds"]["garm"]
    s = {k: res["splits"].get(k, {}) for k in ("iid", "ood", "val")}
    return [record.swept(job, KEY), s["iid"].get("accuracy"), s["iid"].get("ece"), s["ood"].get("accuracy"),
            s["ood"].get("ece"), s["val"].get("accuracy"), s["iid"].get("sigma_mean"), *last_step(job),
            res.get("max_grad_norm"), res.get("train_seconds")]


def main(argv: list[str] | None = None) -> dict:
    parser = record.parser(__doc__, "sweep_dir")
    args = parser.parse_args(argv)
    if args.pending:
        labels = record.sweep_params("lambda_sweep")[KEY]
        results = {"runs": {RUN: record.pending(COMMAND, RECORD, "add data.ood_logs=<another policy's logs> for the "
                                                "OOD columns")},
                   "values": {}, "tables": {"sweep": record.table(COLUMNS, record.pending_rows(labels, COLUMNS), RUN)}}
        record.write_results(HERE, results)
        return results
    if args.sweep_dir is None or args.commit is None:
        parser.error("SWEEP_DIR and COMMIT, or --pending")
    rows = [r for r in map(row, record.jobs(args.sweep_dir)) if r is not None]
    if not rows:
        raise SystemExit(f"{args.sweep_dir}: no job folder with GaRM's calibration.json; run the sweep first")
    info = record.provenance(args.sweep_dir, args.commit, args.machine)
    return record.update(HERE, RUN, info, {}, {"sweep": record.table(COLUMNS, rows, RUN, FMT)})


if __name__ == "__main__":
    main()
