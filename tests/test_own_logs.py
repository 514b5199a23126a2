"""A team's own click logs, with no simulator: splits from the logs, the offline click-model estimator, the
offline monitor, and (further down) the whole pipeline at smoke size on foreign logs."""
from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
import random

import numpy as np
import pytest
import torch

from clicks2pref.data.io import write_impressions
from clicks2pref.data.log_splits import check_weeks, conversation_key, split_logs, week_roles
from clicks2pref.data.offline_mode import foreign_impressions
from clicks2pref.errors import ClickLogError
from clicks2pref.eval.offline import ClickModelCTR, logged_anchor, sample_ctr
from clicks2pref.eval.offline_report import (beside_oracle, best_of, estimated_per_context, offline_table, plan_rows,
                                             score_samples)

# --- foreign logs: conversations the packaged world has never seen ------------------------------------------

SUBJECTS = ["sourdough starter", "bike chain", "tax return", "sprained ankle", "cat litter", "laptop battery",
            "wedding toast", "job offer", "houseplant pests", "kid's allergy", "car lease", "mortgage rate"]
ASPECTS = ["cost", "first steps", "mistakes to avoid", "how long it takes", "when to get help", "tools I need"]


def foreign_logs(seed: int = 0, weeks: int = 2, per_week: int = 240, panel_pool: int = 5) -> list[dict]:
    """Impressions of a made-up support assistant: no `topic`, panels drawn from a per-conversation pool and
    shown in random order, clicks from a position-biased user who prefers questions naming the aspect."""
    rng = random.Random(seed)
    exam = [0.9, 0.6, 0.4]
    conversations = [(s, a) for s in SUBJECTS for a in ASPECTS]
    rng.shuffle(conversations)
    records = []
    for week in range(1, weeks + 1):
        # each week half old conversations and half new ones (the later week brings conversations never seen)
        pool = conversations[(week - 1) * 24:(week - 1) * 24 + 48]
        for i in range(per_week):
            subject, aspect = pool[rng.randrange(len(pool))]
            context = [{"role": "user", "content": f"I need help with my {subject}: {aspect}."},
                       {"role": "assistant", "content": f"Sure. Start by checking the {subject} and note what "
                                                        f"changed recently; that usually narrows it down."}]
            cands = [f"What is the {aspect} for a {subject}?", f"How do I start with my {subject}?",
                     f"Is my {subject} worth fixing?", f"Where can I read more about {subject}?",
                     f"What do experts say about {subject}?"][:panel_pool]
            panel = rng.sample(cands, 3)
            clicks = [0, 0, 0]
            for k, s in enumerate(panel):
                attract = 0.6 if aspect in s else 0.15
                if rng.random() < exam[k] * attract:
                    clicks[k] = 1
                    break
            records.append({"impression_id": f"team-w{week}-{i:05d}", "week": week, "policy": "team_prod",
                            "context": context, "suggestions": panel, "clicks": clicks})
    return records


def test_foreign_logs_are_valid_and_not_of_the_world(tmp_path, world):
    records = foreign_logs()
    write_impressions(records, tmp_path / "logs.jsonl")
    assert foreign_impressions(records, world) == len(records)
    assert all("topic" not in r for r in records)


# --- splits from the logs themselves --------------------------------------------------------------------------


def test_two_weeks_hold_out_the_last_weeks_new_conversations():
    records = foreign_logs()
    split = split_logs(records, heldout_fraction=0.25, val_fraction=0.5, seed=0)
    assert split.by == "week" and split.weeks == [1, 2]
    train_keys = {conversation_key(r["context"]) for r in split.train}
    held_keys = {conversation_key(r["context"]) for r in split.heldout}
    assert all(r["week"] == 1 for r in split.train)
    assert all(r["week"] == 2 for r in split.heldout) and not train_keys & held_keys
    assert split.val and split.test
    assert not {conversation_key(r["context"]) for r in split.val} & {conversation_key(r["context"])
                                                                     for r in split.test}
    assert len(split.train) + len(split.heldout) + split.dropped == len(records)
    assert split_logs(list(reversed(records))).describe() == split.describe()  # independent of record order


def test_one_week_splits_by_conversation():
    records = [r for r in foreign_logs() if r["week"] == 1]
    split = split_logs(records, heldout_fraction=0.25, val_fraction=0.5, seed=0)
    assert split.by == "context" and split.dropped == 0
    assert len(split.train) + len(split.heldout) == len(records)
    n = len({conversation_key(r["context"]) for r in records})
    held = len({conversation_key(r["context"]) for r in split.heldout})
    assert 0 < held < n and abs(held / n - 0.25) < 0.2


def test_weeks_a_config_asks_for_must_be_present():
    records = foreign_logs()
    assert week_roles(records) == ([1], [2])
    assert week_roles(records, train_weeks=[1, 2], test_weeks=None) == ([1, 2], [])
    with pytest.raises(ClickLogError) as e:
        check_weeks([1, 2, 3], records, "reward_model.pairs.train_weeks")
    assert "week(s) [3]" in str(e.value) and "weeks present: [1, 2]" in str(e.value)
    assert str(e.value).startswith("reward_model.pairs.train_weeks: ")
    assert week_roles([r for r in records if r["week"] == 1]) == ([1], [])  # one week: the caller splits by context


# --- the click-model estimator against its closed form -------------------------------------------------------


class FakeGaRM:
    """A 'reward model' whose μ is 1 for suggestions containing 'cost', −1 otherwise; σ 0.5."""
    kind, examination, redundancy, training = "garm", [0.9, 0.6, 0.4], None, False

    def score(self, contexts, suggestions, batch_size=32):
        mu = torch.tensor([1.0 if "cost" in s else -1.0 for s in suggestions])
        return {"mu": mu, "sigma": torch.full_like(mu, 0.5)}


def phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_estimated_ctr_is_the_click_model_closed_form():
    est = ClickModelCTR(FakeGaRM())
    context = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    out = est.panel_ctr([context, context, context], [["the cost?", "b?", "c?"], ["b?", "c?", "the cost?"], []])
    hi, lo = phi(1 / math.sqrt(1.25)), phi(-1 / math.sqrt(1.25))
    expected = [1 - (1 - 0.9 * hi) * (1 - 0.6 * lo) * (1 - 0.4 * lo), 1 - (1 - 0.9 * lo) * (1 - 0.6 * lo) * (1 - 0.4 * hi), 0]
    assert out["ctr"] == pytest.approx(expected)
    assert np.all(out["low"] <= out["ctr"]) and np.all(out["ctr"] <= out["high"])  # GaRM's σ band
    assert out["ctr"][0] > out["ctr"][1]  # the same suggestions are worth more where users look
    # log-likelihood: cascade, a click at position 1 says nothing below it
    rec = {"context": context, "suggestions": ["the cost?", "b?", "c?"], "clicks": [1, 0, 0]}
    assert est.log_likelihood([rec]) == pytest.approx(math.log(0.9 * hi))


def test_offline_table_lifts_are_paired_against_the_logged_anchor_and_plan_the_ab_test():
    est = {"garm": ClickModelCTR(FakeGaRM())}
    records = [r for r in foreign_logs(weeks=1, per_week=120)]
    anchor = logged_anchor(est["garm"], records)
    conversations = anchor["contexts"]
    good = [["1. What is the cost?\n2. Any tips?\n3. How long?"] * 2 for _ in conversations]
    bad = [["1. Any tips?\n2. How long?\n3. Where?"] * 2 for _ in conversations]
    results = {name: score_samples(est, "garm", conversations, s, 1.0) for name, s in (("good", good), ("bad", bad))}
    rows = offline_table(results, anchor, 200, 0.95, 0)
    assert [r["policy"] for r in rows] == ["logged", "good", "bad"] and all(r["basis"] == "model-based" for r in rows)
    assert rows[1]["lift_vs_logged"] > 0 > rows[2]["lift_vs_logged"]
    assert rows[0]["observed_ctr"] == pytest.approx(np.mean(anchor["observed"]))
    plan = plan_rows(rows, 0.05, 0.8)
    assert plan[0]["policy"] == "good" and plan[0]["impressions_per_arm"] > 0
    mixed = [[g[0], b[0]] for g, b in zip(good, bad)]
    scored = score_samples(est, "garm", conversations, mixed, 1.0)
    picked, bo = best_of(scored, np.array([[0.0, 1.0]] * len(conversations)), 2, "garm", 200, 0.95, 0)
    assert bo["vs_policy"] < 0 and picked["outputs"][0] == bad[0][0]  # a reward that prefers the bad panel
    assert sample_ctr(est["garm"], conversations, good)["ctr"].shape == (len(conversations), 2)



def test_beside_the_oracle_the_estimated_lift_and_its_gap():
    est = ClickModelCTR(FakeGaRM())
    context = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    conversations = [context] * 4
    good, bad = "1. What is the cost?\n2. b?\n3. c?", "1. a?\n2. b?\n3. c?"
    results = {"sft": {"outputs": [bad] * 4, "per_context_ctr": [0.1] * 4},
               "grpo": {"outputs": [good] * 4, "per_context_ctr": [0.2] * 4, "samples": [[good, good]] * 4,
                        "samples_per_context": 2}}
    out = beside_oracle(estimated_per_context(est, results, conversations), results, "sft", 100, 0.95, 0)
    assert out["sft"]["est_lift"] == 0 and out["grpo"]["oracle_lift"] == pytest.approx(1.0)
    assert out["grpo"]["est_lift"] > 0 and out["grpo"]["lift_gap"] == pytest.approx(out["grpo"]["est_lift"] - 1.0)


# --- the whole pipeline on a team's logs, no simulator ---------------------------------------------------------


@pytest.fixture(scope="module")
def own_logs_run(tmp_path_factory):
    """`python -m clicks2pref data.logs=... experiment=own_logs` on two weeks of foreign logs, with every way of
    building the simulator made to fail."""
    import sys

    import clicks2pref.data.simulator.click_model as click_model
    from clicks2pref.__main__ import run_stage
    from tests.conftest import compose_config

    def no_simulator(*args, **kwargs):
        raise AssertionError("the click simulator was built")

    out = tmp_path_factory.mktemp("own_logs")
    records = foreign_logs(seed=1, per_week=120)
    for week in (1, 2):
        write_impressions([r for r in records if r["week"] == week], out / "logs" / f"week{week}.jsonl")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(click_model.ClickSimulator, "__init__", no_simulator)
        for name, module in list(sys.modules.items()):
            if name.startswith("clicks2pref") and hasattr(module, "build_simulator"):
                mp.setattr(module, "build_simulator", no_simulator)
        cfg = compose_config([f"data.logs={out}/logs/*.jsonl", "experiment=own_logs",
                              "reward_model.optim.epochs=1"], out / "run")  # the test's one speed-up
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            result = run_stage(cfg)
        return cfg, result, out / "run", printed.getvalue()


def test_a_teams_logs_run_end_to_end_without_the_simulator(own_logs_run):
    cfg, result, out, printed = own_logs_run
    assert set(result["seconds"]) == {"sft", "serve", "rm", "fusion", "grpo", "evaluate"}
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["basis"] == "model-based"
    rows = {r["policy"]: r for r in evaluation["rows"]}
    assert {"logged", "sft", "grpo"} <= set(rows) and all(r["basis"] == "model-based" for r in rows.values())
    logged = rows["logged"]
    assert 0 <= logged["observed_low"] <= logged["observed_ctr"] <= logged["observed_high"] <= 1
    assert all(0 <= r["ci_low"] <= r["est_ctr"] <= r["ci_high"] <= 1 for r in rows.values())
    plan = (out / "ab_plan.md").read_text()
    assert "A/B plan" in plan and "| grpo |" in plan and "model-based" in plan
    assert "Offline evaluation (model-based)" in (out / "results.md").read_text()
    # evaluate prints the offline table and the A/B plan
    assert "Offline evaluation (model-based)" in printed and "| logged | model-based |" in printed
    assert "# A/B plan" in printed and "impressions per arm" in printed


def test_the_split_and_the_stages_use_the_logs_own_weeks(own_logs_run):
    cfg, result, out, _ = own_logs_run
    fusion = json.loads((out / "fusion_weights.json").read_text())
    assert fusion["data"]["logs"] == "clicks" and fusion["data"]["weeks"] == [2]  # held-out conversations of week 2
    grpo = json.loads((out / "grpo.json").read_text())
    assert grpo["eval"]["basis"] == "model-based" and "estimated_ctr" in grpo["eval"]["grpo"]
    assert grpo["monitor"]["basis"] == "model-based" and grpo["rl_logs"] is None
    (rm_report,) = Path(cfg.paths.artifacts_dir).glob("rm/*/calibration.json")
    notes = json.loads(rm_report.read_text())["notes"]
    assert any("train weeks [1]" in n and "IID test weeks [2]" in n for n in notes)
    assert any("no simulator, so no oracle" in n for n in notes)
