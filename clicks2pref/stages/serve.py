"""Step 3, serve: the SFT policy's own logged traffic.

The reward models learned on the prompted policy's panels rank those well and the SFT policy's poorly, yet
RL asks them to compare the SFT policy's panels. So the SFT policy serves weeks of training contexts:
`serve.panels_per_context` panels per context, sampled as GRPO samples a group, each shown to
`serve.users_per_panel` simulated users (positions shuffled per `collect.shuffle_positions`), whose sampled
clicks are recorded; the oracle is never read. The first `serve.rm_weeks` weeks join the reward models'
training weeks; the week after is fusion's (`fusion.logs=policy`), on panels the reward models never saw.
Weeks are numbered after the click logs' last. Writes under `artifacts/serve/<key>/`: `week<N>.jsonl`
(impressions), `panels<N>.jsonl` (every sampled text as the policy wrote it, with its context and panel id,
empty ones included) and `serve.json`. Without the simulator (`simulator=none`) nobody clicks: serve writes
the panels the policy would serve a live bucket (`panels.jsonl`) and no week.
"""
from __future__ import annotations

import json
import logging
import random
import time

from clicks2pref.data.io import load_impressions, write_impressions, write_jsonl
from clicks2pref.data.log_splits import contexts_of
from clicks2pref.data.offline_mode import training_records, uses_simulator
from clicks2pref.data.parsing import parse_suggestions
from clicks2pref.data.prompts import build_messages
from clicks2pref.data.simulator import build_simulator, context_splits
from clicks2pref.data.traffic import sample_contexts, serve
from clicks2pref.loggers import log_metrics
from clicks2pref.models.generate import generate, group_sampling
from clicks2pref.models.policies import load_sft_policy
from clicks2pref.report import write_job_metrics
from clicks2pref.stages import artifacts

log = logging.getLogger(__name__)


def run(cfg, inputs: dict, loggers=()) -> dict:
    key = artifacts.key(cfg, "serve", inputs)
    result = artifacts.reuse(cfg, "serve", key) or build(cfg, inputs, key)
    write_job_metrics(cfg, "serve", flat_metrics(result))
    log_metrics(loggers, flat_metrics(result))  # a reused week's numbers too: a sweep's runs are complete
    return result


def flat_metrics(result: dict) -> dict:
    """serve/week<N>_impressions, _panels and _ctr (sampled clicks) per served week, and the stage's seconds."""
    out = {"serve/seconds": result["seconds"]}
    for week, c in result["weeks"].items():
        out.update({f"serve/week{week}_impressions": c["impressions"], f"serve/week{week}_panels": c["panels"]})
        if c["ctr"] is not None:
            out[f"serve/week{week}_ctr"] = c["ctr"]
    return out


def build(cfg, inputs: dict, key: str) -> dict:
    """Serve the weeks and write the artifact (the caller holds the key's lock)."""
    if not uses_simulator(cfg):
        return would_serve(cfg, inputs, key)
    start = time.time()
    model, tok = load_sft_policy(artifacts.artifact_path(cfg, "sft", inputs["sft"]["key"]), cfg, merge=True)
    template = cfg.prompt[inputs["sft"]["template"]]
    k = len(cfg.simulator.examination)
    first = first_week(cfg)
    weeks = list(range(first, first + cfg.serve.rm_weeks + 1))
    counts = {}
    with artifacts.atomic_dir(artifacts.artifact_path(cfg, "serve", key)) as tmp:
        for week in weeks:
            records, contexts, texts = policy_week(cfg, model, tok, template, k, week)
            if records:  # a policy that shows nothing (a tiny random model) leaves no week
                write_impressions(records, tmp / f"week{week}.{cfg.data.format}")
            write_jsonl([{"panel_id": f"w{week}-p{i:05d}", "context": c, "text": t}
                         for i, (c, t) in enumerate(zip(contexts, texts))], tmp / f"panels{week}.jsonl")
            counts[str(week)] = {"impressions": len(records), "panels": len(texts),
                                 "ctr": sum(any(r["clicks"]) for r in records) / len(records) if records else None}
        result = {"key": key, "rm_weeks": weeks[:-1], "fusion_week": weeks[-1], "weeks": counts,
                  "template": inputs["sft"]["template"], "inputs": {s: inputs[s]["key"] for s in inputs},
                  "seconds": time.time() - start}
        (tmp / "serve.json").write_text(json.dumps(result, indent=2))
    log.info("serve: the SFT policy's weeks %s (reward models: %s, fusion: %s) in %.0fs", weeks, weeks[:-1],
             weeks[-1], result["seconds"])
    return result


def would_serve(cfg, inputs: dict, key: str) -> dict:
    """No simulated users (`simulator=none`): the panels the SFT policy would serve a live bucket, for up to
    `serve.contexts` logged training conversations, `serve.panels_per_context` each (`panels.jsonl`); no clicks,
    so no week for the reward models or fusion (fusion fits on the held-out logs instead)."""
    start = time.time()
    model, tok = load_sft_policy(artifacts.artifact_path(cfg, "sft", inputs["sft"]["key"]), cfg, merge=True)
    template, k, sv = cfg.prompt[inputs["sft"]["template"]], len(cfg.simulator.examination), cfg.serve
    records = load_impressions(artifacts.logs_source(cfg), cfg.data.on_invalid)
    conversations = contexts_of(training_records(cfg, records))
    random.Random(f"serve-{cfg.seed}").shuffle(conversations)
    conversations = conversations[:sv.contexts]
    texts = generate(model, tok, [build_messages(template, c) for c in conversations], group_sampling(cfg),
                     num_return_sequences=sv.panels_per_context, seed=cfg.seed, desc="serve: would-serve panels")
    rows = [{"panel_id": f"live-p{i:05d}", "context": conversations[i // sv.panels_per_context], "text": t,
             "suggestions": parse_suggestions(t, k).suggestions} for i, t in enumerate(texts)]
    with artifacts.atomic_dir(artifacts.artifact_path(cfg, "serve", key)) as tmp:
        write_jsonl(rows, tmp / "panels.jsonl")
        result = {"key": key, "rm_weeks": [], "fusion_week": None, "weeks": {},
                  "would_serve": {"contexts": len(conversations), "panels": len(rows), "file": "panels.jsonl",
                                  "empty": sum(not r["suggestions"] for r in rows)},
                  "template": inputs["sft"]["template"], "inputs": {s: inputs[s]["key"] for s in inputs},
                  "seconds": time.time() - start}
        (tmp / "serve.json").write_text(json.dumps(result, indent=2))
    log.info("serve: no simulated users (simulator=none): wrote the SFT policy's would-serve panels for %d logged "
             "conversations (%d panels) -> %s", len(conversations), len(rows),
             artifacts.artifact_path(cfg, "serve", key) / "panels.jsonl")
    return result


def first_week(cfg) -> int:
    """The week after the click logs' last."""
    if not cfg.data.logs:
        return cfg.collect.weeks + 1
    return max(r["week"] for r in load_impressions(cfg.data.logs, cfg.data.on_invalid)) + 1


def policy_week(cfg, model, tok, template, k: int, week: int) -> tuple[list[dict], list[list[dict]], list[str]]:
    """One week of the policy serving a fresh sample of `serve.contexts` training contexts.

    Returns the impressions and every sampled (context, text), empty panels included, grouped by context."""
    sv = cfg.serve
    rng = random.Random(f"serve-{cfg.seed}-{week}")
    sim = build_simulator(cfg.simulator)
    split = cfg.data.split
    pairs = sample_contexts(context_splits(sim.world, split)["train"],
                            sv.contexts, rng)
    conversations = [sim.context(t, f, rng) for t, f in pairs]
    texts = generate(model, tok, [build_messages(template, c) for c in conversations], group_sampling(cfg),
                     num_return_sequences=sv.panels_per_context, seed=cfg.seed + week, desc=f"serve: week {week}")
    repeat = lambda xs: [x for x in xs for _ in range(sv.panels_per_context)]  # noqa: E731
    panels = [parse_suggestions(t, k).suggestions for t in texts]
    records, empty = serve(sim, repeat(pairs), repeat(conversations), panels, "sft", week, sv.users_per_panel,
                           cfg.collect.shuffle_positions, rng)
    log.info("serve: week %d: %d contexts × %d panels (%d empty), %d impressions", week, len(pairs),
             sv.panels_per_context, empty, len(records))
    return records, repeat(conversations), texts
