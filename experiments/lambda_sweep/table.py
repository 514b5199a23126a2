"""Markdown table of a `-m experiment=lambda_sweep` (or rm_compare) multirun folder.

    python experiments/lambda_sweep/table.py logs/rm/multiruns/<date_time>

One row per job and trained kind: the job's overrides, IID/OOD accuracy and ECE, σ mean, max gradient
norm and training seconds, read from each job's calibration.json.
"""
import json
import sys
from pathlib import Path


SKIP = ("experiment", "paths.", "data.", "logger", "hydra.")  # overrides that only say where things are


def rows(multirun: Path) -> list[str]:
    out = ["| overrides | model | IID acc | IID ECE | OOD acc | OOD ECE | val acc | σ mean (IID) | max grad norm "
           "| train s |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for report in sorted(multirun.glob("*/calibration.json"), key=lambda p: int(p.parent.name)):
        overrides = (report.parent / ".hydra" / "overrides.yaml").read_text().splitlines()
        pairs = [o.lstrip("- ").split("=", 1) for o in overrides]
        swept = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in pairs if not k.startswith(SKIP)) or "default"
        for kind, res in json.loads(report.read_text())["kinds"].items():
            s = res["splits"]

            def f(split, key, digits=3):
                value = s.get(split, {}).get(key)
                return "–" if value is None else f"{value:.{digits}f}"
            out.append(f"| {swept} | {kind} | {f('iid', 'accuracy')} | {f('iid', 'ece', 4)} | {f('ood', 'accuracy')} | "
                       f"{f('ood', 'ece', 4)} | {f('val', 'accuracy')} | {f('iid', 'sigma_mean')} | "
                       f"{res['max_grad_norm']:.2f} | {res['train_seconds']:.0f} |")
    return out


if __name__ == "__main__":
    print("\n".join(rows(Path(sys.argv[1]))))
