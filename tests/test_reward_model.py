"""Reward-model heads, their Lightning module and save/load, on tiny-llama (and MiniLM for the encoder path)."""

import math
import random
from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from pytorch_lightning.strategies import DDPStrategy

from clicks2pref.errors import ModelNotFoundError, NonFiniteLossError
from clicks2pref.eval.rm_calibration import calibration_metrics, pair_predictions
from clicks2pref.lit.distributed import GlobalBatchSampler
from clicks2pref.lit.reward_module import (ClickRewardModule, PairCollator, RewardData, RewardModule,
                                           impression_loader, pair_loader)
from clicks2pref.models.registry import LoraConfig
from clicks2pref.models.reward_heads import build_reward_model, load_reward_model, save_reward_model
from clicks2pref.config.reward_model import RewardModelConfig

CTX = [{"role": "user", "content": "Pick one."}, {"role": "assistant", "content": "Sure, here are some options."}]
CACHE = "~/.cache/clicks2pref"


def rm_config(**changes):
    """The structured reward_model node with a fully fine-tuned tiny-llama backbone."""
    cfg = OmegaConf.structured(RewardModelConfig)
    cfg.backbone.name, cfg.backbone.lora = "tiny-llama", None
    cfg.optim.lr, cfg.optim.head_lr = 1e-3, 1e-2
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value)
    return cfg


def build(kind, cfg):
    pl.seed_everything(0, verbose=False)
    return build_reward_model(kind, OmegaConf.to_object(cfg.backbone), OmegaConf.to_object(cfg.head), CACHE)


def fit(model, cfg, pairs, groups_per_batch=8, module=None, loader=pair_loader, **trainer_kwargs):
    module = module or RewardModule(model, cfg.loss, cfg.optim, cfg.max_nonfinite_steps)
    trainer = pl.Trainer(**{"max_epochs": cfg.optim.epochs, "logger": False, "enable_checkpointing": False,
                            "enable_progress_bar": False, "enable_model_summary": False, "gradient_clip_val": 1.0,
                            **trainer_kwargs})
    trainer.fit(module, datamodule=RewardData(partial(loader, model), pairs, [], groups_per_batch, seed=0))
    return module, trainer


# --- inputs and heads ------------------------------------------------------------------------------


def test_chat_input_ends_with_the_suggestion_and_truncates_the_context():
    model = build("btrm", rm_config(**{"head.max_length": 24}))
    tok = model.tokenizer
    short = model.encode(CTX[:1] + [{"role": "assistant", "content": "Ok."}], "Why?")
    assert tok.decode(short).endswith("<|im_start|>assistant\nWhy?<|im_end|>")
    long_ctx = [CTX[0], {"role": "assistant", "content": "word " * 200}]
    ids = model.encode(long_ctx, "Is this kept whole?")
    assert len(ids) == 24 and tok.decode(ids).endswith("assistant\nIs this kept whole?<|im_end|>")


def test_minilm_input_is_context_sep_suggestion_with_mean_pooling():
    cfg = rm_config(**{"backbone.name": "minilm-l6", "head.pooling": "mean", "head.max_length": 16})
    model = build("garm", cfg)
    tok = model.tokenizer
    ids = model.encode([CTX[0], {"role": "assistant", "content": "word " * 50}], "can i freeze it?")
    assert len(ids) == 16 and ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.decode(ids).endswith("[SEP] can i freeze it? [SEP]")
    out = model(**model.collate([(CTX, "a?"), (CTX, "a much longer suggestion?")]))
    assert out["mu"].shape == (2,) and torch.all(out["sigma"] > 0)


def test_padding_does_not_change_scores():
    model = build("garm", rm_config()).eval()
    items = [(CTX, "Short?"), (CTX, "A much longer follow-up question with many more words?")]
    batch = model.score([c for c, _ in items], [s for _, s in items])
    alone = [model.score([c], [s]) for c, s in items]
    for k in ("mu", "sigma"):
        torch.testing.assert_close(batch[k], torch.cat([a[k] for a in alone]), atol=1e-5, rtol=1e-5)


def test_garm_sigma_starts_at_sigma_init_and_stays_above_sigma_min():
    model = build("garm", rm_config(**{"head.sigma_min": 0.05, "head.sigma_init": 1.0}))
    out = model.score([CTX] * 3, ["a?", "b?", "c?"])
    assert torch.allclose(out["sigma"], torch.ones(3), atol=0.05)
    with torch.no_grad():
        model.head.bias[1] = -50.0
    assert torch.all(model.score([CTX], ["a?"])["sigma"] >= 0.05)


def test_collator_scores_each_distinct_suggestion_once():
    model = build("btrm", rm_config())
    pairs = [{"context": CTX, "chosen": "b?", "rejected": "a?", "group": "p"}] * 6 + \
            [{"context": CTX, "chosen": "c?", "rejected": "a?", "group": "p"}]
    batch = PairCollator(model)([pairs])
    assert batch["input_ids"].shape[0] == 3
    assert batch["chosen"].tolist() == [0] * 6 + [1] and batch["rejected"].tolist() == [2] * 7  # b?, c?, a?


@pytest.mark.parametrize("lora", [False, True])
def test_save_and_load_give_the_same_scores(tmp_path, lora):
    cfg = rm_config()
    if lora:
        cfg.backbone.lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = build("garm", cfg)
    with torch.no_grad():  # move the adapters / weights away from their initial values
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01 * torch.randn_like(p))
    save_reward_model(model, tmp_path / "rm", OmegaConf.to_object(cfg.backbone), seed=0)
    files = {p.name for p in (tmp_path / "rm").iterdir()}
    assert files == {"reward_model.json", "head.safetensors", "adapter.safetensors" if lora else "backbone.safetensors"}
    loaded = load_reward_model(tmp_path / "rm", CACHE)
    sug = ["Can I freeze it?", "How long does it keep?"]
    before, after = model.score([CTX] * 2, sug), loaded.score([CTX] * 2, sug)
    for k in ("mu", "sigma"):
        torch.testing.assert_close(before[k], after[k])
    torch.testing.assert_close(loaded.rewards([CTX] * 2, sug, kappa=1.0), after["mu"] - after["sigma"])
    with pytest.raises(ModelNotFoundError, match="reward_model.json"):
        load_reward_model(tmp_path, CACHE)



@pytest.mark.parametrize("kind", ["garm", "btrm"])
def test_a_lora_model_loads_merged_with_the_unmerged_scores(tmp_path, kind):
    """Loaded frozen, the adapters are folded into the backbone: no LoRA layer is left, and the head's
    outputs (full pass and shared-conversation pass) equal the unmerged model's to 1e-5."""
    from clicks2pref.models.shared_prefix import rm_outputs

    cfg = rm_config()
    cfg.backbone.lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                   target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "up_proj"])
    model = build(kind, cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    save_reward_model(model, tmp_path / "rm", OmegaConf.to_object(cfg.backbone), seed=0)
    merged = load_reward_model(tmp_path / "rm", CACHE)
    unmerged = load_reward_model(tmp_path / "rm", CACHE, merge=False)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert any("lora" in n for n, _ in unmerged.named_parameters())
    other = [{"role": "user", "content": "What can I cook tonight?"}, {"role": "assistant", "content": "Pasta."}]
    contexts = [CTX, CTX, other, CTX, other]
    sug = ["Can I freeze it?", "How long does it keep?", "Is it quick?", "Which sauce?", "Any vegetarian option?"]
    for score in (lambda m: m.score(contexts, sug), lambda m: rm_outputs(m, contexts, sug, batch_size=2)):
        a, b = score(merged), score(unmerged)
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-5)
    full = unmerged.score(contexts, sug)  # every input in full: the shared pass (chunked) gives the same
    for k, v in rm_outputs(merged, contexts, sug, batch_size=2).items():
        torch.testing.assert_close(v, full[k], rtol=0, atol=1e-5)

# --- training -------------------------------------------------------------------------------------

LEVELS = [["apple", "pear", "plum", "fig"], ["car", "bus", "van", "jet"], ["red", "blue", "green", "pink"],
          ["one", "two", "six", "ten"]]  # true utility = level index: a higher level is always preferred


def synthetic_pairs(n, seed):
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        lo, hi = sorted(rng.sample(range(len(LEVELS)), 2))
        pairs.append({"context": CTX, "chosen": rng.choice(LEVELS[hi]), "rejected": rng.choice(LEVELS[lo]),
                      "group": f"g{i}"})
    return pairs


@pytest.mark.parametrize("kind", ["garm", "btrm"])
def test_both_models_learn_a_known_preference_and_garm_is_calibrated(kind):
    cfg = rm_config(**{"optim.epochs": 3})
    model = build(kind, cfg)
    module, _ = fit(model, cfg, synthetic_pairs(256, 0))
    metrics = calibration_metrics(pair_predictions(model, synthetic_pairs(400, 1)))
    assert metrics["accuracy"] > 0.9
    if kind == "garm":
        assert metrics["ece"] < 0.05
    assert module.nonfinite_steps == 0 and math.isfinite(module.max_grad_norm) and module.max_grad_norm > 0


def contradictory_pairs():
    """a ≻ b and b ≻ a, twice, plus the chain a ≻ c ≻ b that keeps μ_a above μ_b (as in
    tests/test_objectives.py): the contested item b can only explain its pairs with a large σ."""
    a, b, c, d = "apple?", "car?", "red?", "one?"
    sides = [(a, b), (b, a)] * 2 + [(a, c), (c, b), (d, c)]
    return [{"context": CTX, "chosen": x, "rejected": y, "group": "g"} for x, y in sides]


def sigma_after(regularizer, lam, steps=60):
    cfg = rm_config(**{"loss.variance_reg.kind": regularizer, "loss.variance_reg.lambda": lam, "loss.z_clamp": None,
                       "optim.epochs": steps, "optim.head_lr": 0.05, "optim.warmup_ratio": 0.0})
    model = build("garm", cfg)
    fit(model, cfg, contradictory_pairs(), groups_per_batch=1, gradient_clip_val=None)
    return model.score([CTX] * 4, ["apple?", "car?", "red?", "one?"])["sigma"]


def test_contradictory_pairs_grow_sigma_without_regulariser_and_kl_prior_bounds_it():
    free = sigma_after("none", 0.0)
    bounded = sigma_after("kl_prior", 1.0)
    assert free[1] > 3.0, free  # the contested item's σ runs away (it starts at 1)
    assert bounded.max() < 2.0 and bounded.min() > 0.1, bounded


def test_logged_metrics_every_step(tmp_path):
    from pytorch_lightning.loggers import CSVLogger

    cfg = rm_config()
    model = build("garm", cfg)
    module = RewardModule(model, cfg.loss, cfg.optim)
    trainer = pl.Trainer(max_epochs=1, logger=CSVLogger(tmp_path, name="csv", version=""), enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
    pairs = synthetic_pairs(32, 0)
    trainer.fit(module, datamodule=RewardData(partial(pair_loader, model), pairs, synthetic_pairs(16, 1), 8, seed=0))
    header = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()[0].split(",")
    for name in ("train_loss", "train_acc", "sigma_mean", "sigma_std", "grad_norm", "val_acc", "val_ece", "val_loss"):
        assert f"rm/garm/{name}" in header


def test_non_finite_losses_are_skipped_then_stop_the_run():
    cfg = rm_config(**{"loss.variance_reg.lambda": float("nan"), "max_nonfinite_steps": 3})
    model = build("garm", cfg)
    before = model.head.weight.detach().clone()
    with pytest.raises(NonFiniteLossError, match="max_nonfinite_steps=3"):
        fit(model, cfg, synthetic_pairs(64, 0))
    assert torch.equal(model.head.weight, before)  # skipped steps never touched the weights


def test_a_step_whose_gradients_are_not_finite_is_skipped_and_counted():
    """A finite loss whose backward yields one NaN gradient (clipping would spread it to every weight)."""
    from tests.conftest import nan_gradient_on_call

    cfg = rm_config()
    model = build("garm", cfg)
    calls = nan_gradient_on_call(model.head.weight, 2)
    module, _ = fit(model, cfg, synthetic_pairs(64, 0))
    assert len(calls) > 2 and module.nonfinite_steps == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())


# --- several processes ------------------------------------------------------------------------------

def ddp_cpu() -> dict:
    """`trainer=ddp_cpu`'s settings, with a fresh strategy object each time (a used one keeps its accelerator)."""
    return dict(accelerator="cpu", devices=2, strategy=DDPStrategy(start_method="spawn", process_group_backend="gloo"))


def panels(n, seed):
    """Panels of one to three pairs each (so two processes' shares of a batch hold different pair counts),
    every panel with its own texts."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        for j in range(rng.randint(1, 3)):
            lo, hi = sorted(rng.sample(range(len(LEVELS)), 2))
            pairs.append({"context": CTX, "chosen": f"{rng.choice(LEVELS[hi])} {i}?",
                          "rejected": f"{rng.choice(LEVELS[lo])} {i}.{j}?", "group": f"g{i}"})
    return pairs


def impressions(n, seed):
    """Shown panels of three with cascade-like clicks on the highest level, user counts 1–3."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        levels = rng.sample(range(len(LEVELS)), 3)
        texts = [f"{rng.choice(LEVELS[v])} {i}?" for v in levels]
        best = max(range(3), key=lambda k: levels[k])
        for clicked in (True, False):
            clicks = [int(clicked and k == best) for k in range(3)]
            out.append({"context": CTX, "suggestions": texts, "clicks": clicks, "count": rng.randint(1, 3),
                        "group": f"p{i}"})
    return out


def trained(kind, objective, **trainer_kwargs):
    cfg = rm_config(**{"optim.epochs": 2, "loss.variance_reg.lambda": 0.1})
    model = build(kind, cfg)
    if objective == "pairwise":
        data, module, loader = panels(24, 0), None, pair_loader
    else:
        # the stage's layout: the panels' shared conversation runs once per process's share of a batch
        data, loader = impressions(24, 0), partial(impression_loader, positions=3, shared_prefix=True)
        module = ClickRewardModule(model, cfg.loss, cfg.optim, cfg.click_model, 3, fixed_examination=[1.0, 0.6, 0.4])
    fit(model, cfg, data, groups_per_batch=4, module=module, loader=loader,
        **trainer_kwargs)
    return model, cfg


@pytest.mark.parametrize("kind,objective", [("garm", "pairwise"), ("btrm", "pairwise"), ("garm", "click_model")])
def test_ddp_cpu_matches_one_process(kind, objective):
    """Two gloo processes, each with half of every global batch, train the same weights as one process: the
    loss of each share is its part of the global batch's mean, and DDP averages the gradients."""
    one, _ = trained(kind, objective)
    two, _ = trained(kind, objective, **ddp_cpu())
    held_out = [f"{w} probe?" for level in LEVELS for w in level]
    a, b = one.score([CTX] * len(held_out), held_out), two.score([CTX] * len(held_out), held_out)
    before = build(kind, rm_config()).score([CTX] * len(held_out), held_out)
    key = "mu" if kind == "garm" else "reward"
    assert not torch.allclose(a[key], before[key], atol=1e-3)  # training moved the scores
    if kind == "btrm":  # Bradley-Terry rewards are defined up to a constant: Adam drifts the unidentified
        a, b = ({"reward": x["reward"] - x["reward"].mean()} for x in (a, b))  # head bias on round-off alone
    atol = 1e-3 if kind == "btrm" else 1e-5  # ... which also leaves ~1e-4 of round-off in the other weights
    for name in a:
        assert torch.allclose(a[name], b[name], rtol=1e-4, atol=atol), (name, a[name], b[name])


def epoch_batches(sampler, batch):
    order = list(sampler)
    return [order[i:i + batch] for i in range(0, len(order), batch)]


def test_context_batches_keep_a_conversations_panels_together_and_see_every_panel_once():
    """`batch_by_context`: each epoch lays the conversations out in a random order with their panels adjacent,
    so a batch of 4 holds one conversation when each has 4 panels, and unequal ones are cut only where a
    conversation ends or a batch does. Every panel is seen once per epoch, and two ranks split the same
    global batches."""
    clusters = [i // 4 for i in range(24)]  # 6 conversations × 4 panels
    sampler = GlobalBatchSampler(range(24), 4, 1, 0, seed=3, clusters=clusters)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = epoch_batches(sampler, 4)
        assert sorted(i for b in batches for i in b) == list(range(24))
        assert all(len({clusters[i] for i in b}) == 1 for b in batches)
        shares = []
        for rank in range(2):
            two = GlobalBatchSampler(range(24), 4, 2, rank, seed=3, clusters=clusters)
            two.set_epoch(epoch)
            shares.append(epoch_batches(two, 2))
        assert [sorted(a + b) for a, b in zip(*shares)] == [sorted(b) for b in batches]
    mixed = GlobalBatchSampler(range(24), 4, 1, 0, seed=3)  # no clusters: panels drawn at random
    assert sum(len({clusters[i] for i in b}) for b in epoch_batches(mixed, 4)) > 6
    sizes = [3, 5, 1, 7, 2]  # unequal conversations: each one's panels form one run of the order
    uneven = [c for c, n in enumerate(sizes) for _ in range(n)]
    order = [uneven[i] for i in GlobalBatchSampler(range(18), 6, 1, 0, seed=0, clusters=uneven)]
    runs = [c for k, c in enumerate(order) if k == 0 or c != order[k - 1]]
    assert sorted(runs) == list(range(len(sizes)))


# --- the shared-prefix training layout --------------------------------------------------------------


def test_shared_prefix_batch_gives_the_full_pass_outputs_and_gradients():
    """Each conversation once, its suggestions from its cache: the same μ, σ and the same LoRA and head
    gradients as every (conversation, suggestion) input in full, for conversations of different lengths."""
    from clicks2pref.models.shared_prefix import collate_items, forward_items

    cfg = rm_config(**{"head.init_std": 0.5})
    cfg.backbone.lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    model = build("garm", cfg)
    model.train()
    other = [{"role": "user", "content": "Is raw cookie dough safe to eat, and why do people worry about it?"}]
    long_ctx = [CTX[0], {"role": "assistant", "content": "word " * 200}]  # truncated: the full layout
    items = [(CTX, "Why?"), (other, "Which doughs are safe raw?"), (long_ctx, "Is this kept whole?"),
             (CTX, "Can I pick two of these options?"), (other, "What kills salmonella?"), (CTX, "Any more?")]
    results = []
    for shared in (False, True):
        batch = collate_items(model, items, shared_prefix=shared)
        assert ("prefix_ids" in batch) == shared
        if shared:
            assert batch["prefix_ids"].shape[0] == 2 and batch["full_rows"].tolist() == [2]
        model.zero_grad()
        out = forward_items(model, batch)
        (out["mu"] * torch.arange(1.0, 7.0)).sum().add(out["sigma"].sum()).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out, grads))
    (full, full_grads), (shared, shared_grads) = results
    for name in ("mu", "sigma"):
        torch.testing.assert_close(shared[name], full[name], rtol=1e-4, atol=1e-5)
    assert set(shared_grads) == set(full_grads) and any("lora" in n for n in full_grads)
    for name, g in full_grads.items():
        torch.testing.assert_close(shared_grads[name], g, rtol=1e-3, atol=1e-5, msg=name)


def test_shared_prefix_batch_takes_the_full_layout_when_it_cannot_share():
    from clicks2pref.models.shared_prefix import collate_items

    model = build("btrm", rm_config(**{"head.max_length": 64}))
    long_ctx = [CTX[0], {"role": "assistant", "content": "word " * 200}]
    assert "prefix_ids" not in collate_items(model, [(long_ctx, "Why?"), (long_ctx, "Is this kept whole?")])
    assert "prefix_ids" not in collate_items(model, [(CTX, "Why?"), (CTX, "How?")], shared_prefix=False)
    assert collate_items(model, [(CTX, "Why?"), (CTX, "How?")])["prefix_ids"].shape[0] == 1


def test_impression_batches_carry_redundancy_discounts_into_the_click_likelihood():
    """`discount` on the examples (the stage's `redundancy_in_training`) reaches the likelihood: all ones changes
    nothing, and g = 0.5 at position 2 gives the likelihood of the halved attraction."""
    from clicks2pref.lit.reward_module import ImpressionCollator
    from clicks2pref.objectives.click_model import click_nll, garm_attraction
    from clicks2pref.models.shared_prefix import forward_items

    cfg = rm_config()
    model = build("garm", cfg).eval()
    module = ClickRewardModule(model, cfg.loss, cfg.optim, cfg.click_model, 3, fixed_examination=[1.0, 0.6, 0.4])
    data = impressions(4, 0)
    collate = ImpressionCollator(model, 3)
    plain = collate([data])
    ones = collate([[{**e, "discount": [1.0, 1.0, 1.0]} for e in data]])
    half = collate([[{**e, "discount": [1.0, 0.5]} for e in data]])  # shorter than the panel: 1 past its end
    assert "discount" not in plain and half["discount"].tolist() == [[1.0, 0.5, 1.0]] * len(data)
    with torch.no_grad():
        nll = lambda batch: float(module.click_loss(batch)[1]["nll"])  # noqa: E731
        out = forward_items(model, plain)
        attraction = garm_attraction(out["mu"], out["sigma"])[plain["items"]]
        by_hand = click_nll(attraction * torch.tensor([1.0, 0.5, 1.0]), torch.tensor([1.0, 0.6, 0.4]),
                            plain["clicks"], plain["lengths"], plain["weights"], "cascade")
        assert nll(ones) == pytest.approx(nll(plain), rel=1e-6)
        assert nll(half) == pytest.approx(float(by_hand), rel=1e-5) and nll(half) != pytest.approx(nll(plain))
