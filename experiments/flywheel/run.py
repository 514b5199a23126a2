"""The data flywheel: R rounds of log → retrain the reward → GRPO, one table row per round.

Round 1 is the pipeline on collect's logs (weeks 1–4 of the prompted policy; stage serve logs its SFT
policy for the reward models and fusion). Its GRPO policy is then logged for a week (`grpo.rl_logs`, panels
in random order; the driver numbers that week 4 + round), and round r + 1 trains SFT, the reward models and
fusion on every log so far (the new weeks join the training weeks; week 4 stays the reward models' IID
test) before running GRPO again from its SFT policy. Each round's row is its GRPO stage's own held-out
comparison with that round's SFT policy (oracle CTR, paired 95 % CI) and the reward models' oracle ρ, and
(`--eval-samples` k > 0) stage evaluate's powered comparison of the two: k panels per test context, paired CI
over contexts. Nothing is chosen on the oracle.

    python experiments/flywheel/run.py --rounds 2 [extra overrides...]
    python experiments/flywheel/run.py --rounds 2 experiment=smoke     # minutes, not hours

Writes `flywheel.md`, `flywheel.json` and `run.json` (the command and the overrides every round got) in `--out`
(default logs/flywheel/<time>/); `experiments/flywheel/from_run.py` records them.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import clicks2pref
from clicks2pref.data.io import load_impressions, write_impressions

COLUMNS = ("round", "weeks", "garm_iid_oracle_rho", "sft_ctr", "grpo_ctr", "grpo_vs_sft", "ci_low", "ci_high", "gsb")
POWERED = ("eval_sft_ctr", "eval_grpo_ctr", "eval_grpo_vs_sft", "eval_ci_low", "eval_ci_high", "eval_gsb",
           "eval_bo_gain", "eval_reward_rho")


def eval_overrides(samples: int) -> list[str]:
    """Stage evaluate comparing the round's GRPO policy with its SFT policy on `samples` panels per context,
    and the round's GaRM picking the best of the SFT policy's `samples` (its gain, and its within-context ρ)."""
    return ["eval.policies=[sft,grpo]", "eval.reference=sft", f"eval.samples_per_context={samples}",
            f"eval.best_of.n={samples}", "eval.best_of.policies=[sft]", "eval.calibration=false"]


def round_overrides(extra: list[str], logs: Path | None, new_weeks: list[int]) -> list[str]:
    """A round's config: all logs so far (round 1: collect's) and the fed-back weeks among the train weeks."""
    if logs is None:
        return list(extra)
    return [*extra, f"data.logs={logs}/*.jsonl",
            f"reward_model.pairs.train_weeks=[1,2,3,{','.join(map(str, new_weeks))}]"]


def gather_logs(folder: Path, collected: list[Path], fed_back: dict[int, Path]) -> None:
    """One folder of every log so far: links to collect's weeks, and each round's RL week renumbered."""
    folder.mkdir(parents=True, exist_ok=True)
    for src in [*collected, collected[0].parent / "templates.json"]:  # templates.json names the served template
        (folder / src.name).symlink_to(src.resolve())
    for week, src in fed_back.items():
        records = [dict(r, week=week) for r in load_impressions(str(src))]
        write_impressions(records, folder / f"week{week}.jsonl")


def row(r: int, n_logs: int, rm: dict, grpo: dict, evaluated: dict | None = None) -> dict:
    ev = grpo["eval"]
    garm = rm["metrics"].get("garm", {}).get("iid", {})
    out = {"round": r, "weeks": n_logs, "garm_iid_oracle_rho": garm.get("oracle_spearman"),
           "sft_ctr": ev["sft"]["oracle_ctr"], "grpo_ctr": ev["grpo"]["oracle_ctr"],
           "grpo_vs_sft": ev["lift"]["ctr_diff"], "ci_low": ev["lift"]["ci_low"], "ci_high": ev["lift"]["ci_high"],
           "gsb": ev["gsb"]["gsb"]}
    if evaluated:
        by = {x["policy"]: x for x in evaluated["rows"]}
        sft, rl = by["sft"], by["grpo"]
        out.update(eval_sft_ctr=sft["oracle_ctr"], eval_grpo_ctr=rl["oracle_ctr"],
                   eval_grpo_vs_sft=rl["oracle_ctr"] - sft["oracle_ctr"], eval_ci_low=rl["diff_ci_low"],
                   eval_ci_high=rl["diff_ci_high"], eval_gsb=rl["gsb"])
        best = evaluated.get("best_of") or [{}]
        out.update(eval_bo_gain=best[0].get("vs_policy"), eval_reward_rho=best[0].get("reward_spearman"))
    return out


def markdown(rows: list[dict]) -> str:
    signed = {"grpo_vs_sft", "ci_low", "ci_high", "gsb", "eval_grpo_vs_sft", "eval_ci_low", "eval_ci_high", "eval_gsb",
              "eval_bo_gain"}
    columns = COLUMNS + tuple(c for c in POWERED if rows and c in rows[0])

    def fmt(column, v):
        if not isinstance(v, float):
            return str(v)
        return f"{v:+.4f}" if column in signed else f"{v:.4f}"

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(fmt(c, r[c]) for c in columns) + " |" for r in rows]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--eval-samples", type=int, default=16,
                        help="panels per test context of each round's powered SFT-vs-GRPO evaluation; 0 = off")
    parser.add_argument("--out", type=Path, default=Path("logs/flywheel") / time.strftime("%Y-%m-%d_%H-%M-%S"))
    args, extra = parser.parse_known_args()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "run.json").write_text(json.dumps({
        "command": " ".join(["python experiments/flywheel/run.py", *map(shlex.quote, sys.argv[1:])]),
        "rounds": args.rounds, "eval_samples": args.eval_samples, "overrides": extra}, indent=2))
    rows, logs_dir, collected, fed_back = [], None, [], {}
    for r in range(1, args.rounds + 1):
        overrides = round_overrides(extra, logs_dir, list(fed_back))
        results = {}
        for stage in ("rm", "grpo"):  # grpo runs (or reuses) collect, sft and fusion first
            cfg = clicks2pref.compose([*overrides, f"stage={stage}"], output_dir=args.out / f"round{r}" / stage)
            results[stage] = clicks2pref.run(cfg)
        if not collected:  # round 1's logs: collect's weeks
            cfg = clicks2pref.compose([*overrides, "stage=collect"], output_dir=args.out / "round1" / "collect")
            collected = sorted(Path(clicks2pref.run(cfg)["logs"]).parent.glob("week*.jsonl"))
        if args.eval_samples > 0:
            cfg = clicks2pref.compose([*overrides, "stage=evaluate", *eval_overrides(args.eval_samples)],
                                      output_dir=args.out / f"round{r}" / "evaluate")
            results["evaluate"] = clicks2pref.run(cfg)
        rows.append(row(r, len(collected) + len(fed_back), results["rm"], results["grpo"], results.get("evaluate")))
        print(markdown(rows))
        if r < args.rounds:
            rl = results["grpo"].get("rl_logs")
            if not rl:
                raise SystemExit("the GRPO stage wrote no RL logs (grpo.rl_logs.enabled=false?): nothing to feed back")
            fed_back[4 + r] = Path(rl)
            logs_dir = args.out / f"round{r + 1}" / "logs"
            gather_logs(logs_dir, collected, fed_back)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "flywheel.json").write_text(json.dumps(rows, indent=2))
    (args.out / "flywheel.md").write_text(markdown(rows))
    print(f"flywheel -> {args.out / 'flywheel.md'}")


if __name__ == "__main__":
    main()
