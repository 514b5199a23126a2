"""Record the default run on the first user model (v1) into experiments/default_run/results.json.

    python experiments/default_run/from_run.py RUN_DIR COMMIT [--artifacts DIR] [--machine TEXT]
    python experiments/default_run/from_run.py --pending      # the tables before any run: "not yet measured"

RUN_DIR is the run folder (`logs/pipeline/runs/<time>/`) of the pipeline on v1 (COMMAND below): its
`evaluation.json` (every policy with the floor and the ceiling, best-of-16), `grpo.json` (the stage's own comparison
and the monitor), `fusion_weights.json`, and the reward models' `rm.json` in the artifact `grpo.json` names
(`--artifacts` if the folder moved). Writes the tables `results`, `comparisons`, `reward_models`, `fusion` and
`monitor`, and the values the README's claims table cites in its v1 column.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import record  # noqa: E402

RUN = "v1_default"
COMMAND = "python -m clicks2pref " + " ".join(record.V1)
RECORD = "python experiments/default_run/from_run.py RUN_DIR COMMIT"


def main(argv: list[str] | None = None) -> dict:
    parser = record.parser(__doc__)
    parser.add_argument("--artifacts", type=Path, help="the run's artifact folder, if it moved")
    args = parser.parse_args(argv)
    if args.pending:
        results = {"runs": {RUN: record.pending(COMMAND, RECORD, "the first user model: contexts held out by "
                                                "(topic, facet), CIs over contexts")},
                   "values": {}, "tables": record.pipeline_pending(RUN)}
    else:
        if args.run_dir is None or args.commit is None:
            parser.error("RUN_DIR and COMMIT, or --pending")
        record.require(args.run_dir, record.V1)
        values, tables = record.pipeline(args.run_dir, RUN, args.artifacts)
        return record.update(HERE, RUN, record.provenance(args.run_dir, args.commit, args.machine), values, tables)
    record.write_results(HERE, results)
    return results


if __name__ == "__main__":
    main()
