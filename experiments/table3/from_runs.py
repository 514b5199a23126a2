"""Record a Table 3 sweep (`-m experiment=table3`) into experiments/table3/results.json.

    python experiments/table3/from_runs.py SWEEP_DIR COMMIT [--machine TEXT]
    python experiments/table3/from_runs.py --pending      # the tables before any run: "not yet measured"

SWEEP_DIR is the sweep's folder (`logs/sft/multiruns/<time>/`): each job's `sft.json` gives its row (the teacher and
assembly its overrides set, full panels of the assembled contexts, training examples, the SFT policy's oracle CTR
and format rate on the held-out test contexts, and its paired difference with the prompted baseline); the baseline's
row is the jobs' shared evaluation of it. Writes the tables `rows` (what each teacher means) and `results`.
"""
from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import record  # noqa: E402

RUN = "table3"
COMMAND = "python -m clicks2pref -m experiment=table3"
RECORD = "python experiments/table3/from_runs.py SWEEP_DIR COMMIT"
TEACHERS = {"none": "none (clicks only)", "tiny": "tiny (random 2-layer)", "smollm2": "SmolLM2-135M"}
DESCRIPTION = [
    ["clicks only", "`none`", "its clicked suggestions (grouped by topic/facet over the logged weeks)"],
    ["tiny teacher", "`tiny`", "a random 2-layer Llama trained on the single clicked suggestions, its samples plus the "
                               "clicks (`keep_clicked`) — the smallest \"teacher size\" on a CPU"],
    ["distillation", "`smollm2`", "SmolLM2-135M + LoRA trained on the single clicked suggestions, its samples"]]
COLUMNS = ["teacher", "assembly", "full panels / contexts", "train examples", "SFT oracle CTR [95 % CI]", "format rate",
           "paired CTR diff vs. baseline [95 % CI]"]
FMT = {"full panels / contexts": "{:,}", "train examples": "{:,}", "SFT oracle CTR [95 % CI]": "{:.4f}",
       "format rate": "{:.3f}", "paired CTR diff vs. baseline [95 % CI]": "{:+.4f}"}
BASELINE = "prompted baseline (no SFT)"


def description() -> dict:
    return {"columns": ["row", "teacher", "what the candidates of a context are"], "rows": DESCRIPTION}


def job_row(job: dict) -> list:
    a, e = job["assembly"], job["eval"]
    return [TEACHERS.get(job["teacher"]["name"], job["teacher"]["name"]), "on" if a["enabled"] else "off",
            {"v": a["full_panels"], "note": f" / {a['contexts']:,}"}, job["train"]["data"]["train_examples"],
            record.ci(e["sft"]), e["sft"]["format_rate"],
            {"v": e["lift"]["ctr_diff"], "ci": [e["lift"]["ci_low"], e["lift"]["ci_high"]]}]


def main(argv: list[str] | None = None) -> dict:
    parser = record.parser(__doc__, "sweep_dir")
    args = parser.parse_args(argv)
    if args.pending:
        grid = record.sweep_params("table3")
        labels = [[BASELINE, "—", "—", "—"]] + [
            [TEACHERS.get(t, t), "on" if a == "true" else "off"]
            for t in grid["teacher"] for a in grid["sft.assembly.enabled"]]
        results = {"runs": {RUN: record.pending(COMMAND, RECORD)}, "values": {},
                   "tables": {"rows": description(),
                              "results": record.table(COLUMNS, record.pending_rows(labels, COLUMNS), RUN)}}
        record.write_results(HERE, results)
        return results
    if args.sweep_dir is None or args.commit is None:
        parser.error("SWEEP_DIR and COMMIT, or --pending")
    found = [job for job in map(lambda j: record.read(j, "sft.json"), record.jobs(args.sweep_dir))
             if job and job.get("eval")]
    if not found:
        raise SystemExit(f"{args.sweep_dir}: no job folder with an evaluated sft.json; run the sweep first")
    base = next((j["eval"]["baseline"] for j in found if "baseline" in j["eval"]), None)
    rows = ([[BASELINE, "—", "—", "—", record.ci(base), base["format_rate"], "—"]] if base else []) + \
        [job_row(j) for j in found]
    info = record.provenance(args.sweep_dir, args.commit, args.machine,
                             f"{found[0]['eval']['contexts']} held-out test contexts; {len(found)} jobs")
    return record.update(HERE, RUN, info, {}, {"rows": description(),
                                              "results": record.table(COLUMNS, rows, RUN, FMT)})


if __name__ == "__main__":
    main()
