"""What the recorders share: a run folder's files, config and command, its provenance, paired differences
resampled again from recorded per-context CTRs, the tables of a pipeline run and of a GRPO run, and what a recorder
writes before any run (cells that read "not yet measured", the command that makes the run and the one that records
it).

A recorder (`experiments/<folder>/from_run.py` or `from_runs.py`) reads only what the stages write: a run folder
(`logs/<task>/runs/<time>/`, or a sweep's `logs/<task>/multiruns/<time>/` with one folder per job) holds Hydra's
`.hydra/config.yaml` and `overrides.yaml` and the stage's reports (`evaluation.json`, `grpo.json`, `sft.json`,
`calibration.json`, `fusion_weights.json`); a pipeline run's reward models are read from their artifact (`rm.json`),
found through `grpo.json` (`path`, `inputs`). The commit is the recorder's argument: a run folder does not hold it.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shlex
from datetime import date
from pathlib import Path
from typing import Optional

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _tables():
    """experiments/tables.py, by path (a package named `tables` may be installed)."""
    spec = importlib.util.spec_from_file_location("experiments_tables", HERE / "tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NOT_MEASURED = _tables().NOT_MEASURED

MACHINE = "2-core CPU, fp32"
# The first user model as its tables were measured: contexts held out by (topic, facet), CIs over contexts, 24
# simulated users per logged panel (conf/simulator/v1.yaml)
V1 = ("simulator=v1", "data.split.by=context", "eval.ci_clusters=context", "sft.eval.ci_clusters=context",
      "grpo.eval.ci_clusters=context", "collect.users_per_panel=24", "serve.users_per_panel=24")
LABELS = {"baseline": "prompted baseline", "sft": "SFT", "grpo": "GRPO", "canned": "canned panel (floor, no model)",
          "ideal": "ideal panel (upper bound)"}
KINDS = {"garm": "GaRM", "btrm": "BTRM"}  # reward models


# --- a run folder ----------------------------------------------------------------------------------


def evaluation(stored: dict, cfg=None) -> dict:
    """An evaluate artifact's `evaluation.json` (per-context measurements) as the report a run folder gets: CIs,
    lifts and GSB computed by `summarize` under `cfg`'s eval settings (the default config's unless given). A run
    folder's `evaluation.json` (already a report, with `rows`) is returned as it is."""
    if "rows" in stored:
        return stored
    from hydra import compose, initialize_config_dir

    from clicks2pref.config import register_configs
    from clicks2pref.eval.results_report import summarize

    if cfg is None:
        register_configs()
        with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("config")
    return summarize(cfg, stored)


def parser(doc: str, folder: str = "run_dir") -> argparse.ArgumentParser:
    """A recorder's command line: FOLDER COMMIT [--machine M], or --pending (its tables before any run)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument(folder, nargs="?", type=Path)
    parser.add_argument("commit", nargs="?")
    parser.add_argument("--machine", default=MACHINE)
    parser.add_argument("--pending", action="store_true", help="write the tables before any run")
    return parser


def read(folder: Path, name: str) -> Optional[dict]:
    path = Path(folder) / name
    return json.loads(path.read_text()) if path.exists() else None


def config(folder: Path):
    """The run's composed config (Hydra's `.hydra/config.yaml`), unresolved; None when the folder has none."""
    from omegaconf import OmegaConf

    path = Path(folder) / ".hydra" / "config.yaml"
    return OmegaConf.load(path) if path.exists() else None


def overrides(folder: Path) -> list[str]:
    path = Path(folder) / ".hydra" / "overrides.yaml"
    return list(yaml.safe_load(path.read_text()) or []) if path.exists() else []


def command(folder: Path) -> str:
    """The command line that made the run: `python -m clicks2pref` and its overrides; a sweep's (`multirun.yaml`
    beside its jobs) with `-m` and the overrides it was given, before expansion."""
    folder = Path(folder)
    if (folder / "multirun.yaml").exists():
        task = yaml.safe_load((folder / "multirun.yaml").read_text())["hydra"]["overrides"]["task"]
        return " ".join(["python -m clicks2pref -m", *map(shlex.quote, task)])
    return " ".join(["python -m clicks2pref", *map(shlex.quote, overrides(folder))])


def jobs(sweep: Path) -> list[Path]:
    """A sweep's job folders (0, 1, ...) in job order."""
    return sorted((p for p in Path(sweep).iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def run_date(folder: Path) -> str:
    """The day the run started: its folder's name (`<YYYY-MM-DD>_<time>`), else the folder's modification day."""
    match = re.match(r"(\d{4}-\d{2}-\d{2})_", Path(folder).name)
    return match[1] if match else date.fromtimestamp(Path(folder).stat().st_mtime).isoformat()


def provenance(folder: Path, commit: str, machine: str = MACHINE, note: Optional[str] = None,
               command_line: Optional[str] = None) -> dict:
    out = {"date": run_date(folder), "commit": commit, "machine": machine,
           "command": command_line or command(folder)}
    return {**out, "note": note} if note else out


def sweep_params(experiment: str) -> dict[str, list[str]]:
    """What `conf/experiment/<experiment>.yaml` sweeps: key -> its values, in order."""
    conf = yaml.safe_load((ROOT / "conf" / "experiment" / f"{experiment}.yaml").read_text())
    params = conf["hydra"]["sweeper"]["params"]
    return {k: [v.strip() for v in str(values).split(",")] for k, values in params.items()}


def swept(folder: Path, key: str) -> Optional[str]:
    """The value a sweep job's overrides give `key` (as typed), or None."""
    for item in overrides(folder):
        name, _, value = item.partition("=")
        if name.lstrip("+~") == key:
            return value
    return None


# --- results.json --------------------------------------------------------------------------------


def load_results(folder: Path) -> dict:
    path = Path(folder) / "results.json"
    return json.loads(path.read_text()) if path.exists() else {"runs": {}, "values": {}, "tables": {}}


def write_results(folder: Path, results: dict) -> None:
    (Path(folder) / "results.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")


def update(folder: Path, run: str, info: dict, values: dict, tables: dict) -> dict:
    """results.json with `run`'s entry, values and tables replaced by these (another run's are kept), written."""
    results = load_results(folder)
    results["runs"][run] = info
    for section, new in (("values", values), ("tables", tables)):
        kept = {k: v for k, v in results.get(section, {}).items() if v.get("run") != run and k not in new}
        results[section] = {**kept, **new}
    write_results(folder, results)
    return results


def require(folder: Path, items: tuple[str, ...]) -> None:
    """Stop unless the run's overrides hold every one of `items` (a run recorded into the wrong folder is worse
    than none)."""
    missing = [i for i in items if i not in overrides(folder)]
    if missing:
        raise SystemExit(f"{folder}: its overrides lack {' '.join(missing)}: not a run of this experiment")


def pending(run_command: str, record: str, note: Optional[str] = None) -> dict:
    """A run not made yet: its date, commit and machine are empty; the command makes it, `record` records it."""
    out = {"date": None, "commit": None, "machine": None, "command": run_command, "record": record}
    return {**out, "note": note} if note else out


def pending_rows(labels: list, columns: list[str]) -> list[list]:
    """One row per label (a cell, or a list of the row's first cells), every other cell "not yet measured"."""
    rows = [list(label) if isinstance(label, (list, tuple)) else [label] for label in labels]
    return [row + [NOT_MEASURED] * (len(columns) - len(row)) for row in rows]


def table(columns: list[str], rows: list[list], run: str, fmt: Optional[dict] = None) -> dict:
    out = {"columns": columns, "rows": rows, "run": run}
    return {**out, "fmt": fmt} if fmt else out


def ci(m: dict, v: str = "oracle_ctr", low: str = "ci_low", high: str = "ci_high") -> dict:
    return {"v": m[v], "ci": [m[low], m[high]]}


def value(v: float, what: str, run: str, fmt: str, ci_: Optional[list] = None) -> dict:
    return {"v": v, **({"ci": list(ci_)} if ci_ is not None else {}), "fmt": fmt, "run": run, "what": what}


def paired(evaluation: dict, a: str, b: str, cfg):
    """a − b over the evaluation's contexts and panels (its `per_context_ctr`), with the bootstrap its own CIs use:
    the run's `eval` settings, whole topics resampled when `eval.ci_clusters=topic`."""
    import numpy as np

    from clicks2pref.eval.ctr import bootstrap_mean, split_clusters

    per_context = evaluation["per_context_ctr"]
    diff = np.asarray(per_context[a], dtype=float) - np.asarray(per_context[b], dtype=float)
    clusters = split_clusters(cfg, evaluation["split"], evaluation["contexts"])
    return bootstrap_mean(diff, int(cfg.eval.bootstrap_samples), float(cfg.eval.ci_level), int(cfg.seed), clusters)


# --- a pipeline run: its evaluation, reward models, fusion and GRPO --------------------------------

RESULTS_COLUMNS = ["policy", "oracle CTR [95 % CI]", "vs. prompted baseline, paired [95 % CI]", "GSB", "format rate",
                   "distinct-2", "mean pairwise cosine", "nearness to canned"]
RESULTS_FMT = {"oracle CTR [95 % CI]": "{:.4f}", "vs. prompted baseline, paired [95 % CI]": "{:+.4f}", "GSB": "{:+.1f}",
               "format rate": "{:.3f}", "distinct-2": "{:.3f}", "mean pairwise cosine": "{:.3f}",
               "nearness to canned": "{:.3f}"}
RESULTS_LABELS = ["prompted baseline", "SFT", "GRPO", "SFT, best of 16 by the composite reward", LABELS["canned"],
                  LABELS["ideal"]]
COMPARISON_COLUMNS = ["comparison", "panels per context", "difference [95 % CI]"]
COMPARISON_LABELS = ["GRPO − SFT, paired (evaluate)", "GRPO − SFT, the GRPO stage's own comparison",
                     "best of 16 by the composite reward − a random one of the same 16 SFT panels"]
RM_COLUMNS = ["reward model", "IID pairs", "IID pair accuracy", "IID ECE", "oracle ρ (IID week)",
              "within-panel order like the oracle", "learned examination"]
RM_FMT = {"IID pairs": "{:,}", "IID pair accuracy": "{:.3f}", "IID ECE": "{:.4f}", "oracle ρ (IID week)": "{:.3f}",
          "within-panel order like the oracle": "{:.3f}"}
FUSION_COLUMNS = ["component", "fused weight"]
MONITOR_COLUMNS = ["GRPO step", "proxy reward (probe contexts)", "oracle CTR", "sampled CTR (selection)"]


def policy_label(name: str, grpo: Optional[dict], best_of: list[dict]) -> str:
    """A row's label: GRPO with its budget; a best-of row with its n and reward."""
    if name == "grpo" and grpo:
        return f"GRPO ({grpo['policy_samples']:,} samples)"
    for b in best_of:
        if b["policy"] == name and "+bo" in name:
            base, n = name.split("+bo")
            reward = "the composite reward" if b.get("reward") == "composite" else b.get("reward")
            return f"{LABELS.get(base, base)}, best of {n} by {reward}"
    return LABELS.get(name, name)


def artifacts_of(grpo: dict, artifacts: Optional[Path] = None) -> Path:
    """The artifact folder the run's stages wrote to: `artifacts`, else the one `grpo.json` names."""
    return Path(artifacts) if artifacts else Path(grpo["path"]).parents[1]


def pipeline(folder: Path, run: str, artifacts: Optional[Path] = None) -> tuple[dict, dict]:
    """(values, tables) of a pipeline run folder: the evaluation's policies with floor and ceiling, the paired
    comparisons, the reward models (their artifact's rm.json), fusion's weights and GRPO's monitor."""
    folder = Path(folder)
    cfg, ev, grpo, fused = config(folder), read(folder, "evaluation.json"), read(folder, "grpo.json"), \
        read(folder, "fusion_weights.json")
    if ev is None or cfg is None:
        raise SystemExit(f"{folder}: no evaluation.json or .hydra/config.yaml; record the run folder of a pipeline "
                         "run that finished its evaluate stage")
    values, tables = {}, {}
    rows = {r["policy"]: r for r in ev["rows"]}
    best_of = ev.get("best_of") or []
    samples, reference = ev.get("samples_per_context"), ev.get("reference", "baseline")
    if reference != "baseline":
        raise SystemExit(f"{folder}: the evaluation compares against {reference}; record the pipeline's (baseline)")
    tables["results"] = table(RESULTS_COLUMNS, [
        [policy_label(n, grpo, best_of), ci(r), None if n == reference else
         {"v": r["oracle_ctr"] - rows[reference]["oracle_ctr"], "ci": [r["diff_ci_low"], r["diff_ci_high"]]},
         r["gsb"], r["format_rate"], r["distinct_2"], r["mean_cosine"], r["canned_cosine"]]
        for n, r in rows.items()], run, RESULTS_FMT)
    where = f"{ev['contexts']} test contexts, {samples} panels each"
    sft = rows["sft"]
    values["sft_ctr"] = value(sft["oracle_ctr"], f"SFT oracle CTR, {where}", run, "{:.4f}",
                              [sft["ci_low"], sft["ci_high"]])
    values["sft_minus_baseline"] = value(sft["oracle_ctr"] - rows["baseline"]["oracle_ctr"],
                                         f"SFT − prompted baseline, paired over {where}", run, "{:+.4f}",
                                         [sft["diff_ci_low"], sft["diff_ci_high"]])
    if "canned" in rows:
        values["sft_minus_canned"] = value(sft["oracle_ctr"] - rows["canned"]["oracle_ctr"],
                                           "SFT − canned panel, oracle CTR on the same contexts", run, "{:+.4f}")
    if "ideal" in rows:
        values["ideal_over_sft"] = value(rows["ideal"]["oracle_ctr"] / sft["oracle_ctr"], "ideal panel / SFT",
                                         run, "{:.2f}×")
    comparisons = []
    if "grpo" in rows:
        est = paired(ev, "grpo", "sft", cfg)
        values["grpo_minus_sft"] = value(est.mean, f"GRPO − SFT, paired over {where} (evaluate)", run, "{:+.4f}",
                                         [est.low, est.high])
        values["grpo_minus_sft_canned_cosine"] = value(
            rows["grpo"]["canned_cosine"] - sft["canned_cosine"], "GRPO − SFT: mean largest cosine of a suggestion "
            "to the canned panel (positive: nearer the floor)", run, "{:+.3f}")
        comparisons.append(["GRPO − SFT, paired (evaluate)", samples, {"ref": "grpo_minus_sft"}])
    if grpo:
        lift = grpo["eval"]["lift"]
        comparisons.append(["GRPO − SFT, the GRPO stage's own comparison", cfg.grpo.eval.samples_per_context,
                            {"v": lift["ctr_diff"], "ci": [lift["ci_low"], lift["ci_high"]]}])
    for b in best_of:
        if b["policy"] == "sft+bo16" and b.get("reward") == "composite":
            values["best_of_16_composite"] = value(b["vs_policy"], "best-of-16 by the composite reward − a random "
                                                   "one of the same 16 SFT panels, paired", run, "{:+.4f}",
                                                   [b["vs_ci_low"], b["vs_ci_high"]])
            values["composite_rho"] = value(b["reward_spearman"], "within-context Spearman ρ of the composite "
                                            "reward with the oracle over SFT's 16 samples", run, "{:.3f}")
            comparisons.append([COMPARISON_LABELS[2], samples, {"ref": "best_of_16_composite"}])
    tables["comparisons"] = table(COMPARISON_COLUMNS, comparisons, run, {"panels per context": "{:d}",
                                                                         "difference [95 % CI]": "{:+.4f}"})
    if grpo:
        rm = read(artifacts_of(grpo, artifacts) / "rm" / grpo["inputs"]["rm"], "rm.json")
        if rm:
            values["garm_oracle_rho"] = value(rm["metrics"]["garm"]["iid"]["oracle_spearman"], "GaRM's Spearman ρ "
                                              "with the oracle's per-suggestion click probability, IID week", run,
                                              "{:.3f}")
            tables["reward_models"] = table(RM_COLUMNS, [rm_row(kind, m["iid"], rm.get("examination", {}).get(kind))
                                                         for kind, m in rm["metrics"].items()], run, RM_FMT)
        tables["monitor"] = table(MONITOR_COLUMNS, monitor_rows(grpo), run, {c: "{:.3f}" for c in MONITOR_COLUMNS[1:]})
    if fused:
        tables["fusion"] = table(FUSION_COLUMNS, [
            [f"GaRM (κ {fused['kappa']:g})" if c == "garm" else c, fused["weights"].get(c, 0.0)]
            for c in sorted(fused["weights"], key=lambda c: -fused["weights"][c])], run, {"fused weight": "{:.3f}"})
    return values, tables


def rm_row(kind: str, iid: dict, examination: Optional[list]) -> list:
    exam = ", ".join(f"{e:.3f}" for e in examination) if examination else None
    return [KINDS.get(kind, kind), iid.get("n_pairs"), iid.get("accuracy"), iid.get("ece"), iid.get("oracle_spearman"),
            iid.get("oracle_within_panel"), exam]


def monitor_rows(grpo: dict) -> list[list]:
    """One row per monitor evaluation: proxy reward, oracle CTR and sampled CTR; the kept step's sampled CTR bold."""
    proxy = {h["step"]: h for h in grpo["monitor"].get("history", [])}
    selected = grpo.get("selected") or {}
    sampled = {e["step"]: e for e in selected.get("evaluations", [])}
    rows = []
    for step in sorted({*proxy, *sampled}):
        s = sampled.get(step, {}).get("sampled_ctr")
        oracle = proxy.get(step, sampled.get(step, {})).get("oracle_ctr")
        kept = s is not None and step == selected.get("step")
        rows.append([str(step), proxy.get(step, {}).get("proxy"), oracle, {"v": s, "bold": True} if kept else s])
    return rows


def pipeline_pending(run: str) -> dict:
    """The tables `pipeline` writes, before any run."""
    return {"results": table(RESULTS_COLUMNS, pending_rows(RESULTS_LABELS, RESULTS_COLUMNS), run),
            "comparisons": table(COMPARISON_COLUMNS, pending_rows(COMPARISON_LABELS, COMPARISON_COLUMNS), run),
            "reward_models": table(RM_COLUMNS, pending_rows(list(KINDS.values()), RM_COLUMNS), run),
            "fusion": table(FUSION_COLUMNS, pending_rows(["each component of `rewards`"], FUSION_COLUMNS), run),
            "monitor": table(MONITOR_COLUMNS, pending_rows(["each monitor evaluation"], MONITOR_COLUMNS), run)}


# --- a GRPO run: the stage's own comparison with SFT and its checkpoints --------------------------

LIFT_COLUMNS = ["GRPO policy samples", "GRPO − SFT, paired [95 % CI]", "GSB", "good / same / bad contexts",
                "kept step", "hacking flag"]
POLICY_COLUMNS = ["policy", "oracle CTR [95 % CI]", "format rate", "distinct-2", "mean pairwise cosine"]
POLICY_FMT = {"oracle CTR [95 % CI]": "{:.4f}", "format rate": "{:.3f}", "distinct-2": "{:.3f}",
              "mean pairwise cosine": "{:.3f}"}


def grpo_run(folder: Path, run: str, name: str = "grpo_minus_sft") -> tuple[dict, dict]:
    """(values, tables) of a run folder's grpo.json: the lift over SFT, both policies, the monitor's evaluations."""
    grpo = read(folder, "grpo.json")
    if grpo is None:
        raise SystemExit(f"{folder}: no grpo.json; record the run folder of a stage=grpo (or pipeline) run")
    e = grpo["eval"]
    lift, g, samples = e["lift"], e["gsb"], grpo["policy_samples"]
    values = {name: value(lift["ctr_diff"], f"GRPO ({samples:,} samples, kept step "
                          f"{(grpo.get('selected') or {}).get('step')}) − SFT, paired over {e['contexts']} test "
                          "contexts (the GRPO stage's comparison)", run, "{:+.4f}", [lift["ci_low"], lift["ci_high"]])}
    tables = {
        "lift": table(LIFT_COLUMNS, [[samples, {"ref": name}, g["gsb"], f"{g['good']} / {g['same']} / {g['bad']}",
                                      (grpo.get("selected") or {}).get("step"),
                                      "yes" if grpo["monitor"]["flagged"] else "no"]],
                      run, {"GRPO policy samples": "{:,}", "GSB": "{:+.1f}", "kept step": "{:d}"}),
        "policies": table(POLICY_COLUMNS, [[label, ci(e[p]), e[p]["format_rate"], e[p]["distinct_2"],
                                            e[p]["mean_pairwise_cosine"]]
                                           for p, label in (("sft", "SFT"), ("grpo", f"GRPO, {samples:,} samples"))],
                          run, POLICY_FMT),
        "checkpoints": table(MONITOR_COLUMNS, monitor_rows(grpo), run, {c: "{:.3f}" for c in MONITOR_COLUMNS[1:]})}
    return values, tables


def grpo_pending(run: str) -> dict:
    return {"lift": table(LIFT_COLUMNS, pending_rows([NOT_MEASURED], LIFT_COLUMNS), run),
            "policies": table(POLICY_COLUMNS, pending_rows(["SFT", "GRPO"], POLICY_COLUMNS), run),
            "checkpoints": table(MONITOR_COLUMNS, pending_rows(["each monitor evaluation"], MONITOR_COLUMNS), run)}
