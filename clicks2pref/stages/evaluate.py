"""Stage 6 (evaluation): policies side by side on held-out contexts, scored by the oracle.

For each policy (the prompted baseline, SFT, GRPO, or any saved model folder): oracle CTR with a
bootstrap CI, the paired lift and GSB against the reference policy, the format pass rate and
diversity; plus the reward models' calibration report. Upstream stages run (or are reused from the
artifact cache) as needed, so `stage=evaluate` alone reproduces the paper's comparison.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

import numpy as np

from clicks2pref.data.io import atomic_write_text, expand_sources, load_impressions, read_cached_json, read_jsonl
from clicks2pref.data.parsing import parse_suggestions
from clicks2pref.data.pairs import build_pairs
from clicks2pref.data.offline_mode import log_split, uses_simulator
from clicks2pref.data.simulator import build_simulator
from clicks2pref.errors import ClickLogError, Clicks2PrefError, ConfigError, ModelNotFoundError
from clicks2pref.eval.best_of import best_of_n
from clicks2pref.eval.calibration_report import calibrate, markdown_report, reference_ppl, write_report
from clicks2pref.eval.offline import BASIS, build_estimators
from clicks2pref.eval.offline_report import COLUMNS as OFFLINE_COLUMNS
from clicks2pref.eval.offline_report import ab_section, beside_oracle, evaluate_offline
from clicks2pref.eval.offline_report import markdown_report as offline_markdown
from clicks2pref.eval.heldout import heldout_contexts, markdown_table, paired, score_policy
from clicks2pref.eval.policy import baseline_id
from clicks2pref.eval.reference_panels import nearness_to_canned, score_reference_panels
from clicks2pref.loggers import log_metrics, log_table
from clicks2pref.manifest import verify_given
from clicks2pref.models.registry import load_causal_lm
from clicks2pref.models.reward_heads import load_reward_model
from clicks2pref.rewards.base import RewardBatch, RewardResources
from clicks2pref.rewards.composite import build_component
from clicks2pref.rewards.diversity import DiversityReward, distinct_n
from clicks2pref.models.policies import artifact_meta, load_grpo_policy, load_sft_policy
from clicks2pref.rewards.build import build_reward
from clicks2pref.stages import artifacts

log = logging.getLogger(__name__)
COLUMNS = ["policy", "oracle_ctr", "ci_low", "ci_high", "lift", "gsb", "format_rate", "distinct_2", "mean_cosine",
           "canned_cosine"]
REFERENCE_NOTE = ("canned: the same template questions for every context of a topic, no model (the floor); ideal: "
                  "the oracle's best panel of the world's own questions (an upper bound no policy can see); "
                  "canned_cosine: mean largest cosine (eval.diversity_embedder) of a policy's suggestions to the canned panel.")
BEST_OF_COLUMNS = ["policy", "reward", "oracle_ctr", "vs_policy", "vs_ci_low", "vs_ci_high", "reward_spearman",
                   "oracle_best", "contexts"]
ESTIMATED_COLUMNS = ["policy", "est_ctr", "est_lift", "est_lift_low", "est_lift_high", "oracle_lift", "lift_gap"]
ESTIMATED_NOTE = ("Estimated (model-based: the reward models' click model, as without a simulator) beside the oracle; "
                  "lifts relative to the reference, gap = estimated − oracle lift:")


def run(cfg, loggers=()) -> dict:
    ev = cfg.eval
    # 1. the stages whose policies and reward models are evaluated (each run or reused)
    inputs = artifacts.upstream(cfg, "evaluate", loggers)
    sources = {name: policy_source(cfg, name, inputs) for name in ev.policies}
    key = artifacts.key(cfg, "evaluate", inputs, extra="|".join(src[0] for src in sources.values()))
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (report := artifacts.reuse(cfg, "evaluate", key)) is not None:  # the same policies, settings and code
        if report.get("calibration"):
            write_report(report["calibration"], out_dir)
        return publish(cfg, report, loggers)

    if not uses_simulator(cfg):  # a team's own logs: click-model estimates on held-out logged conversations
        return run_offline(cfg, inputs, sources, key, out_dir, loggers)

    # 2. every policy on the same held-out contexts (cached evaluations), with the diversity of its panels
    start = time.time()
    sim = build_simulator(cfg.simulator)
    contexts = heldout_contexts(cfg, sim, ev)
    diversity = DiversityReward(ev.diversity_embedder)
    results = {}
    for name in ev.policies:
        policy_id, load, template, meta = sources[name]
        m = score_policy(cfg, ev, sim, contexts, policy_id, load, cfg.prompt[template], diversity)
        m.update(template=template, rl_logs=meta.get("rl_logs"))
        results[name] = m
        log.info("evaluate: %-10s oracle CTR %.4f [%.4f, %.4f] format %.2f", name, m["oracle_ctr"], m["ci_low"],
                 m["ci_high"], m["format_rate"])

    # 3. best-of-n: the reward's pick among each policy's samples
    reranked = [p for p in ev.best_of.policies if p in results] if ev.best_of.n else []
    best_rows = rerank(cfg, ev, inputs, results, reranked, diversity) if reranked else []

    # 4. the floor and the ceiling (canned and ideal panels on the same contexts), how near each policy is the
    # floor, and every row against the reference: lift, CI, GSB
    results.update(reference_rows(cfg, ev, sim, contexts, diversity, results))
    rows = compare(results, ev.reference, ev, cfg.seed)
    report = {"split": ev.split, "contexts": len(contexts), "reference": ev.reference, "ci": f"{ev.ci_level:.0%}",
              "rows": rows, "best_of": best_rows,
              "examples": [{"context": contexts[i], **{n: results[n]["outputs"][i] for n in results}}
                                         for i in range(min(5, len(contexts)))],
              "per_context_ctr": {n: results[n]["per_context_ctr"] for n in results}}

    # the offline estimator (the reward models' click model) beside the oracle: its bias, measured per method
    if "rm" in inputs and results:
        report["estimated"] = estimated_beside_oracle(cfg, inputs, results, [*ev.policies, *(r["policy"]
                                                                                         for r in best_rows)])

    # 5. the reward models' calibration on the IID week and the GRPO policy's logs (OOD)
    if ev.calibration:
        ood = results["grpo"].get("rl_logs") if "grpo" in results else None
        report["calibration"] = calibration_section(cfg, inputs["rm"], out_dir, ood)
    report["seconds"] = time.time() - start
    with artifacts.atomic_dir(artifacts.artifact_path(cfg, "evaluate", key)) as tmp:
        (tmp / "evaluation.json").write_text(json.dumps(report, indent=2))
    return publish(cfg, report, loggers)


def run_offline(cfg, inputs: dict, sources: dict, key: str, out_dir: Path, loggers) -> dict:
    """No simulator: every policy on the held-out logged conversations (`data.holdout`, the `test` share), by the
    click model the reward models learned, against the logged policy's own panels there; the A/B plan."""
    ev, start = cfg.eval, time.time()
    estimators, primary = build_estimators(artifacts.rm_models(cfg, inputs), ev.offline.estimator,
                                           cfg.paths.model_cache, cfg.reward_model.backbone.trust_remote_code)
    split = log_split(cfg, load_impressions(artifacts.logs_source(cfg), cfg.data.on_invalid))
    if not split.test:
        raise ClickLogError(f"no held-out logged conversation to evaluate on ({split.describe()}); raise "
                            "data.holdout.fraction or lower data.holdout.val_fraction", field="data.holdout")
    policies = {name: (load, cfg.prompt[template]) for name, (_, load, template, _) in sources.items()}
    reranks = ev.best_of.n and set(ev.best_of.policies) & set(policies)
    report = evaluate_offline(cfg, estimators, primary, split.test, policies,
                              reward_component(cfg, ev.best_of.reward, inputs) if reranks else None,
                              DiversityReward(ev.diversity_embedder))
    report["split"] = split.describe()
    if ev.calibration:
        report["calibration"] = calibration_section(cfg, inputs["rm"], out_dir, None)
    report["seconds"] = time.time() - start
    with artifacts.atomic_dir(artifacts.artifact_path(cfg, "evaluate", key)) as tmp:
        (tmp / "evaluation.json").write_text(json.dumps(report, indent=2))
    return publish(cfg, report, loggers)


def estimated_beside_oracle(cfg, inputs: dict, results: dict, names: list[str]) -> dict:
    """Each evaluated policy's estimated CTR and lift over the reference (the reward models' click model,
    model-based) next to the oracle's lift, and the gap between the two lifts."""
    ev = cfg.eval
    estimators, primary = build_estimators(artifacts.rm_models(cfg, inputs), ev.offline.estimator,
                                           cfg.paths.model_cache, cfg.reward_model.backbone.trust_remote_code)
    shown = {n: results[n] for n in dict.fromkeys(names) if n in results}
    conversations = results[ev.reference]["conversations"]
    return beside_oracle(estimators[primary], shown, ev.reference, conversations, ev.bootstrap_samples,
                         ev.ci_level, cfg.seed)


def rerank(cfg, ev, inputs: dict, results: dict, policies: list[str], diversity) -> list[dict]:
    """Adds "<policy>+bo<n>" to `results` for each of `policies`; returns the best-of rows: the reranked CTR
    against serving a random one of the same n samples (paired CI over contexts) and the reward's
    within-context Spearman with the oracle over the n samples."""
    bo = ev.best_of
    component = reward_component(cfg, bo.reward, inputs)
    rows = []
    for name in policies:
        m = results[name]
        flat = [s for group in m["samples"] for s in group]
        contexts = [c for c, group in zip(m["conversations"], m["samples"]) for _ in group]
        batch = RewardBatch(contexts, flat, len(cfg.simulator.examination))
        scores = np.asarray(component(batch), dtype=float).reshape(len(m["samples"]), -1)
        best = best_of_n(m, scores, bo.n, ev.bootstrap_samples, ev.ci_level, cfg.seed)
        k = len(cfg.simulator.examination)
        best["format_rate"] = float(np.mean([parse_suggestions(o, k).well_formed for o in best["outputs"]]))
        panels = [parse_suggestions(o, k).suggestions for o in best["outputs"]]
        best["distinct_2"], best["mean_pairwise_cosine"] = distinct_n(panels, 2), diversity.mean_pairwise_cosine(panels)
        # against serving one of the same n samples at random: its expected CTR is their mean
        random_pick = dict(m, per_context_ctr=[float(np.mean(row[:bo.n])) for row in m["sample_ctr"]])
        lift = paired(best, random_pick, ev, ev.gsb.margin, cfg.seed)
        label = f"{name}+bo{bo.n}"
        results[label] = best
        rows.append({"policy": label, "reward": bo.reward, "oracle_ctr": best["oracle_ctr"],
                     "vs_policy": lift["ctr_diff"], "vs_ci_low": lift["ci_low"], "vs_ci_high": lift["ci_high"],
                     "reward_spearman": best["reward_spearman"], "oracle_best": best["oracle_max_ctr"],
                     "contexts": best["spearman_contexts"]})
        log.info("evaluate: %s oracle CTR %.4f, %+.4f [%+.4f, %+.4f] over a random one of the same samples of %s; "
                 "reward ρ with the oracle within contexts %.3f", label, best["oracle_ctr"], lift["ctr_diff"],
                 lift["ci_low"], lift["ci_high"], name, best["reward_spearman"])
    return rows


def reference_rows(cfg, ev, sim, contexts: list, diversity, results: dict) -> dict:
    """The canned and ideal rows (`clicks2pref.eval.reference_panels`), and each policy's nearness to canned."""
    rp = ev.reference_panels
    if not rp.canned and not rp.ideal:
        return {}
    refs = score_reference_panels(sim, contexts, list(rp.canned or ["{title}"]), ev, cfg.seed, diversity)
    k = len(cfg.simulator.examination)
    for name, m in [*results.items(), *refs.items()]:
        panels = m.get("panels") or [parse_suggestions(o, k).suggestions for o in m["outputs"]]
        m["canned_cosine"] = nearness_to_canned(panels, refs["canned"]["panels"], diversity.similarity) \
            if rp.canned else float("nan")
    for name, m in refs.items():
        log.info("evaluate: %-10s oracle CTR %.4f [%.4f, %.4f] (reference panel)", name, m["oracle_ctr"],
                 m["ci_low"], m["ci_high"])
    return {n: m for n, m in refs.items() if (n == "canned" and rp.canned) or (n == "ideal" and rp.ideal)}


def reward_component(cfg, name: str, inputs: dict):
    """The `rewards.<name>` component, set up with this config's trained reward models; for `composite`, a
    panel scorer with the reward GRPO trains on (`rewards.build.build_reward`: the fused weights and κ, the SFT
    policy as the perplexity reference, failing panels at their context's minimum)."""
    if name == "composite":
        return composite_reward(cfg, inputs)
    if cfg.rewards.get(name) is None:
        raise ConfigError(f"'{name}' is null in this rewards preset ({cfg.rewards.name}); pick an enabled component",
                          "eval.best_of.reward")
    resources = RewardResources(artifacts.rm_models(cfg, inputs), None,
                                cfg.paths.model_cache, cfg.reward_model.backbone.trust_remote_code)
    return build_component(cfg.rewards, name, resources)


def composite_reward(cfg, inputs: dict):
    model, tok = load_sft_policy(artifacts.artifact_path(cfg, "sft", inputs["sft"]["key"]), cfg, merge=True)
    fused = inputs.get("fusion")
    records = [] if fused and fused.get("tau") is not None else load_impressions(artifacts.logs_source(cfg),
                                                                                 cfg.data.on_invalid)
    reward, _ = build_reward(cfg, model, tok, cfg.prompt[inputs["sft"]["template"]], None,
                                  artifacts.rm_models(cfg, inputs), fused, records)
    log.info("evaluate: best-of by the composite reward %s", reward.describe())
    return lambda batch: reward(batch)[0]


def policy_source(cfg, name: str, inputs: dict):
    """(identity in the evaluation cache, load() -> (model, tokenizer), template name, artifact metadata)
    for `baseline`, `sft`, `grpo` (their stages' results in `inputs`) or a saved folder."""
    base = OmegaConf.to_object(cfg.policy.model)
    if name == "baseline":
        template = inputs["collect"]["best_template"] if "collect" in inputs else artifacts.resolve_template(cfg)
        return baseline_id(cfg), lambda: load_causal_lm(base, cfg.paths.model_cache, seed=cfg.seed), template, {}
    if name in ("sft", "grpo"):
        folder = artifacts.artifact_path(cfg, name, inputs[name]["key"])
    else:
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise ModelNotFoundError(f"eval.policies: '{name}' is neither baseline, sft, grpo nor an existing folder")
        if problem := verify_given(folder):
            raise ModelNotFoundError(f"eval.policies: {folder} fails verification: {problem}")
    if (folder / "sft.json").exists():
        meta = artifact_meta(folder, "sft")
        return f"sft:{meta['key']}", loads(folder, lambda: load_sft_policy(folder, cfg, merge=True)), \
            meta["template"], meta
    if (folder / "grpo.json").exists():
        meta = artifact_meta(folder, "grpo")
        if meta.get("rl_logs"):  # recorded as an absolute path; the folder may have moved since
            meta["rl_logs"] = str(folder / Path(meta["rl_logs"]).name)
        return f"grpo:{meta['key']}", loads(folder, lambda: load_grpo_policy(folder, cfg)), meta["template"], meta
    stamp = max((p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()), default=0)
    load = lambda: load_causal_lm(replace(base, name=str(folder), lora=None), cfg.paths.model_cache)  # noqa: E731
    return f"path:{folder.resolve()}@{stamp}", loads(folder, load), artifacts.resolve_template(cfg), {}


def loads(folder: Path, load):
    """`load`, with anything it raises on a broken folder turned into one line naming the folder."""
    def checked():
        try:
            return load()
        except Clicks2PrefError:
            raise
        except Exception as e:  # a truncated or foreign file: one line, not a traceback from deep inside torch
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise ModelNotFoundError(f"eval.policies: {folder} does not load: {type(e).__name__}: {first}") from None
    return checked


def compare(results: dict, reference: str, ev, seed: int) -> list[dict]:
    """One row per policy: CTR and CI, paired lift over the reference with its CI, GSB, format, diversity."""
    ref = results[reference]
    rows = []
    for name, m in results.items():
        lift = paired(m, ref, ev, ev.gsb.margin, seed)
        rows.append({"policy": name, "oracle_ctr": m["oracle_ctr"], "ci_low": m["ci_low"], "ci_high": m["ci_high"],
                     "lift": lift["relative"] if lift["relative"] is not None else float("nan"),
                     "diff_ci_low": lift["ci_low"], "diff_ci_high": lift["ci_high"], "gsb": lift["gsb"]["gsb"],
                     "format_rate": m["format_rate"], "distinct_2": m["distinct_2"],
                     "mean_cosine": m["mean_pairwise_cosine"], "canned_cosine": m.get("canned_cosine", float("nan"))})
    return rows


def plot_ctr(rows: list[dict], path: Path, ci: str) -> None:
    from matplotlib.figure import Figure  # the plotting extra, loaded only when a plot is drawn

    fig = Figure(figsize=(1.6 + 1.3 * len(rows), 3.2))
    ax = fig.subplots()
    x = range(len(rows))
    ctr = [r["oracle_ctr"] for r in rows]
    err = [[r["oracle_ctr"] - r["ci_low"] for r in rows], [r["ci_high"] - r["oracle_ctr"] for r in rows]]
    ax.bar(x, ctr, yerr=err, capsize=4, color="#4c72b0")
    # a policy given as a folder is named by its last two parts (e.g. grpo/<key>), so labels do not overlap
    labels = ["/".join(Path(r["policy"]).parts[-2:]) if "/" in r["policy"] else r["policy"] for r in rows]
    folders = any("/" in name for name in labels)
    ax.set_xticks(list(x), labels, rotation=20 if folders else 0, ha="right" if folders else "center",
                  fontsize="small")
    ax.set_ylabel(f"oracle CTR ({ci} CI)")
    ax.set_title("held-out contexts")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def publish_offline(cfg, report: dict, loggers) -> dict:
    """results.md (the offline table), ab_plan.md, evaluation.json and metrics.json; both on the console."""
    out_dir = Path(cfg.paths.output_dir)
    text, plan = offline_markdown(report, markdown_table), ab_section(report)
    (out_dir / "results.md").write_text(text + "\n" + plan)
    (out_dir / "ab_plan.md").write_text(plan)
    (out_dir / "evaluation.json").write_text(json.dumps(report, indent=2))
    flat = {f"eval/{r['policy']}/{c}": float(r[c]) for r in report["rows"]
            for c in ("est_ctr", "ci_low", "ci_high", "lift_vs_logged")}
    (out_dir / "metrics.json").write_text(json.dumps(flat, indent=2))
    log_table(loggers, "eval/offline", [{c: r[c] for c in OFFLINE_COLUMNS} for r in report["rows"]])
    log_metrics(loggers, flat)
    print("\n" + text)
    print(plan)
    print(f"metrics: {out_dir / 'evaluation.json'}\nA/B plan: {out_dir / 'ab_plan.md'}")
    return report


def publish(cfg, report: dict, loggers) -> dict:
    """results.md, evaluation.json, metrics.json and ctr.png in the run folder; the table on the console."""
    if report.get("basis") == BASIS:
        return publish_offline(cfg, report, loggers)
    ev, out_dir, rows, ci = cfg.eval, Path(cfg.paths.output_dir), report["rows"], report["ci"]
    table = markdown_table(rows, COLUMNS)
    flat = {f"eval/{r['policy']}/{c}": float(r[c]) for r in rows for c in COLUMNS[1:]}
    (out_dir / "evaluation.json").write_text(json.dumps(report, indent=2))
    (out_dir / "metrics.json").write_text(json.dumps(flat, indent=2))
    best = report.get("best_of") or []
    best_table = markdown_table(best, BEST_OF_COLUMNS) if best else ""
    if best:
        flat.update({f"eval/{r['policy']}/{c}": float(r[c]) for r in best for c in ("vs_policy", "reward_spearman")})
    (out_dir / "results.md").write_text(f"Held-out {ev.split} contexts: {report['contexts']}, "
                                        f"{ev.samples_per_context} panel(s) each; lift and GSB vs. {ev.reference}; "
                                        f"{ci} bootstrap CIs over {ev.ci_clusters}s.\n{REFERENCE_NOTE}\n\n"
                                        + table + (
                                            "\nBest-of-n (vs. a random one of the same samples, paired; reward ρ: "
                                            f"within-context Spearman with the oracle):\n\n{best_table}"
                                            if best else ""))
    plot_ctr(rows, out_dir / "ctr.png", ci)
    log_table(loggers, "eval/results", [{c: r[c] for c in COLUMNS} for r in rows])
    log_metrics(loggers, flat)
    print(f"\nResults on {report['contexts']} held-out contexts (lift, GSB vs. {ev.reference}; {ci} CIs over "
          f"{ev.ci_clusters}s):\n")
    print(table + REFERENCE_NOTE + "\n")
    if best:
        print("Best-of-n (vs. a random one of the same n samples; reward ρ = within-context Spearman with the "
              "oracle):\n")
        print(best_table)
    if report.get("estimated"):  # the offline estimator's lift beside the oracle's: how far off it is, per method
        est = [{"policy": n, **v} for n, v in report["estimated"].items()]
        est_table = markdown_table(est, ESTIMATED_COLUMNS)
        with open(out_dir / "results.md", "a") as f:
            f.write(f"\n{ESTIMATED_NOTE}\n\n{est_table}")
        log_metrics(loggers, {f"eval/{r['policy']}/{c}": float(r[c]) for r in est
                              for c in ("est_ctr", "est_lift", "lift_gap")})
        print(f"{ESTIMATED_NOTE}\n")
        print(est_table)
    print(f"metrics: {out_dir / 'evaluation.json'}\nplots:   {out_dir / 'ctr.png'}")
    return report


def calibration_section(cfg, trained: dict, out_dir: Path, ood_logs: Optional[str]) -> dict:
    """The trained reward models' calibration report on the IID test week and, when there are logs from
    another policy (`data.ood_logs`, else the GRPO policy's week of RL logs), on that OOD split."""
    folder = artifacts.artifact_path(cfg, "rm", trained["key"])
    source = cfg.data.ood_logs or ood_logs
    # cached by the reward models' key, the OOD files' bytes and the report settings
    digest = hashlib.sha256(f"{trained['key']}|{json.dumps(OmegaConf.to_container(cfg.reward_model.calibration))}|"
                            f"{cfg.policy.model.name}".encode())
    for path in expand_sources(source) if source else []:
        digest.update(path.read_bytes())
    cached = Path(cfg.paths.artifacts_dir) / "eval" / f"calibration-{digest.hexdigest()[:12]}.json"
    if cfg.cache and (report := read_cached_json(cached)) is not None:
        write_report(report, out_dir)
        print("\n" + markdown_report(report))
        return report
    splits = {"iid": read_jsonl(folder / "pairs" / "iid.jsonl")}
    pcfg = cfg.reward_model.pairs
    iid = f"week(s) {list(pcfg.test_weeks)}" if pcfg.test_weeks else "the last week (or held-out conversations)"
    notes = [f"IID: {iid} of the training logs ({pcfg.position_filter} pairs)"]
    if source:
        ood = build_pairs(load_impressions(source, cfg.data.on_invalid), pcfg.position_filter)
        splits["ood"] = [p for p in ood if pcfg.ood_weeks is None or p["week"] in set(pcfg.ood_weeks)]
        notes.append(f"OOD: {source} (policies {sorted({p.get('policy', '?') for p in splits['ood']}) or '-'})")
    else:
        notes.append("no OOD split: no data.ood_logs and no RL logs from the GRPO stage")
    ppl = reference_ppl(cfg, splits) if cfg.reward_model.calibration.reference_ppl else {}
    report = {"key": trained["key"], "pairs": {k: len(v) for k, v in splits.items()}, "notes": notes, "kinds": {}}
    for kind in cfg.reward_model.kinds:
        model = load_reward_model(folder / kind, cfg.paths.model_cache,
                                  trust_remote_code=cfg.reward_model.backbone.trust_remote_code)
        report["kinds"][kind] = {"train_seconds": trained["train_seconds"][kind],
                                 "splits": calibrate(cfg, model, splits, ppl)}
    atomic_write_text(json.dumps(report), cached)
    write_report(report, out_dir)
    print("\n" + markdown_report(report))
    return report
