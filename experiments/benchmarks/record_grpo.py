"""Record `grpo_step.py` runs (their `--json` output, saved to files) into results.json.

    python experiments/grpo_step.py --base-tree /tmp/grpo-base ... --json > base.jsonl
    python experiments/grpo_step.py --json > trl.jsonl
    python experiments/benchmarks/record_grpo.py RUN --base base.jsonl "COMMAND" [--trl trl.jsonl "COMMAND"]
        [--commit C] [--note TEXT]

Writes the run (date, commit, machine, commands), the table `grpo_step_vs_base` (each side's median step,
its rate and peak RSS, the speed-up), and the values `grpo_step_speedup_vs_base` and, with `--trl`,
`grpo_step_ratio_vs_trl`. Render with `python experiments/tables.py`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import record  # noqa: E402
from click_sampling import dumps  # noqa: E402  (this folder's results.json layout)


def lines(path: str) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.startswith("{")]


def settings_text(s: dict) -> str:
    rm = ", GaRM + BTRM (LoRA, merged at load on ours)" if s.get("reward_models") else ""
    return (f"{s['prompts_per_step']} prompts × G={s['group_size']}, {s['max_completion_length']} tokens, micro-batch "
            f"{s.get('micro_batch_size')}, μ={s.get('num_iterations', 1)}{rm}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--base", nargs=2, metavar=("FILE", "COMMAND"), required=True)
    ap.add_argument("--trl", nargs=2, metavar=("FILE", "COMMAND"), default=None)
    ap.add_argument("--commit", default=None, help="default: HEAD")
    ap.add_argument("--machine", default="2-core CPU")
    ap.add_argument("--note", default=None)
    args = ap.parse_args()
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                           cwd=HERE).stdout.strip()
    sides = [x for x in lines(args.base[0]) if "side" in x]  # the processes that finished, in order
    work = settings_text(sides[-1]["settings"])
    base_commit = next(x["code"] for x in sides if x["side"] == "base")
    n = sides[-1]["settings"]["prompts_per_step"] * sides[-1]["settings"]["group_size"]
    med = {k: statistics.median([s for x in sides if x["side"] == k for s in x["seconds"]]) for k in ("base", "ours")}
    rate = {k: n / v for k, v in med.items()}
    rss = {k: max(x["peak_rss_mb"] for x in sides if x["side"] == k) for k in med}
    values = {"grpo_step_speedup_vs_base": record.value(
        med["base"] / med["ours"], f"GRPO step at rl_scale settings, median seconds at {base_commit} over ours "
        f"({work}), {len(sides)} alternating processes", args.run, "{:.2f}×")}
    rows = [[f"`GRPOModule` at {base_commit}", work, med["base"], rate["base"], rss["base"], None],
            ["`GRPOModule` now", work, med["ours"], rate["ours"], rss["ours"],
             {"ref": "grpo_step_speedup_vs_base", "bold": True}]]
    commands = {"command": args.base[1]}
    if args.trl:
        trl = {x["side"]: x for x in lines(args.trl[0]) if "side" in x}
        ratio = trl["ours"]["rate"] / trl["trl"]["rate"]
        twork = settings_text(trl["ours"]["settings"])
        values["grpo_step_ratio_vs_trl"] = record.value(
            ratio, f"GRPO step, ours over TRL's GRPOTrainer in completions/s ({twork}, question reward)",
            args.run, "{:.2f}×")
        rows += [["`trl.GRPOTrainer`", twork, trl["trl"]["median_seconds"], trl["trl"]["rate"],
                  trl["trl"]["peak_rss_mb"], None],
                 ["`GRPOModule` now", twork, trl["ours"]["median_seconds"], trl["ours"]["rate"],
                  trl["ours"]["peak_rss_mb"], {"ref": "grpo_step_ratio_vs_trl", "bold": True}]]
        commands["command"] += "; " + args.trl[1]
    info = {"date": date.today().isoformat(), "commit": commit, "machine": args.machine, **commands}
    if args.note:
        info["note"] = args.note
    table = record.table(["side", "settings", "s per step", "completions/s", "peak RSS, MB", "ratio"], rows,
                         args.run, {"s per step": "{:.1f}", "completions/s": "{:.2f}", "peak RSS, MB": "{:,.0f}"})
    results = record.load_results(HERE)
    results["runs"][args.run] = info
    results["values"].update(values)
    results["tables"]["grpo_step_vs_base"] = table
    (HERE / "results.json").write_text(dumps(results))
    print(f"recorded {args.run} into {HERE / 'results.json'}; render with python experiments/tables.py",
          file=sys.stderr)


if __name__ == "__main__":
    main()
