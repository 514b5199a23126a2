"""Teacher distillation (paper stage 2(b)): a model fine-tuned on single clicked suggestions samples candidates.

`teacher=none` keeps the clicked suggestions as each context's candidates (Table 3 "clicks only").
Otherwise the teacher (any registry model: the same SmolLM2 by default, a hub Qwen3 on GPUs, so
teacher size is a config choice) is fine-tuned to answer a context with one clicked suggestion
(target `1. <question>`), then samples `num_candidates` questions per context; distinct samples are
ranked by how often the teacher produced them. The candidates are cached under
`artifacts/teacher/<key>/`, so runs that differ only downstream (assembly on/off) share one teacher.
"""
from __future__ import annotations

import inspect
import json
import logging
import shutil
import time
from collections import Counter

import torch
from tqdm.auto import tqdm
from transformers import DynamicCache

from clicks2pref.config.sft import training_model_config
from clicks2pref.console import interactive
from clicks2pref.data.io import read_jsonl, write_jsonl
from clicks2pref.data.parsing import format_suggestions, parse_suggestions
from clicks2pref.data.prompts import PromptTemplate, build_messages
from clicks2pref.data.sft_data import normalize, single_suggestion_examples, split_groups
from clicks2pref.lit.fit import fit_causal_lm
from clicks2pref.models.generate import GenerationConfig, chat_inputs
from clicks2pref.models.placement import on_device
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


def sample_shared_prefix(model, tok, messages: list[list[dict]], gen: GenerationConfig, n: int,
                         seed: int) -> list[str]:
    """n sampled completions per conversation (grouped per conversation, in input order).

    Each prompt is encoded once and its key/value cache repeated n times, instead of encoding every
    prompt n times as `num_return_sequences` does: on a CPU the prompts cost more than the short
    completions, so this is several times faster for the same samples.
    """
    ids = chat_inputs(tok, messages)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[list[str]] = [[] for _ in ids]
    torch.manual_seed(seed)
    model = on_device(model)
    was_training = model.training
    model.eval()
    pad = tok.pad_token_id
    forward = (model.get_base_model() if hasattr(model, "get_base_model") else model).forward
    cache_arg = "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"
    with torch.no_grad():
        for start in tqdm(range(0, len(order), gen.batch_size), desc="teacher sampling", unit="batch", leave=False,
                          disable=not interactive()):
            batch = order[start:start + gen.batch_size]
            width = max(len(ids[i]) for i in batch)
            input_ids = torch.tensor([[pad] * (width - len(ids[i])) + ids[i] for i in batch], device=model.device)
            attention = torch.tensor([[0] * (width - len(ids[i])) + [1] * len(ids[i]) for i in batch],
                                     device=model.device)
            positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
            cache = DynamicCache()
            model(input_ids=input_ids[:, :-1], attention_mask=attention[:, :-1], position_ids=positions[:, :-1],
                  use_cache=True, **{cache_arg: cache})
            cache.batch_repeat_interleave(n)
            seqs = model.generate(input_ids=input_ids.repeat_interleave(n, 0),
                                  attention_mask=attention.repeat_interleave(n, 0), max_new_tokens=gen.max_new_tokens,
                                  do_sample=True, temperature=gen.temperature, top_p=gen.top_p, pad_token_id=pad,
                                  **{cache_arg: cache})
            texts = tok.batch_decode(seqs[:, width:], skip_special_tokens=True)
            for j, text in enumerate(texts):
                out[batch[j // n]].append(text.strip())
    model.train(was_training)
    return [t for group in out for t in group]


def sample_candidates(model, tok, groups: list[dict], tcfg, seed: int) -> list[list[dict]]:
    """`num_candidates` teacher samples per group, parsed and ranked."""
    template = teacher_template(tcfg)
    n = tcfg.num_candidates
    outs = sample_shared_prefix(model, tok, [build_messages(template, g["context"]) for g in groups],
                                tcfg.generation, n, seed)
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
