"""Stage 1 (prompt engineering and click-log collection).

Each prompt template generates panels for validation contexts and is scored with the oracle; the
best one then serves weeks of sessions on training contexts, each panel shown to several simulated
users, and the sampled clicks are written as click logs.
"""
from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)


@dataclass
class CollectConfig:
    contexts_per_template: int = 60
    weeks: int = 4
    sessions_per_week: int = 80
    users_per_panel: int = 24
    bootstrap_samples: int = 1000
    ci_level: float = 0.95
    policy_name: Optional[str] = None


def sample_contexts(pairs: list, n: int, rng: random.Random) -> list:
    """n contexts without replacement while they last, then with."""
    if n <= len(pairs):
        return rng.sample(pairs, n)
    return rng.sample(pairs, len(pairs)) + rng.choices(pairs, k=n - len(pairs))


def template_table(model, tok, sim, templates: dict, contexts: list, cfg) -> list[dict]:
    """Oracle CTR (bootstrap CI) and format pass rate of every template on the same contexts."""
    from clicks2pref.eval.policy import evaluate_policy

    rows = []
    for name, template in templates.items():
        start = time.time()
        m = evaluate_policy(model, tok, template, sim, contexts, cfg.policy.generation, cfg.seed,
                            cfg.collect.bootstrap_samples, cfg.collect.ci_level)
        rows.append({"template": name, **{k: m[k] for k in ("oracle_ctr", "ci_low", "ci_high", "format_rate",
                                                            "n_contexts")}, "example": m["outputs"][0]})
        log.info("template %-10s oracle CTR %.4f [%.4f, %.4f] format %.2f (%.0fs)", name, m["oracle_ctr"],
                 m["ci_low"], m["ci_high"], m["format_rate"], time.time() - start)
    return rows


def log_week(model, tok, sim, template, policy: str, week: int, contexts: list, cfg, rng: random.Random,
             ) -> tuple[list[dict], int]:
    """One week of impressions; returns the records and the number of panels with nothing to show."""
    from clicks2pref.data.parsing import parse_suggestions
    from clicks2pref.data.prompts import build_messages
    from clicks2pref.models.generate import generate

    k = len(cfg.simulator.examination)
    conversations = [sim.context(t, f, rng) for t, f in contexts]
    outs = generate(model, tok, [build_messages(template, c) for c in conversations], cfg.policy.generation,
                    seed=cfg.seed * 1000 + week)
    panels = [parse_suggestions(o, k).suggestions for o in outs]
    sim.sim.prefetch(s for p in panels for s in p)
    records, empty = [], 0
    for panel_id, ((topic, facet), context, panel) in enumerate(zip(contexts, conversations, panels)):
        if not panel:
            empty += 1
            continue
        for _ in range(cfg.collect.users_per_panel):
            click = sim.sample(topic, facet, panel, rng)
            records.append({"impression_id": f"w{week}-{len(records):06d}", "week": week, "policy": policy,
                            "context": context, "suggestions": panel, "clicks": click.clicks, "topic": topic,
                            "facet": facet, "segment": click.segment, "panel_id": f"w{week}-p{panel_id:05d}"})
    return records, empty


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def flat_metrics(result: dict) -> dict:
    return {"collect/impressions": sum(w["impressions"] for w in result["weeks"]),
            "collect/best_ctr": max(r["oracle_ctr"] for r in result["templates"]),
            **{f"collect/{r['template']}_oracle_ctr": r["oracle_ctr"] for r in result["templates"]},
            **{f"collect/week{w['week']}_ctr": w["ctr"] for w in result["weeks"]}}


def run(cfg, loggers=()) -> dict:
    from clicks2pref.data.io import write_impressions
    from clicks2pref.data.simulator import build_simulator, split_contexts
    from clicks2pref.errors import ConfigError
    from clicks2pref.loggers import log_metrics, log_table
    from clicks2pref.models.registry import load_causal_lm
    from clicks2pref.report import write_job_metrics
    from clicks2pref.stages.artifacts import artifact_path, atomic_dir, stage_key

    if not cfg.prompt:
        raise ConfigError("prompt: no templates selected; choose at least one, e.g. prompt=[concise,engaging]")
    for name in ("contexts_per_template", "weeks", "sessions_per_week", "users_per_panel"):
        if cfg.collect[name] < 1:
            raise ConfigError(f"collect.{name}={cfg.collect[name]} must be at least 1")
    key = stage_key(cfg, "collect")
    final = artifact_path(cfg, "collect", key)
    out_dir = Path(cfg.paths.output_dir)
    if cfg.cache and (final / "templates.json").exists():
        log.info("collect: reusing %s", final)
        result = json.loads((final / "templates.json").read_text())
        (out_dir / "templates.md").write_text((final / "templates.md").read_text())
        write_job_metrics(cfg, "collect", flat_metrics(result))
        return result

    start = time.time()
    rng = random.Random(cfg.seed)
    sim = build_simulator(cfg.simulator)
    splits = split_contexts(sim.world, cfg.data.split.val_fraction, cfg.data.split.test_fraction, cfg.data.split.seed)
    model, tok = load_causal_lm(cfg.policy.model, cfg.paths.model_cache, seed=cfg.seed)
    log.info("collect: %d topics, contexts train/val/test %d/%d/%d, policy %s", len(sim.world),
             len(splits["train"]), len(splits["val"]), len(splits["test"]), cfg.policy.model.name)

    contexts = sample_contexts(splits["val"], cfg.collect.contexts_per_template, rng)
    rows = template_table(model, tok, sim, cfg.prompt, contexts, cfg)
    best = max(rows, key=lambda r: r["oracle_ctr"])["template"]
    policy = cfg.collect.policy_name or f"prompt_{best}"
    columns = ["template", "oracle_ctr", "ci_low", "ci_high", "format_rate", "n_contexts"]

    with atomic_dir(final) as tmp:
        weeks = []
        for week in range(1, cfg.collect.weeks + 1):
            contexts = sample_contexts(splits["train"], cfg.collect.sessions_per_week, rng)
            records, empty = log_week(model, tok, sim, cfg.prompt[best], policy, week, contexts, cfg, rng)
            write_impressions(records, tmp / f"week{week}.{cfg.data.format}")
            ctr = sum(any(r["clicks"]) for r in records) / max(len(records), 1)
            weeks.append({"week": week, "impressions": len(records), "empty_panels": empty, "ctr": ctr})
            log.info("collect: week %d: %d impressions, %d empty panels, CTR %.3f", week, len(records), empty, ctr)
        result = {"best_template": best, "policy": policy, "templates": rows, "weeks": weeks, "key": key,
                  "logs": str(final / f"week*.{cfg.data.format}"), "seconds": time.time() - start}
        (tmp / "templates.json").write_text(json.dumps(result, indent=2))
        (tmp / "templates.md").write_text(markdown_table(rows, columns))
    (out_dir / "templates.md").write_text(markdown_table(rows, columns))
    (out_dir / "collect.json").write_text(json.dumps(result, indent=2))

    log_table(loggers, "collect/templates", [{c: r[c] for c in columns} for r in rows])
    log_metrics(loggers, flat_metrics(result))
    write_job_metrics(cfg, "collect", flat_metrics(result))
    print(f"\nPrompt templates (oracle CTR on {rows[0]['n_contexts']} validation contexts):\n")
    print(markdown_table(rows, columns))
    print(f"best: {best}; {sum(w['impressions'] for w in weeks)} impressions in {len(weeks)} weeks -> {final}")
    return result
