"""Step 2, sft (paper stage 2): click logs -> clean three-suggestion targets -> a fine-tuned policy (SPEC 5.2).

(a) clicked suggestions grouped by context (`clicks2pref.data.sft_data`); (b) with a teacher
(`teacher=` group, `clicks2pref.stages.teacher`) a model fine-tuned on the single clicked suggestions
samples candidates per context, else the clicks are the candidates; (c) diversity-aware assembly
(`clicks2pref.data.assembly`); (d) the policy is fine-tuned (full, LoRA or QLoRA) with
`clicks2pref.lit.sft_module.SFTModule` on the best prompt template of `collect`, then evaluated
against the prompted baseline on held-out test contexts by the oracle.

Writes `artifacts/sft/<key>/`: `policy/` (adapter or full model, and the tokenizer; load it with
`clicks2pref.models.policies.load_sft_policy`), `merged/` (with `sft.save_merged`), `sft_data.jsonl`, `single.jsonl`,
`candidates.jsonl`, `sft.json` and `sft.md`; the reports are copied to the run folder. A killed run
resumes from the last Lightning checkpoint in `artifacts/sft/.work-<key>/`.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from clicks2pref.config.sft import training_model_config
from clicks2pref.data.assembly import assemble, build_embedder
from clicks2pref.data.io import load_impressions, read_jsonl, write_jsonl
from clicks2pref.data.offline_mode import check_configured_weeks, training_records, uses_simulator
from clicks2pref.data.prompts import build_messages
from clicks2pref.data.sft_data import (click_groups, clicked_groups, click_summary, single_suggestion_examples,
                                       split_groups)
from clicks2pref.data.teacher import with_candidates
from clicks2pref.data.simulator import build_simulator
from clicks2pref.errors import ClickLogError
from clicks2pref.eval.heldout import heldout_contexts, paired, score_policy, summary
from clicks2pref.eval.policy import baseline_id
from clicks2pref.lit.fit import fit_causal_lm, fmt
from clicks2pref.loggers import log_metrics
from clicks2pref.models.registry import load_causal_lm
from clicks2pref.report import write_job_metrics
from clicks2pref.stages import artifacts
from clicks2pref.models.policies import save_policy

log = logging.getLogger(__name__)


def run(cfg, inputs: dict, loggers=()) -> dict:
    sft = cfg.sft
    # 1. what SFT reads: the click logs (collect runs first when they are its output) and the template
    template_name = artifacts.resolve_template(cfg)
    key = artifacts.key(cfg, "sft", inputs, extra=template_name)
    if (result := artifacts.reuse(cfg, "sft", key)) is not None:
        return publish(cfg, result, loggers, fresh=False)

    # 2. (a) clicked suggestions grouped by context
    start = time.time()
    source = artifacts.logs_source(cfg)
    records = load_impressions(source, cfg.data.on_invalid)
    check_configured_weeks(cfg, records, source)  # before anything trains: a week the logs lack is one line now
    # without the simulator the held-out conversations are the evaluation's: SFT never sees them
    groups = clicked_groups(cfg, source) if uses_simulator(cfg) else \
        click_groups(training_records(cfg, records), sft.data)
    data = click_summary(groups)
    log.info("sft: %d context groups, %d clicked suggestions from %s; template %s", data["groups"],
             data["clicked_suggestions"], source, template_name)

    # 3. (b) candidates: the clicks, or the teacher's samples
    teacher_result = inputs.get("teacher") or {"name": cfg.teacher.name}
    cand_groups = with_candidates(groups, teacher_samples(cfg, inputs["teacher"]), cfg.teacher.keep_clicked) \
        if "teacher" in inputs else groups

    # 4. (c) diversity-aware assembly into k-suggestion targets, split by context group
    examples, assembly = assemble_targets(cfg, cand_groups, source)
    train_rows, val_rows = split_examples(examples, groups, sft.data.val_fraction)

    # 5. (d) fine-tune (full, LoRA or QLoRA); a killed run resumes from the work folder
    template = cfg.prompt[template_name]
    model_cfg = training_model_config(cfg.policy.model, sft.method, sft.lora)
    model, tok = load_causal_lm(model_cfg, cfg.paths.model_cache, seed=cfg.seed)
    work = artifacts.work_dir(cfg, "sft", key)
    train_stats = fit_causal_lm(cfg, model, tok, as_messages(template, train_rows), as_messages(template, val_rows),
                                sft.train, work / "policy", loggers, "sft", len(cfg.simulator.examination),
                                cfg.policy.generation.max_new_tokens, ckpt_path=cfg.ckpt_path)
    result = {"key": key, "template": template_name, "method": sft.method, "logs": str(source),
              "data": data, "teacher": teacher_result, "assembly": assembly,
              "sources": {s: sum(e["source"] == s for e in examples) for s in ("click", "teacher")},
              "train": train_stats, "model": asdict(model_cfg), "seed": cfg.seed}

    # 6. the SFT policy against the prompted baseline on held-out contexts (oracle CTR; none without the simulator:
    #    stage evaluate estimates it offline)
    if sft.eval.enabled and uses_simulator(cfg):
        result["eval"] = evaluate(cfg, model, tok, template, key)
    result["seconds"] = time.time() - start

    # 7. the artifact: policy, data, candidates and the result, written last
    write_artifact(cfg, result, model, tok, examples, groups, cand_groups)
    shutil.rmtree(work, ignore_errors=True)
    return publish(cfg, result, loggers, fresh=True)


def teacher_samples(cfg, teacher: dict) -> dict:
    """group -> the teacher's ranked candidates, from its artifact."""
    folder = artifacts.artifact_path(cfg, "teacher", teacher["key"])
    return {r["group"]: r["candidates"] for r in read_jsonl(folder / "candidates.jsonl")}


def assemble_targets(cfg, cand_groups: list[dict], source: str) -> tuple[list[dict], dict]:
    a = cfg.sft.assembly
    examples, assembly = assemble(cand_groups, build_embedder(a) if a.enabled else None, a)
    log.info("sft: assembly %s: %d full panels of %d contexts; short %s; rejected %s", "on" if a.enabled else "off",
             assembly["full_panels"], assembly["contexts"], assembly["short_panels"], assembly["rejected"])
    if not examples:
        raise ClickLogError("assembly produced no full panel; see the short-panel reasons above: collect more logs, "
                            "use a teacher (teacher=smollm2) or relax sft.assembly", str(source))
    return examples, assembly


def as_messages(template, rows: list[dict]) -> list[dict]:
    return [{"messages": build_messages(template, r["context"]), "target": r["target"]} for r in rows]


def write_artifact(cfg, result: dict, model, tok, examples: list[dict], groups: list[dict],
                   cand_groups: list[dict]) -> None:
    final = artifacts.artifact_path(cfg, "sft", result["key"])
    merged = cfg.sft.save_merged and cfg.sft.method != "full"
    with artifacts.atomic_dir(final) as tmp:
        save_policy(model, tok, tmp / "policy", tmp / "merged" if merged else None)
        write_jsonl(examples, tmp / "sft_data.jsonl")
        write_jsonl(single_suggestion_examples(groups), tmp / "single.jsonl")
        write_jsonl([{"group": g["group"], "context": g["context"], "candidates": g["candidates"]}
                     for g in cand_groups], tmp / "candidates.jsonl")
        result["path"] = str(final)
        (tmp / "sft.md").write_text(markdown_report(result))
        (tmp / "sft.json").write_text(json.dumps(result, indent=2))


def split_examples(examples: list[dict], groups: list[dict], val_fraction: float) -> tuple[list, list]:
    """Assembled targets split by context group as the click groups are (all train when no group is held out)."""
    _, val_groups = split_groups(groups, val_fraction)
    val_keys = {g["group"] for g in val_groups}
    train = [e for e in examples if e["group"] not in val_keys]
    val = [e for e in examples if e["group"] in val_keys]
    return (train, val) if train else (examples, [])


def evaluate(cfg, policy, tok, template, key: str) -> dict:
    """Oracle CTR (bootstrap CI) and format rate of the SFT policy, the prompted baseline and the paired lift."""
    ev = cfg.sft.eval
    start = time.time()
    sim = build_simulator(cfg.simulator)
    contexts = heldout_contexts(cfg, sim, ev)
    out = {"contexts": len(contexts), "split": ev.split}
    sft = score_policy(cfg, ev, sim, contexts, f"sft:{key}", lambda: (policy, tok), template)
    out["sft"] = summary(sft)
    out["examples"] = [{"context": contexts[i], "sft": sft["outputs"][i]} for i in range(min(3, len(contexts)))]
    if ev.baseline:
        base = score_policy(cfg, ev, sim, contexts, baseline_id(cfg),
                            lambda: load_causal_lm(cfg.policy.model, cfg.paths.model_cache, seed=cfg.seed), template)
        out["baseline"] = summary(base)
        lift = paired(sft, base, ev, 0.0, cfg.seed)
        out["lift"] = {k: lift[k] for k in ("ctr_diff", "ci_low", "ci_high", "relative")}
        for ex, b in zip(out["examples"], base["outputs"]):
            ex["baseline"] = b
    out["seconds"] = time.time() - start
    out["ci"] = f"{ev.ci_level:.0%}"
    return out


# --- reports -------------------------------------------------------------------------------------


def markdown_report(result: dict) -> str:
    lines = [f"SFT data: {result['data']['groups']} context groups, {result['data']['clicked_suggestions']} clicked "
             f"suggestions; teacher: {result['teacher']['name']}; assembly "
             f"{'on' if result['assembly']['enabled'] else 'off'}",
             f"full panels: {result['assembly']['full_panels']} of {result['assembly']['contexts']} contexts; short: "
             + ", ".join(f"{k} {v}" for k, v in result["assembly"]["short_panels"].items())
             + "; rejected: " + (", ".join(f"{k} {v}" for k, v in result["assembly"]["rejected"].items()) or "none"),
             f"training: {result['train']['data']['train_examples']} examples, {result['train']['steps']} steps, "
             f"val loss {fmt(result['train'].get('val_loss_before'))} -> {fmt(result['train']['val_loss'])}, "
             f"val format rate {fmt(result['train']['val_format_rate'])}", ""]
    ev = result.get("eval")
    if ev:
        lines += [f"Held-out {ev['split']} contexts: {ev['contexts']} (oracle CTR, {ev.get('ci', '95%')} bootstrap "
                  "CI)", "",
                  "| policy | oracle CTR | CI low | CI high | format rate |", "|---|---|---|---|---|"]
        for name in ("baseline", "sft"):
            if name in ev:
                m = ev[name]
                lines.append(f"| {name} | {m['oracle_ctr']:.4f} | {m['ci_low']:.4f} | {m['ci_high']:.4f} | "
                             f"{m['format_rate']:.3f} |")
        if "lift" in ev:
            lift = ev["lift"]
            lines += ["", f"paired CTR difference (SFT - baseline): {lift['ctr_diff']:+.4f} "
                          f"[{lift['ci_low']:+.4f}, {lift['ci_high']:+.4f}]"]
    return "\n".join(lines) + "\n"


def flat_metrics(result: dict) -> dict:
    out = {"sft/full_panels": result["assembly"]["full_panels"],
           "sft/train_examples": result["train"]["data"]["train_examples"]}
    for k in ("val_loss", "val_format_rate", "val_loss_before"):
        if result["train"].get(k) is not None:
            out[f"sft/{k}"] = result["train"][k]
    ev = result.get("eval") or {}
    for name in ("sft", "baseline"):
        if name in ev:
            out[f"sft/{name}_oracle_ctr"] = ev[name]["oracle_ctr"]
            out[f"sft/{name}_ctr_ci_low"] = ev[name]["ci_low"]
            out[f"sft/{name}_ctr_ci_high"] = ev[name]["ci_high"]
            out[f"sft/{name}_format_rate"] = ev[name]["format_rate"]
    if "lift" in ev:
        out["sft/ctr_lift"] = ev["lift"]["ctr_diff"]
    return out


def publish(cfg, result: dict, loggers, fresh: bool) -> dict:
    """sft.json and sft.md in the run folder; its metrics.json only where sft is the job's own stage."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sft.json").write_text(json.dumps(result, indent=2))
    (out_dir / "sft.md").write_text(markdown_report(result))
    write_job_metrics(cfg, "sft", flat_metrics(result))
    log_metrics(loggers, flat_metrics(result))  # a reused stage's stored metrics too: a sweep's runs are complete
    if fresh or cfg.stage.name == "sft":
        print("\n" + markdown_report(result))
    if fresh:
        print(f"SFT policy ({result['method']}) -> {Path(result['path']) / 'policy'} in {result['seconds']:.0f}s")
    return result
