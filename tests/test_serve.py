"""Stage serve: the SFT policy's own logged weeks, and the reward models training on them."""
from __future__ import annotations

from clicks2pref.data.io import write_impressions
from tests.conftest import compose_config


def impression(week: int, name: str) -> dict:
    """A valid click-log record whose panel is named by its suggestions (the second one clicked)."""
    return {"impression_id": f"{name}-i", "week": week, "policy": "pi", "panel_id": f"{name}-p",
            "suggestions": [f"{name} first?", f"{name} second?", f"{name} third?"], "clicks": [0, 1, 0],
            "context": [{"role": "user", "content": f"about {name}"}, {"role": "assistant", "content": "ok"}],
            "topic": "japan_travel", "facet": "best_season"}  # a conversation of the packaged world


def test_a_served_week_logs_the_policys_own_panels_with_sampled_clicks(tmp_path):
    """The policy (here SmolLM2) serves training contexts, a group of panels per context, each shown to simulated
    users in a fresh order; the same week gives the same records, another week other contexts."""
    from clicks2pref.data.parsing import parse_suggestions
    from clicks2pref.data.simulator import build_simulator, context_splits
    from clicks2pref.models.registry import load_causal_lm
    from clicks2pref.stages.serve import first_week, policy_week

    cfg = compose_config(["experiment=smoke", "stage=serve", "serve.contexts=3", "serve.panels_per_context=2",
                          "serve.users_per_panel=5", "grpo.max_completion_length=48"], tmp_path)
    assert first_week(cfg) == cfg.collect.weeks + 1
    model, tok = load_causal_lm(cfg.collect.model, cfg.paths.model_cache, seed=0)
    week = first_week(cfg)
    records, contexts, texts = policy_week(cfg, model, tok, cfg.prompt.concise, 3, week)
    assert len(texts) == len(contexts) == 6 and contexts[0] == contexts[1] and contexts[2] == contexts[3]
    panels = [parse_suggestions(t, 3).suggestions for t in texts]
    shown = [p for p in panels if p]
    assert shown and len(records) == 5 * len(shown)
    assert {r["policy"] for r in records} == {"sft"} and {r["week"] for r in records} == {week}
    by_panel: dict = {}
    for r in records:
        by_panel.setdefault(r["panel_id"], []).append(r)
    assert len(by_panel) == len(shown)
    for group, panel in zip(by_panel.values(), shown):
        assert all(sorted(r["suggestions"]) == sorted(panel) for r in group)  # the panel, in each user's order
    train = set(context_splits(build_simulator(cfg.simulator).world, cfg.data.split)["train"])
    assert all((r["topic"], r["facet"]) in train for r in records)
    write_impressions(records, tmp_path / "week.jsonl")  # valid click-log records
    again, _, _ = policy_week(cfg, model, tok, cfg.prompt.concise, 3, week)
    assert again == records
    _, other, _ = policy_week(cfg, model, tok, cfg.prompt.concise, 3, week + 1)
    assert other != contexts


def test_weeks_are_numbered_after_the_logs_last(tmp_path):
    from clicks2pref.stages.serve import first_week

    write_impressions([impression(7, "a"), impression(9, "b")], tmp_path / "logs.jsonl")
    cfg = compose_config(["stage=serve", f"data.logs={tmp_path}/logs.jsonl"], tmp_path)
    assert first_week(cfg) == 10


def test_the_reward_models_train_on_the_served_weeks_and_fusion_fits_on_the_next(tmp_path):
    """rm adds serve's reward-model weeks to its training split, never fusion's week; rm_weeks=0 reads no serve."""
    from clicks2pref.stages import artifacts
    from clicks2pref.stages.rm import load_splits

    logs = tmp_path / "logs"
    write_impressions([impression(w, f"c{w}-{i}") for w in (1, 2, 3, 4) for i in range(4)], logs / "weeks.jsonl")
    cfg = compose_config(["stage=rm", f"data.logs={logs}/*.jsonl", "reward_model.pairs.val_fraction=0"], tmp_path)
    assert artifacts.SPECS["rm"].reads(cfg) == ("serve",)
    assert artifacts.SPECS["fusion"].reads(cfg)[:2] == ("sft", "serve")
    result = {"key": "k", "rm_weeks": [5], "fusion_week": 6}
    folder = artifacts.artifact_path(cfg, "serve", "k")
    for week in (5, 6):
        write_impressions([impression(week, f"s{week}-{i}") for i in range(3)], folder / f"week{week}.jsonl")
        (folder / f"panels{week}.jsonl").write_text("")
    _, examples, notes = load_splits(cfg, result)
    assert {e["week"] for e in examples["train"]} == {1, 2, 3, 5}  # never fusion's week 6; week 4 is the IID test
    assert {e["week"] for e in examples["iid"]} == {4}
    assert "served weeks [5]" in notes[0]
    assert artifacts.SPECS["rm"].reads(compose_config(["stage=rm", "serve.rm_weeks=0", f"data.logs={logs}/*.jsonl"],
                                                      tmp_path)) == ()


def test_serve_reports_each_weeks_counts_and_sampled_ctr():
    from clicks2pref.stages.serve import flat_metrics

    result = {"seconds": 12.5, "weeks": {"5": {"impressions": 48, "panels": 8, "ctr": 0.25},
                                         "6": {"impressions": 0, "panels": 8, "ctr": None}}}
    assert flat_metrics(result) == {"serve/seconds": 12.5, "serve/week5_impressions": 48, "serve/week5_panels": 8,
                                    "serve/week5_ctr": 0.25, "serve/week6_impressions": 0, "serve/week6_panels": 8}
