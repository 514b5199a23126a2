"""Teacher distillation (paper stage 2(b)): a model fine-tuned on single clicked suggestions samples candidates.

`teacher=none` keeps the clicked suggestions as each context's candidates (Table 3 "clicks only").
Otherwise the teacher (any registry model: the same SmolLM2 by default, a hub Qwen3 on GPUs, so
teacher size is a config choice) is fine-tuned to answer a context with one clicked suggestion
(target `1. <question>`), then samples `num_candidates` questions per context; distinct samples are
ranked by how often the teacher produced them. The candidates are cached under
`artifacts/teacher/<key>/`, so runs that differ only downstream (assembly on/off) share one teacher.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter

from clicks2pref.config.sft import training_model_config
from clicks2pref.data.io import read_jsonl, write_jsonl
from clicks2pref.data.parsing import format_suggestions, parse_suggestions
from clicks2pref.data.prompts import PromptTemplate, build_messages
from clicks2pref.data.sft_data import normalize, single_suggestion_examples, split_groups
from clicks2pref.lit.fit import fit_causal_lm
from clicks2pref.models.generate import generate
from clicks2pref.models.registry import load_causal_lm
from clicks2pref.stages import artifacts

log = logging.getLogger(__name__)


def parse_candidate(text: str) -> str:
    """The question in one teacher reply: its numbered/bulleted item, else its first line."""
    items = parse_suggestions(text, 1).suggestions
    if items:
        return items[0].strip().strip('"').strip()
    return next((line.strip().strip('"').strip() for line in text.splitlines() if line.strip()), "")


def rank_samples(samples: list[str]) -> list[dict]:
    """Distinct samples (dedup by normalised text), most frequent first, then first produced."""
    counts, first, text = Counter(), {}, {}
    for i, s in enumerate(samples):
        key = normalize(s)
        if not key:
            continue
        counts[key] += 1
        first.setdefault(key, i)
        text.setdefault(key, s)
    return [{"text": text[k], "count": counts[k], "source": "teacher"}
            for k in sorted(counts, key=lambda k: (-counts[k], first[k]))]


def teacher_template(tcfg):
    return PromptTemplate(instruction=tcfg.instruction, system=tcfg.system)


def sample_candidates(model, tok, groups: list[dict], tcfg, seed: int) -> list[list[dict]]:
    """`num_candidates` teacher samples per group, parsed and ranked."""
    template = teacher_template(tcfg)
    n = tcfg.num_candidates
    outs = generate(model, tok, [build_messages(template, g["context"]) for g in groups], tcfg.generation,
                    num_return_sequences=n, seed=seed, desc="teacher sampling")
    return [rank_samples([parse_candidate(o) for o in outs[i * n:(i + 1) * n]]) for i in range(len(groups))]


def teacher_candidates(cfg, groups: list[dict], inputs: dict, loggers=()) -> tuple[list[dict], dict]:
    """Groups with their assembly candidates, and the teacher's report (`{"name": "none"}` without one).

    `inputs` are the results of the stages sft read (the teacher's key folds in the same click logs)."""
    tcfg = cfg.teacher
    if tcfg.model is None:
        return groups, {"name": tcfg.name}
    key = artifacts.key(cfg, "teacher", inputs)
    if (report := artifacts.reuse(cfg, "teacher", key)) is not None:
        final = artifacts.artifact_path(cfg, "teacher", key)
        sampled = {r["group"]: r["candidates"] for r in read_jsonl(final / "candidates.jsonl")}
    else:
        sampled, report = train_and_sample(cfg, groups, key, loggers)
    out = []
    for g in groups:
        cands = (list(g["candidates"]) if tcfg.keep_clicked else []) + sampled.get(g["group"], [])
        out.append({**g, "candidates": cands})
    return out, report


def train_and_sample(cfg, groups: list[dict], key: str, loggers) -> tuple[dict, dict]:
    """Fine-tune the teacher on single clicked suggestions, sample candidates, write its artifact."""
    tcfg = cfg.teacher
    start = time.time()
    template = teacher_template(tcfg)
    train_groups, val_groups = split_groups(groups, cfg.sft.data.val_fraction)
    as_messages = lambda gs: [{"messages": build_messages(template, e["context"]),  # noqa: E731
                               "target": format_suggestions([e["target"]])} for e in single_suggestion_examples(gs)]
    model, tok = load_causal_lm(training_model_config(tcfg.model, tcfg.method, tcfg.lora), cfg.paths.model_cache,
                                seed=cfg.seed)
    work = artifacts.work_dir(cfg, "teacher", key)
    stats = fit_causal_lm(cfg, model, tok, as_messages(train_groups), as_messages(val_groups), tcfg.train, work,
                          loggers, "teacher", 1, tcfg.generation.max_new_tokens)
    gen_start = time.time()
    ranked = sample_candidates(model, tok, groups, tcfg, cfg.seed)
    sampled = {g["group"]: r for g, r in zip(groups, ranked)}
    report = {"name": tcfg.name, "model": tcfg.model.name, "key": key, "train": stats,
              "num_candidates": tcfg.num_candidates, "generate_seconds": time.time() - gen_start,
              "distinct_per_context": sum(len(r) for r in ranked) / max(len(ranked), 1),
              "seconds": time.time() - start}
    with artifacts.atomic_dir(artifacts.artifact_path(cfg, "teacher", key)) as tmp:
        write_jsonl([{"group": g, "candidates": c} for g, c in sampled.items()], tmp / "candidates.jsonl")
        (tmp / "teacher.json").write_text(json.dumps(report, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    log.info("teacher %s: trained in %.0fs, %d candidates/context (%.1f distinct) in %.0fs", tcfg.name,
             stats["seconds"], tcfg.num_candidates, report["distinct_per_context"], report["generate_seconds"])
    return sampled, report
