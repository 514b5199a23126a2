"""Record GRPO at `experiment=rl_scale` on the first user model (v1) into experiments/rl_scale/results.json.

    python experiments/rl_scale/from_run.py RUN_DIR COMMIT [--machine TEXT]
    python experiments/rl_scale/from_run.py --pending     # the tables before any run: "not yet measured"

RUN_DIR is the run folder of COMMAND below (GRPO alone, on the artifacts of the v1 default run,
`experiments/default_run/`; the whole pipeline at `experiment=rl_scale` writes the same `grpo.json`). Its `grpo.json`
gives the tables `lift` (the stage's own paired comparison with SFT, 16 panels per test context, GSB and the kept
step), `policies` and `checkpoints` (the monitor's evaluations: proxy reward, oracle and sampled CTR), and the value
the README's claims table cites in its v1 column. The contextual model's run is recorded in experiments/contextual/.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import record  # noqa: E402

RUN = "v1_rl_scale"
OVERRIDES = ("experiment=rl_scale", "stage=grpo", "grpo.rl_logs.enabled=false", *record.V1)
COMMAND = "python -m clicks2pref " + " ".join(OVERRIDES)
RECORD = "python experiments/rl_scale/from_run.py RUN_DIR COMMIT"


def main(argv: list[str] | None = None) -> dict:
    parser = record.parser(__doc__)
    args = parser.parse_args(argv)
    if args.pending:
        results = {"runs": {RUN: record.pending(COMMAND, RECORD, "on the artifacts of the v1 default run")},
                   "values": {}, "tables": record.grpo_pending(RUN)}
        record.write_results(HERE, results)
        return results
    if args.run_dir is None or args.commit is None:
        parser.error("RUN_DIR and COMMIT, or --pending")
    record.require(args.run_dir, ("experiment=rl_scale", *record.V1))
    values, tables = record.grpo_run(args.run_dir, RUN)
    return record.update(HERE, RUN, record.provenance(args.run_dir, args.commit, args.machine), values, tables)


if __name__ == "__main__":
    main()
