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

from clicks2pref.config.sft import training_model_config
from clicks2pref.data.io import write_jsonl
from clicks2pref.data.parsing import format_suggestions
from clicks2pref.data.prompts import build_messages
from clicks2pref.data.sft_data import clicked_groups, single_suggestion_examples, split_groups
from clicks2pref.data.teacher import sample_candidates, teacher_template
from clicks2pref.lit.fit import fit_causal_lm
from clicks2pref.models.registry import load_causal_lm
from clicks2pref.stages import artifacts

log = logging.getLogger(__name__)


def run(cfg, inputs: dict, loggers=()) -> dict:
    """The teacher's report (`{"name": "none"}` without a teacher); its candidates are the artifact's
    `candidates.jsonl` (one line per context group), which stage sft reads."""
    tcfg = cfg.teacher
    if tcfg.model is None:
        return {"name": tcfg.name}
    key = artifacts.key(cfg, "teacher", inputs)
    if (report := artifacts.reuse(cfg, "teacher", key)) is not None:
        return report
    groups = clicked_groups(cfg, artifacts.logs_source(cfg))
    return train_and_sample(cfg, groups, key, loggers)[1]


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
