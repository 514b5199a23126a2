"""GRPO math (SPEC 5.5): hand-computed values, and parity with the installed TRL's GRPOTrainer."""

import math
import statistics
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from clicks2pref.objectives.grpo import group_advantages, grpo_loss, per_token_kl

# ---------------------------------------------------------------- by hand: 2 sequences × 2 tokens

LOGPS = [[-1.0, -2.0], [-0.5, -3.0]]
OLD = [[-1.1, -1.5], [-0.5, -3.0]]
REF = [[-1.2, -2.1], [-0.4, -3.0]]
MASK = [[1, 1], [1, 0]]
ADV = [1.0, -0.5]


def _by_hand(beta, eps_low, eps_high, old=OLD):
    """Per-token losses for the example, one token at a time."""
    out = {}
    for i in range(2):
        for j in range(2):
            if not MASK[i][j]:
                continue
            ratio = math.exp(LOGPS[i][j] - old[i][j])
            clipped = min(max(ratio, 1 - eps_low), 1 + eps_high)
            loss = -min(ratio * ADV[i], clipped * ADV[i])
            d = REF[i][j] - LOGPS[i][j]
            kl = (math.exp(d) - d - 1) * ratio  # TRL's use_bias_correction_kl (default on)
            out[i, j] = loss + beta * kl
    return out


def _ours(old=OLD, **kw):
    T = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    return grpo_loss(T(LOGPS), T(old), T(REF), T(ADV), torch.tensor(MASK), **kw)


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_grpo_loss_by_hand(beta):
    tok = _by_hand(beta, 0.2, 0.28)
    token = (tok[0, 0] + tok[0, 1] + tok[1, 0]) / 3
    sequence = ((tok[0, 0] + tok[0, 1]) / 2 + tok[1, 0] / 1) / 2
    dr_grpo = (tok[0, 0] + tok[0, 1] + tok[1, 0]) / (2 * 4)
    kw = dict(beta=beta, epsilon=0.2, epsilon_high=0.28)
    assert _ours(loss_type="token", **kw)[0].item() == pytest.approx(token, abs=1e-12)
    assert _ours(loss_type="sequence", **kw)[0].item() == pytest.approx(sequence, abs=1e-12)
    loss, _ = _ours(loss_type="dr_grpo", max_completion_length=4, **kw)
    assert loss.item() == pytest.approx(dr_grpo, abs=1e-12)
    assert _ours(loss_type="token", num_tokens=6, **kw)[0].item() == pytest.approx(token * 3 / 6, abs=1e-12)


def test_grpo_stats_by_hand():
    # Token (0,1) has ratio e^-0.5 < 0.8 but A > 0, so it is not clipped (the min keeps the ratio); this π_old
    # gives token (1,0) ratio e^-0.5 with A < 0: low-clipped. Nothing exceeds 1.28.
    old = [[-1.1, -1.5], [0.0, -3.0]]
    loss, stats = _ours(old, beta=0.04, epsilon=0.2, epsilon_high=0.28, loss_type="token")
    tok = _by_hand(0.04, 0.2, 0.28, old)
    assert loss.item() == pytest.approx((tok[0, 0] + tok[0, 1] + tok[1, 0]) / 3, abs=1e-12)
    assert stats["clip_ratio/low_mean"].item() == pytest.approx(1 / 3)
    assert stats["clip_ratio/high_mean"].item() == 0.0
    assert stats["clip_ratio/region_mean"].item() == pytest.approx(1 / 3)
    assert stats["clip_ratio/low_min"].item() == 0.0  # sequence 0 has no low-clipped token
    assert stats["clip_ratio/high_max"].item() == 0.0
    ratio = [[math.exp(0.1), math.exp(-0.5)], [math.exp(-0.5)]]
    kl = [(math.exp(REF[i][j] - LOGPS[i][j]) - (REF[i][j] - LOGPS[i][j]) - 1) * ratio[i][j]
          for i, j in [(0, 0), (0, 1), (1, 0)]]
    assert stats["kl"].item() == pytest.approx(sum(kl) / 3, abs=1e-12)


def test_per_token_kl_is_k3():
    kl = per_token_kl(torch.tensor([-1.0, -2.0]).double(), torch.tensor([-1.5, -2.0]).double())
    assert kl.tolist() == pytest.approx([math.exp(-0.5) + 0.5 - 1, 0.0], abs=1e-12)


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 2.0, 4.0, 3.0, 3.0, 3.0], dtype=torch.float64)
    g1 = [1.0, 2.0, 4.0]
    m1, s1 = statistics.mean(g1), statistics.stdev(g1)  # stdev = unbiased (n − 1), as TRL
    adv, std = group_advantages(r, 3, "group")
    assert adv.tolist() == pytest.approx([(x - m1) / (s1 + 1e-4) for x in g1] + [0.0] * 3, abs=1e-12)
    assert std.tolist() == pytest.approx([s1] * 3 + [0.0] * 3, abs=1e-12)
    sb = statistics.stdev(r.tolist())
    adv, _ = group_advantages(r, 3, "batch")  # batch std, group mean
    assert adv.tolist() == pytest.approx([(x - m1) / (sb + 1e-4) for x in g1] + [0.0] * 3, abs=1e-12)
    adv, _ = group_advantages(r, 3, "none")
    assert adv.tolist() == pytest.approx([x - m1 for x in g1] + [0.0] * 3, abs=1e-12)


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="token"):
        _ours(beta=0.0, loss_type="ppo")
    with pytest.raises(ValueError, match="max_completion_length"):
        _ours(beta=0.0, loss_type="dr_grpo")
    with pytest.raises(ValueError, match="group, batch, none"):
        group_advantages(torch.zeros(4), 2, "global")


# ---------------------------------------------------------------- parity with TRL's own code


@pytest.fixture(scope="module")
def trl_grpo():
    return pytest.importorskip("trl.trainer.grpo_trainer", reason="trl not installed: GRPO parity needs it")


def _trl_advantages(rewards, num_generations, scale_rewards, nanstd):
    """TRL 1.16 computes advantages inline in `_generate_and_score_completions` (a method that also generates
    and scores), so it cannot be called alone. This is a line-by-line copy of its `sum_then_normalize` branch
    (grpo_trainer.py, "if self.multi_objective_aggregation == 'sum_then_normalize'") with TRL's own nanstd."""
    mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)
    mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
    if scale_rewards in ["group", "none"]:
        if num_generations > 1:
            std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)
            std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
        else:
            std_rewards = torch.zeros_like(rewards)
    elif scale_rewards == "batch":
        std_rewards = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    advantages = rewards - mean_grouped_rewards
    if scale_rewards != "none":
        advantages = advantages / (std_rewards + 1e-4)
    is_std_zero = torch.isclose(std_rewards, torch.zeros_like(std_rewards))
    return torch.nan_to_num(advantages, nan=0.0), is_std_zero


def _trl_loss(trl_grpo, logps, old, ref, adv, mask, *, beta, epsilon, epsilon_high, loss_type,
              max_completion_length, importance_sampling_level="token", use_bias_correction_kl=True,
              num_items_in_batch=None, grad_accum=1, steps_per_generation=1):
    """Runs TRL's real `GRPOTrainer._compute_loss` on a bare instance: the model forward is stubbed to return
    `logps`, accelerate's gather/reduce are the identity (one process), and every optional feature it checks
    (entropy mask/bonus, off-policy mask, vLLM IS correction, MoE aux loss, two-sided delta) is off."""
    trainer = object.__new__(trl_grpo.GRPOTrainer)
    trainer.model = SimpleNamespace(training=True)
    trainer.accelerator = SimpleNamespace(num_processes=1, gather=lambda x: x, reduce=lambda x, reduction: x)
    trainer.args = SimpleNamespace(use_bias_correction_kl=use_bias_correction_kl, delta=None,
                                   steps_per_generation=steps_per_generation)
    trainer._get_per_token_logps_and_entropies = lambda *a, **k: (logps, torch.zeros_like(logps), None)
    trainer.current_gradient_accumulation_steps = grad_accum
    trainer.beta, trainer.loss_type = beta, loss_type
    trainer.importance_sampling_level = importance_sampling_level
    trainer.epsilon_low, trainer.epsilon_high = epsilon, epsilon_high
    trainer.max_completion_length = max_completion_length
    trainer.top_entropy_quantile, trainer.off_policy_mask_threshold = 1.0, None
    trainer.use_vllm, trainer.vllm_importance_sampling_correction = False, False
    trainer.aux_loss_enabled, trainer._entropy_bonus_enabled = False, False
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    B, T = logps.shape
    inputs = {
        "prompt_ids": torch.zeros(B, 1, dtype=torch.long), "prompt_mask": torch.ones(B, 1, dtype=torch.long),
        "completion_ids": torch.zeros(B, T, dtype=torch.long), "completion_mask": mask, "advantages": adv,
        "ref_per_token_logps": ref,
        "num_items_in_batch": mask.sum() if num_items_in_batch is None else num_items_in_batch,
    }
    if old is not None:
        inputs["old_per_token_logps"] = old
    loss = trl_grpo.GRPOTrainer._compute_loss(trainer, None, inputs)
    return loss, {k: v[0] for k, v in trainer._metrics["train"].items()}


def _batch(seed, B=8, T=7, G=4):
    """Random log-probs, a π_old and π_ref that differ enough to clip, right-padded masks, and rewards with
    one constant group (zero std) and one binary group."""
    g = torch.Generator().manual_seed(seed)
    logps = -torch.rand(B, T, generator=g) * 3
    old = logps + 0.3 * torch.randn(B, T, generator=g)
    ref = logps + 0.2 * torch.randn(B, T, generator=g)
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[0] = T
    mask = (torch.arange(T) < lengths[:, None]).long()
    rewards = torch.randn(B, generator=g)
    rewards[G:2 * G] = 0.5  # a group whose samples all score the same
    return logps, old, ref, mask, rewards


@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
@pytest.mark.parametrize("with_nan", [False, True])
def test_advantages_match_trl(trl_grpo, scale_rewards, with_nan):
    from trl.trainer.utils import nanstd

    *_, rewards = _batch(0, B=12)
    if with_nan:
        rewards[1] = float("nan")  # a completion no reward function could score
    theirs, is_std_zero = _trl_advantages(rewards, 4, scale_rewards, nanstd)
    ours, std = group_advantages(rewards, 4, scale_rewards)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    assert torch.equal(torch.isclose(std, torch.zeros_like(std)), is_std_zero)


LOSS_TYPES = [("token", "bnpo"), ("token", "dapo"), ("sequence", "grpo"), ("dr_grpo", "dr_grpo")]


@pytest.mark.parametrize("ours_type, trl_type", LOSS_TYPES)
@pytest.mark.parametrize("scale_rewards", ["group", "batch", "none"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
@pytest.mark.parametrize("epsilon_high", [0.2, 0.28])
def test_loss_matches_trl_compute_loss(trl_grpo, ours_type, trl_type, scale_rewards, beta, epsilon_high):
    logps, old, ref, mask, rewards = _batch(1)
    adv, _ = group_advantages(rewards, 4, scale_rewards)
    T = logps.shape[1]
    setting = dict(beta=beta, epsilon=0.2, epsilon_high=epsilon_high, max_completion_length=T + 3)
    mine = logps.clone().requires_grad_()
    ours, stats = grpo_loss(mine, old, ref, adv, mask, loss_type=ours_type, **setting)
    theirs_logps = logps.clone().requires_grad_()
    theirs, metrics = _trl_loss(trl_grpo, theirs_logps, old, ref, adv, mask, loss_type=trl_type, **setting)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    ours.backward()
    theirs.backward()
    torch.testing.assert_close(mine.grad, theirs_logps.grad, atol=1e-6, rtol=0)
    assert metrics["clip_ratio/region_mean"] > 0  # the example does exercise clipping
    for name in ["kl", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean",
                 "clip_ratio/low_min", "clip_ratio/high_max"]:
        assert (name in stats) == (name in metrics), name
        if name in stats:
            assert stats[name].item() == pytest.approx(metrics[name], abs=1e-6), name


@pytest.mark.parametrize("variant", [
    dict(loss_type="grpo", importance_sampling_level="sequence"),
    dict(loss_type="bnpo", use_bias_correction_kl=False),
    dict(loss_type="dr_grpo", on_policy=True),
])
def test_loss_variants_match_trl(trl_grpo, variant):
    variant = dict(variant)
    logps, old, ref, mask, rewards = _batch(2)
    old = None if variant.pop("on_policy", False) else old
    adv, _ = group_advantages(rewards, 4, "group")
    setting = dict(beta=0.04, epsilon=0.2, epsilon_high=0.28, max_completion_length=logps.shape[1], **variant)
    ours, stats = grpo_loss(logps, old, ref, adv, mask, **setting)
    theirs, metrics = _trl_loss(trl_grpo, logps, old, ref, adv, mask, **setting)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    assert stats["kl"].item() == pytest.approx(metrics["kl"], abs=1e-6)
    region = "clip_ratio/region_mean"
    assert stats[region].item() == pytest.approx(metrics[region], abs=1e-6)


def test_dapo_over_micro_batches_matches_trl(trl_grpo):
    """TRL's "dapo" divides each micro-batch by the generation batch's token count, as `num_tokens` does;
    the micro-batch losses then add up to the whole batch's token-level loss."""
    logps, old, ref, mask, rewards = _batch(3)
    adv, _ = group_advantages(rewards, 4, "group")
    setting = dict(beta=0.04, epsilon=0.2, epsilon_high=0.28, max_completion_length=None)
    total = mask.sum()
    parts = []
    for half in (slice(0, 4), slice(4, 8)):
        args = (logps[half], old[half], ref[half], adv[half], mask[half])
        ours, _ = grpo_loss(*args, loss_type="token", num_tokens=total, **setting)
        theirs, _ = _trl_loss(trl_grpo, *args, loss_type="dapo", num_items_in_batch=total, grad_accum=2,
                              steps_per_generation=2, **setting)
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
        parts.append(ours)
    whole, _ = grpo_loss(logps, old, ref, adv, mask, loss_type="token", **setting)
    torch.testing.assert_close(parts[0] + parts[1], whole, atol=1e-6, rtol=0)
