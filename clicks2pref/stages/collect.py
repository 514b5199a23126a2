"""Step 1, collect (paper stage 1: prompt engineering and click-log collection).

Each prompt template generates panels for validation contexts, each shown to simulated users (an A/B
test: the template with the highest sampled CTR wins; the oracle's CTR is reported beside it, never
chosen on). The winner serves weeks of sessions on training contexts, each panel shown to several
users, and the sampled clicks are written as click logs. With `collect.shuffle_positions` each user
sees the panel in a fresh random order, so position and suggestion are not confounded in the logs
(the exploration a click model needs to learn examination).
"""
from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

from clicks2pref.data.io import write_impressions
from clicks2pref.data.parsing import parse_suggestions
from clicks2pref.data.simulator import build_simulator, context_splits
from clicks2pref.data.traffic import clicked_share, log_week, sample_contexts
from clicks2pref.eval.ctr import bootstrap_mean
from clicks2pref.eval.heldout import markdown_table, with_ci
from clicks2pref.eval.policy import evaluate_policy
from clicks2pref.loggers import log_metrics, log_table
from clicks2pref.models.registry import load_causal_lm
from clicks2pref.report import write_job_metrics
from clicks2pref.stages import artifacts

log = logging.getLogger(__name__)
COLUMNS = ["template", "sampled_ctr", "sampled_low", "sampled_high", "oracle_ctr", "format_rate", "n_contexts"]


def sampled_ctr(sim, contexts: list, panels: list[list[str]], cfg, rng: random.Random) -> list[float]:
    """Per context, the share of `collect.users_per_panel` simulated users who clicked (an empty panel: 0)."""
    return clicked_share(sim, contexts, panels, cfg.collect.users_per_panel, cfg.collect.shuffle_positions, rng)


def template_table(model, tok, sim, templates: dict, contexts: list, cfg, rng: random.Random) -> list[dict]:
    """Sampled CTR (bootstrap CI over contexts), oracle CTR and format pass rate of every template."""
    rows = []
    k = len(cfg.simulator.examination)
    for name, template in templates.items():
        start = time.time()
        m = with_ci(evaluate_policy(model, tok, template, sim, contexts, cfg.policy.generation, cfg.seed),
                    cfg.collect.bootstrap_samples, cfg.collect.ci_level, cfg.seed)
        panels = [parse_suggestions(o, k).suggestions for o in m["outputs"]]
        est = bootstrap_mean(sampled_ctr(sim, contexts, panels, cfg, rng), cfg.collect.bootstrap_samples,
                             cfg.collect.ci_level, cfg.seed)
        rows.append({"template": name, "sampled_ctr": est.mean, "sampled_low": est.low, "sampled_high": est.high,
                     **{k: m[k] for k in ("oracle_ctr", "ci_low", "ci_high", "format_rate", "n_contexts")},
                     "example": m["outputs"][0]})
        log.info("template %-10s sampled CTR %.4f [%.4f, %.4f] (oracle %.4f) format %.2f (%.0fs)", name,
                 est.mean, est.low, est.high, m["oracle_ctr"], m["format_rate"], time.time() - start)
    return rows


def flat_metrics(result: dict) -> dict:
    return {"collect/impressions": sum(w["impressions"] for w in result["weeks"]),
            "collect/best_ctr": max(r["oracle_ctr"] for r in result["templates"]),
            **{f"collect/{r['template']}_sampled_ctr": r.get("sampled_ctr") for r in result["templates"]},
            **{f"collect/{r['template']}_oracle_ctr": r["oracle_ctr"] for r in result["templates"]},
            **{f"collect/week{w['week']}_ctr": w["ctr"] for w in result["weeks"]}}


def run(cfg, inputs: dict, loggers=()) -> dict:
    # 1. reuse this config's logs when they exist
    key = artifacts.key(cfg, "collect")
    final = artifacts.artifact_path(cfg, "collect", key)
    if (result := artifacts.reuse(cfg, "collect", key)) is not None:
        return publish(cfg, result, loggers, fresh=False)

    # 2. the simulator, its context splits and the prompted policy
    start = time.time()
    rng = random.Random(cfg.seed)
    sim = build_simulator(cfg.simulator)
    splits = context_splits(sim.world, cfg.data.split)
    serving = cfg.collect.model or cfg.policy.model
    model, tok = load_causal_lm(serving, cfg.paths.model_cache, seed=cfg.seed)
    log.info("collect: %d topics, contexts train/val/test %d/%d/%d, policy %s", len(sim.world),
             len(splits["train"]), len(splits["val"]), len(splits["test"]), serving.name)

    # 3. every template on the same validation contexts; the best one serves the logging weeks
    contexts = sample_contexts(splits["val"], cfg.collect.contexts_per_template, rng)
    rows = template_table(model, tok, sim, cfg.prompt, contexts, cfg, rng)
    best = max(rows, key=lambda r: r["sampled_ctr"])["template"]
    policy = cfg.collect.policy_name or f"prompt_{best}"

    # 4. weeks of sessions on training contexts, each panel shown to several simulated users
    with artifacts.atomic_dir(final) as tmp:
        weeks = []
        for week in range(1, cfg.collect.weeks + 1):
            contexts = sample_contexts(splits["train"], cfg.collect.sessions_per_week, rng)
            records, empty = log_week(model, tok, sim, cfg.prompt[best], policy, week, contexts, cfg, rng)
            write_impressions(records, tmp / f"week{week}.{cfg.data.format}")
            ctr = sum(any(r["clicks"]) for r in records) / max(len(records), 1)
            weeks.append({"week": week, "impressions": len(records), "empty_panels": empty, "ctr": ctr})
            log.info("collect: week %d: %d impressions, %d empty panels, CTR %.3f", week, len(records), empty, ctr)
        chosen = next(r for r in rows if r["template"] == best)
        result = {"best_template": best, "policy": policy, "templates": rows, "weeks": weeks, "key": key,
                  "selected": {"template": best, "sampled_ctr": chosen["sampled_ctr"]},
                  "logs": str(final / f"week*.{cfg.data.format}"), "seconds": time.time() - start}
        (tmp / "templates.md").write_text(markdown_table(rows, COLUMNS))
        (tmp / "templates.json").write_text(json.dumps(result, indent=2))
    return publish(cfg, result, loggers, fresh=True)


def publish(cfg, result: dict, loggers, fresh: bool) -> dict:
    """The run folder's reports and metrics; logger tables and the console for a fresh result."""
    out_dir = Path(cfg.paths.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = result["templates"]
    (out_dir / "templates.md").write_text(markdown_table(rows, COLUMNS))
    write_job_metrics(cfg, "collect", flat_metrics(result))
    log_metrics(loggers, flat_metrics(result))  # a reused stage's stored metrics too: a sweep's runs are complete
    if fresh:
        (out_dir / "collect.json").write_text(json.dumps(result, indent=2))
        log_table(loggers, "collect/templates", [{c: r[c] for c in COLUMNS} for r in rows])
        print(f"\nPrompt templates (an A/B on {rows[0]['n_contexts']} validation contexts: sampled CTR of "
              f"{cfg.collect.users_per_panel} users per panel chooses; oracle CTR for reference):\n")
        print(markdown_table(rows, COLUMNS))
        print(f"best: {result['best_template']}; {sum(w['impressions'] for w in result['weeks'])} impressions in "
              f"{len(result['weeks'])} weeks -> {Path(result['logs']).parent}")
    return result
