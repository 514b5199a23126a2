"""Record population B's runs into experiments/population_b/results.json.

    python experiments/population_b/from_run.py RUN_DIR COMMIT [--artifacts DIR] [--machine TEXT]
    python experiments/population_b/from_run.py --more-rl GRPO_RUN_DIR COMMIT [--machine TEXT]
    python experiments/population_b/from_run.py --pending     # the tables before any run: "not yet measured"

RUN_DIR is the run folder of `python -m clicks2pref experiment=population_b` (the pipeline, whose evaluation has
the floor, the ceiling and best-of-16): the tables `results`, `comparisons`, `reward_models`, `fusion` and
`monitor`, as `experiments/default_run/from_run.py` writes them. GRPO_RUN_DIR is the run folder of GRPO with more
samples on the same artifacts (MORE_RL below): its `grpo.json` gives `more_rl_lift`, `more_rl_policies` and
`more_rl_checkpoints`. Both write the values the README's claims table cites in its population B column.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import record  # noqa: E402

RUN, MORE_RL_RUN = "population_b", "population_b_more_rl"
COMMAND = "python -m clicks2pref experiment=population_b"
MORE_RL = "python -m clicks2pref 'experiment=[population_b,rl_scale]' stage=grpo grpo.rl_logs.enabled=false"
RECORD = "python experiments/population_b/from_run.py RUN_DIR COMMIT"
RECORD_MORE_RL = "python experiments/population_b/from_run.py --more-rl GRPO_RUN_DIR COMMIT"


def more_rl(folder: Path) -> tuple[dict, dict]:
    values, tables = record.grpo_run(folder, MORE_RL_RUN, "grpo_minus_sft_more_rl")
    return values, {f"more_rl_{name}": t for name, t in tables.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = record.parser(__doc__)
    parser.add_argument("--more-rl", action="store_true", help="RUN_DIR is the GRPO run with more samples")
    parser.add_argument("--artifacts", type=Path, help="the run's artifact folder, if it moved")
    args = parser.parse_args(argv)
    if args.pending:
        results = {"runs": {RUN: record.pending(COMMAND, RECORD),
                            MORE_RL_RUN: record.pending(MORE_RL, RECORD_MORE_RL, "on the artifacts of the run above")},
                   "values": {},
                   "tables": {**record.pipeline_pending(RUN),
                              **{f"more_rl_{n}": t for n, t in record.grpo_pending(MORE_RL_RUN).items()}}}
        record.write_results(HERE, results)
        return results
    if args.run_dir is None or args.commit is None:
        parser.error("RUN_DIR and COMMIT, or --pending")
    if args.more_rl:
        record.require(args.run_dir, ("experiment=[population_b,rl_scale]",))
        (values, tables), run = more_rl(args.run_dir), MORE_RL_RUN
    else:
        record.require(args.run_dir, ("experiment=population_b",))
        (values, tables), run = record.pipeline(args.run_dir, RUN, args.artifacts), RUN
    return record.update(HERE, run, record.provenance(args.run_dir, args.commit, args.machine), values, tables)


if __name__ == "__main__":
    main()
