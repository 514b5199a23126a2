"""The policy optimisers beside GRPO (`optimizer=rft | dpo_clicks | online_dpo`) on a tiny random Llama: each
moves the policy toward what its signal prefers; the compute meter counts exactly; logged-panel pairs prefer
the panel with more clicks per expected examination; and (slow) `stage=grpo optimizer=X` runs end to end."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from clicks2pref.config.grpo import GRPOConfig
from clicks2pref.config.optimizer import OptimizerConfig, policy_samples, steps
from clicks2pref.data.panel_pairs import panel_pairs, panel_scores
from clicks2pref.data.parsing import format_suggestions
from clicks2pref.errors import ConfigError
from clicks2pref.lit.compute import ComputeMeter
from clicks2pref.lit.dpo_module import ClickDPOModule, OnlineDPOModule, best_worst
from clicks2pref.lit.grpo_module import prompt_loader
from clicks2pref.lit.rft import RFTModule, keep_best
from clicks2pref.models.generate import chat_inputs
from clicks2pref.models.logprobs import completion_logps, pad_prompt_completion
from clicks2pref.rewards.composite import CompositeReward
from tests.test_grpo_module import UppercaseRule, prompts, tiny


# ---------------------------------------------------------------- the compute meter, by hand


class Scorer(nn.Module):
    def forward(self, input_ids, attention_mask=None):
        return input_ids.float().sum(-1)


class Component:
    def __init__(self):
        self.model = Scorer()


def test_compute_meter_counts_by_hand():
    model, _ = tiny()
    meter = ComputeMeter()
    meter.watch_policy(model)
    reward = CompositeReward({"rm": Component()}, {"rm": 1.0})
    meter.watch_reward(reward)
    ids = lambda b, t: torch.ones(b, t, dtype=torch.long)  # noqa: E731

    model(input_ids=ids(2, 9))  # no step open: not counted
    meter.start_step()
    with meter.sampling():
        model(input_ids=ids(2, 5))  # a prefill of 2 prompts × 5 tokens ...
        model(input_ids=ids(2, 1))  # ... and one decoding step
    meter.generated([[1, 2, 3], [4]])  # 4 completion tokens kept
    with torch.no_grad():
        model(input_ids=ids(3, 4))  # a reference pass: forward only
    model(input_ids=ids(2, 3))  # a pass with gradients: forward and backward
    reward.components["rm"].model(ids(4, 7))  # the reward model reads 4 × 7 positions
    step = meter.end_step("grpo")
    assert {k: step[f"grpo/compute/{k}"] for k in ("generated_tokens", "sampling_tokens", "forward_tokens",
                                                   "backward_tokens", "reward_tokens")} == {
        "generated_tokens": 4, "sampling_tokens": 12, "forward_tokens": 18, "backward_tokens": 6, "reward_tokens": 28}
    assert step["grpo/compute/seconds"] > 0

    meter.start_step()
    model(input_ids=ids(1, 2))
    step = meter.end_step("grpo")
    assert step["grpo/compute/forward_tokens"] == 2 and step["grpo/compute/total_forward_tokens"] == 20
    assert meter.totals()["backward_tokens"] == 8
    meter.close()
    meter.start_step()
    model(input_ids=ids(1, 2))
    assert meter.end_step("grpo")["grpo/compute/forward_tokens"] == 0  # hooks removed


# ---------------------------------------------------------------- budgets and config checks


def test_every_method_spends_the_same_sample_budget():
    g = GRPOConfig(group_size=4, prompts_per_step=2)
    g.steps = 12  # GRPO's budget: 12 × 2 × 4 = 96 completions
    assert steps(OptimizerConfig(), g) == 12 and policy_samples(OptimizerConfig(), g) == 96
    assert steps(OptimizerConfig(name="online_dpo", num_generations=8), g) == 6  # 6 × 2 × 8
    assert steps(OptimizerConfig(name="dpo_clicks"), g) == 24  # 24 steps × 2 pairs × 2 logged panels
    assert steps(OptimizerConfig(name="grpo", policy_samples=800), g) == 100
    assert steps(OptimizerConfig(name="rft", policy_samples=8, rounds=3), g) == 3  # at least a batch per round


def test_bad_optimizer_settings_name_their_key():
    with pytest.raises(ConfigError, match="name"):
        OptimizerConfig(name="ppo")
    with pytest.raises(ConfigError, match="label_smoothing"):
        OptimizerConfig(name="online_dpo", loss_type="hinge", label_smoothing=0.1)
    with pytest.raises(ConfigError, match="num_generations"):
        OptimizerConfig(name="rft", num_generations=1)


# ---------------------------------------------------------------- selection rules


def test_best_worst_and_keep_best():
    total = torch.tensor([0.1, 0.9, 0.5, 0.2, 0.2, 0.2, float("nan"), 0.3], dtype=torch.float64)
    assert best_worst(total, 4) == [(1, 0), (7, 6)]  # NaN ranks last
    assert best_worst(total[4:6], 2) == []  # a tie is no preference
    ended = [True, True, True, True, True, False, True, True]
    assert keep_best(total, ended, 4, top_n=2) == [1, 2, 7, 4]  # 5 did not end, 6 has no reward
    assert keep_best(total, ended, 4, top_n=2, threshold=0.4) == [1, 2]


def _record(i, panel, clicks, topic="t", facet="f", week=1):
    return {"impression_id": f"i{i}", "week": week, "policy": "p", "context": [{"role": "user", "content": "q"},
            {"role": "assistant", "content": "a"}], "suggestions": panel, "clicks": clicks, "topic": topic,
            "facet": facet, "panel_id": None}


def test_logged_panels_are_preferred_by_clicks_per_expected_examination():
    e = [1.0, 0.5, 0.25]
    good, bad = ["A?", "B?", "C?"], ["D?", "E?", "F?"]
    records = [_record(0, good, [0, 1, 0]), _record(1, ["C?", "A?", "B?"], [0, 0, 0]),
               _record(2, bad, [1, 0, 0]), _record(3, ["F?", "D?", "E?"], [0, 0, 0]),
               _record(4, bad, [0, 0, 0]), _record(5, bad, [0, 0, 1], week=4)]
    scores = panel_scores(records[:5], e)["t/f"]
    # good: 1 click / (2 × 1.75) expected; bad: 1 click / (3 × 1.75) ... both orders of a panel are one panel
    assert sorted(round(p["score"], 6) for p in scores.values()) == [round(1 / 5.25, 6), round(1 / 3.5, 6)]
    pairs = panel_pairs(records, e, weeks=[1, 2, 3])
    assert len(pairs) == 1
    assert pairs[0]["chosen"] == format_suggestions(["B?", "A?", "C?"])  # its clicked suggestion first
    assert pairs[0]["rejected"].startswith("1. D?")
    assert panel_pairs(records, e, weeks=[1, 2, 3], min_margin=0.2) == []
    assert panel_pairs(records, e, group_by="context", weeks=[1])[0]["group"] != "t/f"


# ---------------------------------------------------------------- each method moves a tiny policy


def _cfg(**kw):
    base = dict(group_size=4, prompts_per_step=2, max_completion_length=6, top_k=10, learning_rate=1e-2, beta=0.0,
                lora=None, micro_batch_size=8, log_completions_every=0)
    return GRPOConfig(**{**base, **kw})


def _fit(module, items, n_steps, collate=None):
    trainer = pl.Trainer(accelerator="cpu", max_steps=-1, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    loader = prompt_loader(items, module.cfg.prompts_per_step, n_steps, seed=0)
    trainer.fit(module, loader)
    return trainer


def _upper_margin(model, tok, items, text_up="WHAT IS IT?", text_low="what is it?"):
    """Mean log-prob of an all-upper-case answer minus its lower-case twin over the prompts."""
    p = chat_inputs(tok, [i["messages"] for i in items])
    up, low = (tok(t, add_special_tokens=False)["input_ids"] for t in (text_up, text_low))
    ids, att, mask = pad_prompt_completion(p + p, [up] * len(p) + [low] * len(p), tok.pad_token_id)
    with torch.no_grad():
        lp = (completion_logps(model, ids, att, mask.shape[1])[0] * mask).sum(1)
    return float(lp[:len(p)].mean() - lp[len(p):].mean())


class Rewards(pl.Callback):
    def __init__(self):
        self.history = []

    def on_train_batch_end(self, trainer, *args):
        self.history.append(float(trainer.callback_metrics["grpo/reward"]))


@pytest.mark.parametrize("name", ["online_dpo", "rft"])
def test_methods_on_own_samples_raise_a_simple_rule_reward(world, name):
    pl.seed_everything(0)
    model, tok = tiny()
    module_cls = {"online_dpo": OnlineDPOModule, "rft": RFTModule}[name]
    opt = OptimizerConfig(name=name, rounds=10, train_batch_size=4, beta=0.1)
    kw = {"batches": 20} if name == "rft" else {}
    module = module_cls(model, tok, CompositeReward({"upper": UppercaseRule()}, {"upper": 1.0}), _cfg(), opt, **kw)
    cb = Rewards()
    trainer = pl.Trainer(accelerator="cpu", max_steps=-1, max_epochs=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[cb])
    trainer.fit(module, prompt_loader(prompts(world), 2, 20, seed=0))
    first, last = sum(cb.history[:5]) / 5, sum(cb.history[-5:]) / 5
    assert len(cb.history) == 20 and last > first + 0.15, cb.history
    totals = module.compute.totals()
    assert totals["generated_tokens"] > 0 and totals["backward_tokens"] > 0 and totals["seconds"] > 0


def test_dpo_on_logged_pairs_raises_the_chosen_panel(world):
    pl.seed_everything(0)
    model, tok = tiny()
    items = [{**i, "chosen": "WHAT IS IT?", "rejected": "what is it?"} for i in prompts(world)]
    before = _upper_margin(model, tok, items)
    module = ClickDPOModule(model, tok, None, _cfg(learning_rate=1e-3), OptimizerConfig(name="dpo_clicks", beta=0.1))
    _fit(module, items, 5)
    assert _upper_margin(model, tok, items) > before + 1.0
    totals = module.compute.totals()
    assert totals["generated_tokens"] == 0 and totals["backward_tokens"] > 0


# ---------------------------------------------------------------- stage=grpo optimizer=X, end to end (slow)


@pytest.fixture(scope="module")
def two_panel_logs(tmp_path_factory):
    """Four weeks of logs in which each of 8 training contexts shows a panel of its topic's other facets and a
    generic one, each to 8 simulated users (the smoke simulator): pairs of logged panels for `dpo_clicks`."""
    import random

    from omegaconf import OmegaConf

    from clicks2pref.data.io import write_impressions
    from clicks2pref.data.simulator import build_simulator, split_contexts
    from clicks2pref.data.traffic import serve
    from tests.conftest import compose_config

    root = tmp_path_factory.mktemp("two_panel_logs")
    cfg = compose_config(["experiment=smoke", "stage=grpo"], root / "compose")
    sim = build_simulator(OmegaConf.to_object(cfg.simulator))
    s = cfg.data.split
    train = split_contexts(sim.world, s.val_fraction, s.test_fraction, s.seed)["train"][:8]
    conversations = [sim.context(t, f, random.Random(i)) for i, (t, f) in enumerate(train)]
    good = [[x.question for x in sim.world[t].facets if x.id != f][:3] for t, f in train]
    generic = [["What else should I know?", "Can you tell me more?", "Is there anything else?"]] * len(train)
    rng = random.Random(0)
    for week in (1, 2, 3, 4):
        records, _ = serve(sim, train + train, conversations + conversations, good + generic, "logger", week, 8,
                           True, rng)
        write_impressions(records, root / f"week{week}.jsonl")
    return str(root / "week*.jsonl"), root


@pytest.mark.slow
@pytest.mark.parametrize("name", ["grpo", "rft", "dpo_clicks", "online_dpo"])
def test_stage_grpo_trains_with_each_optimizer(two_panel_logs, tmp_path, name):
    import json
    from pathlib import Path

    from clicks2pref.__main__ import run_stage
    from tests.conftest import compose_config

    logs, root = two_panel_logs
    cfg = compose_config(["experiment=smoke", "stage=grpo", f"optimizer={name}", f"data.logs={logs}",
                          f"paths.artifacts_dir={root / 'artifacts'}", "sft.template=concise", "fusion.weeks=[4]"], tmp_path)
    result = run_stage(cfg)
    assert result["optimizer"] == name
    assert (Path(result["path"]) / "policy" / "adapter_model.safetensors").exists()
    compute = result["compute"]
    assert compute["seconds"] > 0 and compute["backward_tokens"] > 0
    assert (compute["generated_tokens"] == 0) == (name == "dpo_clicks")
    assert result["policy_samples"] > 0 and result["eval"]["grpo"]["oracle_ctr"] >= 0
    assert json.loads((tmp_path / "grpo.json").read_text())["compute"] == compute
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0]
    assert "grpo/compute/total_generated_tokens" in header and "grpo/monitor/sampled_ctr" in header
