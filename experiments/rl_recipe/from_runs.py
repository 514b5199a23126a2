"""Record the RL recipe sweep (`python -m clicks2pref -m experiment=rl_recipe`) into experiments/rl_recipe.

    python experiments/rl_recipe/from_runs.py SWEEP_DIR COMMIT [--machine TEXT]
    python experiments/rl_recipe/from_runs.py --pending

SWEEP_DIR is the multirun folder (one job folder per setting, each with its `grpo.json`). Each setting is read
as a team without an oracle would read it: the checkpoint the monitor kept on sampled clicks of the validation
probe contexts, its lift over the first evaluation (the SFT policy) with that lift's standard error, and the
training seconds it cost. The oracle's lift on the same probe panels is shown beside it and chooses nothing.
Writes the table `settings` and the figure `validation_ctr.png` (sampled CTR on the probes against training
seconds, one line per setting).
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import record  # noqa: E402

RUN = "rl_recipe"
COMMAND = "python -m clicks2pref -m experiment=rl_recipe"
RECORD = "python experiments/rl_recipe/from_runs.py SWEEP_DIR COMMIT"
COLUMNS = ["setting", "optimiser steps", "training s", "kept step", "sampled lift over SFT ± s.e. (validation)",
           "oracle lift on the same panels (not used)"]
FMT = {"optimiser steps": "{:.0f}", "kept step": "{:.0f}", "training s": "{:,.0f}",
       "sampled lift over SFT ± s.e. (validation)": "{:+.4f}", "oracle lift on the same panels (not used)": "{:+.4f}"}


def setting(job: Path) -> str:
    params = record.sweep_params(RUN)
    return ", ".join(f"{k.split('.')[-1]} {record.swept(job, k)}" for k in params)


def rows(sweep: Path) -> tuple[list, list]:
    out, curves = [], []
    for job in record.jobs(sweep):
        grpo = record.read(job, "grpo.json")
        if grpo is None:
            continue
        chosen = grpo.get("selected") or {}
        se = chosen.get("lift_se")
        per_step = grpo["train_seconds"] / max(grpo["optimizer_steps"], 1)
        out.append([setting(job), grpo["optimizer_steps"], grpo["train_seconds"], chosen.get("step"),
                    {"v": chosen.get("lift"), "note": f" ± {se:.4f}" if se is not None else ""},
                    chosen.get("oracle_lift")])
        curves.append((setting(job), [(e["step"] * per_step, e["sampled_ctr"]) for e in chosen.get("evaluations", [])]))
    return out, curves


def figure(curves: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for label, points in curves:
        if points:
            ax.plot(*zip(*points), marker="o", label=label)
    ax.set_xlabel("training seconds (2-core CPU)")
    ax.set_ylabel("sampled CTR, validation probe contexts")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    parser = record.parser(__doc__, "sweep_dir")
    args = parser.parse_args(argv)
    if args.pending:
        results = {"runs": {RUN: record.pending(COMMAND, RECORD)}, "values": {},
                   "tables": {"settings": record.table(COLUMNS, record.pending_rows(["each setting"], COLUMNS), RUN)}}
        record.write_results(HERE, results)
        return results
    if args.sweep_dir is None or args.commit is None:
        parser.error("SWEEP_DIR and COMMIT, or --pending")
    table_rows, curves = rows(args.sweep_dir)
    if not table_rows:
        raise SystemExit(f"{args.sweep_dir}: no job folder with a grpo.json")
    figure(curves, HERE / "validation_ctr.png")
    return record.update(HERE, RUN, record.provenance(args.sweep_dir, args.commit, args.machine),
                         {}, {"settings": record.table(COLUMNS, table_rows, RUN, FMT)})


if __name__ == "__main__":
    main()
