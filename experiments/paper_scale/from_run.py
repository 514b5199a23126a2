"""Record a pipeline run on a GPU into experiments/paper_scale/results.json, and the model slots of the config.

    python experiments/paper_scale/from_run.py RUN_DIR COMMIT --machine TEXT [--artifacts DIR]
    python experiments/paper_scale/from_run.py --pending     # before any run: the slots, results "not yet measured"

RUN_DIR is the run folder of a pipeline run (`experiment=paper_scale`, or any GPU check of the pipeline; its
command is read from the folder): each stage's report in it gives the `stage_times` row (`seconds`, and what the
stage did: collect's impressions, SFT's steps, loss and format rate, the reward models' steps, GRPO's steps, the
evaluation's contexts and panels; the reward models' rm.json from the artifact `grpo.json` names), and
`evaluation.json` the `results` table. `--machine` names the GPU (a run folder does not). The `slots` table
compares the CPU default's model slots with `experiment=paper_scale`'s, read from the composed configs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import record  # noqa: E402

RUN = "paper_scale"
COMMAND = "python -m clicks2pref experiment=paper_scale"
RECORD = "python experiments/paper_scale/from_run.py RUN_DIR COMMIT --machine '<the GPU>'"
STAGES = ["collect", "sft", "rm", "fusion", "grpo", "evaluate"]
TIMES = ["stage", "time", "what happened"]
RESULTS = ["policy", "oracle CTR [95 % CI]", "format rate"]


def slots() -> dict:
    """The model slots and sizes of the CPU default and of experiment=paper_scale, from the composed configs."""
    import clicks2pref

    def describe(c) -> list[str]:
        rm = c.reward_model.backbone
        return [f"{c.policy.model.name}, {c.policy.model.dtype}, {c.sft.method} r={c.sft.lora.r}",
                f"{c.teacher.model.name}, {c.teacher.model.dtype}, {c.teacher.method} r={c.teacher.lora.r}"
                if c.teacher.name != "none" else "none",
                f"{rm.name}, {rm.dtype}" + (f", {rm.quantization}" if rm.quantization else "")
                + (f", LoRA r={rm.lora.r}" if rm.lora else ", full fine-tuning")
                + (", gradient checkpointing" if rm.gradient_checkpointing else ""),
                f"{c.collect.sessions_per_week:,} sessions × {c.collect.weeks} weeks, {c.collect.users_per_panel} "
                "users per panel",
                f"{c.sft.train.max_steps:,} steps × {c.sft.train.batch_size}",
                f"{c.grpo.steps} steps × {c.grpo.prompts_per_step} prompts × G={c.grpo.group_size}",
                f"`{c.trainer.accelerator}` ({c.trainer.precision})"]

    names = ["policy", "teacher", "reward models", "collect", "SFT", "GRPO", "trainer"]
    default, paper = describe(clicks2pref.compose([])), describe(clicks2pref.compose(["experiment=paper_scale"]))
    return {"columns": ["slot", "CPU default", "paper_scale"], "rows": [list(r) for r in zip(names, default, paper)]}


def stage_times(folder: Path, artifacts: Path | None) -> list[list]:
    reports = {"collect": record.read(folder, "collect.json"), "sft": record.read(folder, "sft.json"),
               "fusion": record.read(folder, "fusion_weights.json"), "grpo": record.read(folder, "grpo.json"),
               "evaluate": record.read(folder, "evaluation.json")}
    grpo = reports["grpo"]
    if grpo:
        reports["rm"] = record.read(record.artifacts_of(grpo, artifacts) / "rm" / grpo["inputs"]["rm"], "rm.json")
    rows = []
    for stage in STAGES:
        r = reports.get(stage)
        if r is None:
            continue
        if stage == "collect":
            what = f"{sum(w['impressions'] for w in r['weeks']):,} impressions, template {r['best_template']}"
        elif stage == "sft":
            t = r["train"]
            what = (f"{t['steps']} steps; val loss {t.get('val_loss_before') or float('nan'):.2f} → "
                    f"{t.get('val_loss') or float('nan'):.2f}; val format rate {t.get('val_format_rate') or 0:.2f}")
        elif stage == "rm":
            trained = ", ".join(f"{record.KINDS.get(k, k)} {s:.0f} s" for k, s in r["train_seconds"].items())
            what = f"{trained} of training"
        elif stage == "grpo":
            what = f"{r['steps']} steps in {r['train_seconds']:.0f} s"
        elif stage == "evaluate":
            what = f"{r['contexts']} test contexts × {r.get('samples_per_context')} panels"
        else:
            what = None
        rows.append([stage, r.get("seconds"), what])
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", nargs="?", type=Path)
    parser.add_argument("commit", nargs="?")
    parser.add_argument("--machine", help="the machine the run used (its GPU)")
    parser.add_argument("--artifacts", type=Path, help="the run's artifact folder, if it moved")
    parser.add_argument("--pending", action="store_true", help="write the tables before any run")
    args = parser.parse_args(argv)
    if args.pending:
        results = {"runs": {RUN: record.pending(COMMAND, RECORD, "needs the Hugging Face hub and GPUs")},
                   "values": {}, "tables": {
                       "slots": slots(),
                       "stage_times": record.table(TIMES, record.pending_rows(STAGES, TIMES), RUN),
                       "results": record.table(RESULTS, record.pending_rows(["baseline", "SFT", "GRPO"], RESULTS),
                                               RUN)}}
        record.write_results(HERE, results)
        return results
    if args.run_dir is None or args.commit is None or not args.machine:
        parser.error("RUN_DIR, COMMIT and --machine, or --pending")
    ev = record.read(args.run_dir, "evaluation.json")
    tables = {"slots": slots(),
              "stage_times": record.table(TIMES, stage_times(args.run_dir, args.artifacts), RUN, {"time": "{:,.0f} s"})}
    if ev:
        tables["results"] = record.table(RESULTS, [[r["policy"], record.ci(r), r["format_rate"]] for r in ev["rows"]],
                                         RUN, {"oracle CTR [95 % CI]": "{:.4f}", "format rate": "{:.2f}"})
    return record.update(HERE, RUN, record.provenance(args.run_dir, args.commit, args.machine), {}, tables)


if __name__ == "__main__":
    main()
