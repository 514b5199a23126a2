"""Re-score a pipeline run's panels under every user model of user_models.yaml; record experiments/sensitivity.

    python experiments/sensitivity/from_run.py RUN_DIR COMMIT [--artifacts DIR] [--machine TEXT]
    python experiments/sensitivity/from_run.py --pending     # the tables before any run: "not yet measured"

RUN_DIR is the run folder of a finished pipeline run (`make run`); its artifacts (the evaluate stage's
`evaluation.json` and the evaluation cache `artifacts/eval/`, which keeps every sampled panel) are found through
its `grpo.json`, or `--artifacts`. Nothing is generated or trained: each user model is the run's config with the
model's overrides (`clicks2pref.eval.sensitivity`), its oracle scores the stored panels and its own canned and
ideal panels. Writes the tables `user_models` (CTR per row and the canned panel's share of the ideal) and
`claims` (each claim's paired difference with its topic-resampled CI, and its verdict), and one value per claim:
on how many user models it holds.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import record  # noqa: E402

RUN = "sensitivity"
COMMAND = "make run"
RECORD = "python experiments/sensitivity/from_run.py RUN_DIR COMMIT"
USER_MODELS = HERE / "user_models.yaml"
ROWS = (("baseline", "prompted baseline"), ("sft", "SFT"), ("grpo", "GRPO"), ("best_of", "SFT, best of n"),
        ("canned", "canned panel"), ("ideal", "ideal panel"))
CLAIM_LABELS = {"sft_over_canned": "SFT − canned", "best_of_over_random": "best of n − a random SFT panel",
                "sft_over_baseline": "SFT − prompted baseline", "grpo_over_sft": "GRPO − SFT"}
MODEL_COLUMNS = ["user model", "canned / ideal", *(label for _, label in ROWS)]
CLAIM_COLUMNS = ["user model", *CLAIM_LABELS.values()]


def user_models() -> dict[str, list[str]]:
    return {name: list(overrides or []) for name, overrides in yaml.safe_load(USER_MODELS.read_text()).items()}


def stored_evaluation(artifacts: Path, report: dict) -> dict:
    """The evaluate artifact (per-context measurements) of the run whose report is `report`: the one with its
    policies, the newest if several."""
    found = sorted((artifacts / "evaluate").glob("*/evaluation.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for path in found:
        stored = json.loads(path.read_text())
        if "policies" not in report or stored.get("policies") == report["policies"]:
            return stored
    raise SystemExit(f"no evaluate artifact under {artifacts / 'evaluate'} holds this run's policies")


def scored(run_dir: Path, artifacts: Path) -> tuple[dict, dict]:
    """(values, tables): every user model's rows and claim verdicts."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from clicks2pref.config import register_configs
    from clicks2pref.data.simulator.click_model import ClickSimulator, build_simulator
    from clicks2pref.eval.sensitivity import CLAIMS, rescore, stored_panels, verdicts

    stored = stored_evaluation(artifacts, record.read(run_dir, "evaluation.json") or {})
    register_configs()
    base = record.overrides(run_dir)
    contexts = [tuple(c) for c in stored["results"]["sft"]["contexts"]]
    shared, panels = None, None
    model_rows, claim_rows, holds = [], [], {name: 0 for name, _, _ in CLAIMS}
    models = user_models()
    for name, overrides in models.items():
        start = time.time()
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(record.ROOT / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=[*base, *overrides])
        sim_cfg = OmegaConf.to_object(cfg.simulator)
        if shared is None or (sim_cfg.similarity, sim_cfg.embedder) != shared[0]:
            sim = build_simulator(sim_cfg)
            shared = ((sim_cfg.similarity, sim_cfg.embedder), sim.sim)
        else:  # the same similarity: its embedding cache carries over
            sim = ClickSimulator(sim_cfg, shared[1])
        if panels is None:
            panels = stored_panels(artifacts, stored, len(sim_cfg.examination))
        rows = rescore(sim, contexts, panels, list(cfg.eval.reference_panels.canned))
        topics = [t for t, _ in contexts] if cfg.eval.ci_clusters == "topic" else None
        found = verdicts(rows, topics, int(cfg.eval.bootstrap_samples), float(cfg.eval.ci_level), int(cfg.seed))
        ratio = float(rows["canned"].mean() / rows["ideal"].mean())
        model_rows.append([name, ratio, *(float(rows[r].mean()) if r in rows else None for r, _ in ROWS)])
        claim_rows.append([name, *({"v": v.diff, "ci": [v.low, v.high], "note": f" {v.word}"} if (v := found.get(c))
                                   else None for c in CLAIM_LABELS)])
        for c, v in found.items():
            holds[c] += v.word == "holds"
        print(f"{name}: canned/ideal {ratio:.2f}; " + "; ".join(f"{c} {v.diff:+.4f} [{v.low:+.4f}, {v.high:+.4f}] "
                                                               f"{v.word}" for c, v in found.items())
              + f" ({time.time() - start:.0f}s)", flush=True)
    n = len(models)
    values = {f"{c}_holds": record.value(f"holds on {k} of {n}", f"{CLAIM_LABELS[c]}: user models on which the CI "
                                         "is above 0", RUN, "{:s}") for c, k in holds.items()}
    values["canned_over_ideal_range"] = record.value(
        f"{min(r[1] for r in model_rows):.2f}–{max(r[1] for r in model_rows):.2f}",
        "the canned panel's share of the ideal across the user models", RUN, "{:s}")
    fmt = {c: "{:.4f}" for c in MODEL_COLUMNS[2:]}
    tables = {"user_models": record.table(MODEL_COLUMNS, model_rows, RUN, {"canned / ideal": "{:.2f}", **fmt}),
              "claims": record.table(CLAIM_COLUMNS, claim_rows, RUN, {c: "{:+.4f}" for c in CLAIM_COLUMNS[1:]})}
    return values, tables


def main(argv: list[str] | None = None) -> dict:
    parser = record.parser(__doc__)
    parser.add_argument("--artifacts", type=Path, help="the run's artifact folder, if it moved")
    args = parser.parse_args(argv)
    if args.pending:
        names = list(user_models())
        results = {"runs": {RUN: record.pending(COMMAND, RECORD, "re-scored under each user model, no training")},
                   "values": {},
                   "tables": {name: record.table(columns, record.pending_rows(names, columns), RUN)
                              for name, columns in (("user_models", MODEL_COLUMNS), ("claims", CLAIM_COLUMNS))}}
        record.write_results(HERE, results)
        return results
    if args.run_dir is None or args.commit is None:
        parser.error("RUN_DIR and COMMIT, or --pending")
    grpo = record.read(args.run_dir, "grpo.json")
    if grpo is None and args.artifacts is None:
        raise SystemExit(f"{args.run_dir}: no grpo.json; give the run's artifact folder with --artifacts")
    artifacts = record.artifacts_of(grpo or {}, args.artifacts)
    values, tables = scored(args.run_dir, artifacts)
    note = f"the run's panels re-scored under {len(user_models())} user models (user_models.yaml); nothing retrained"
    return record.update(HERE, RUN, record.provenance(args.run_dir, args.commit, args.machine, note), values, tables)


if __name__ == "__main__":
    main()
