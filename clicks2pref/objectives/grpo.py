"""GRPO math (SPEC 5.5): group-relative advantages, k3 KL, clipped surrogate and its aggregation.

Reproduces TRL 1.16's `GRPOTrainer` (`_generate_and_score_completions` for advantages, `_compute_loss`
for the loss) on one process, so our Lightning module and TRL give the same numbers for the same
settings; tests/test_grpo_objective.py checks this against TRL's own code. Knob names follow GRPOConfig:
`group_size` = `num_generations`, `scale_rewards`, `beta`, `epsilon`, `epsilon_high`, `loss_type`,
`importance_sampling_level`, `use_bias_correction_kl`, `max_completion_length`.

Loss-type mapping (ours → TRL):
    token    ↔ "bnpo" (sum over tokens / number of active tokens in the batch); also "dapo", which is the
               same division but by the token count of the whole generation batch: pass that count as
               `num_tokens` (TRL: num_items_in_batch) when the batch is split into micro-batches.
    sequence ↔ "grpo" (mean over each sequence's tokens, then mean over sequences)
    dr_grpo  ↔ "dr_grpo" (sum over tokens / (batch size × max_completion_length))
TRL's names are accepted as aliases. TRL additionally divides by the gradient-accumulation steps; that
belongs to the training loop, so these functions return the un-divided loss (TRL's `policy_loss`).
"""

import torch
from torch import Tensor

LOSS_TYPES = {  # our loss_type, or TRL's alias → how per-token losses are aggregated
    "token": "token", "bnpo": "token", "dapo": "token",
    "sequence": "sequence", "grpo": "sequence",
    "dr_grpo": "dr_grpo",
}
SCALE_REWARDS = {"group": "group", "batch": "batch", "none": "none", True: "group", False: "none"}


def _nanstd(x: Tensor, dim: int | None = None) -> Tensor:
    """Bessel-corrected std ignoring NaNs, NaN when fewer than two values (as trl.trainer.utils.nanstd)."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    var = torch.nanmean((x - mean) ** 2, dim=dim)
    count = (~torch.isnan(x)).sum(dim=dim)
    var = torch.where(count > 1, var * count / (count - 1), torch.full_like(var, float("nan")))
    return torch.sqrt(var)


def group_advantages(
    rewards: Tensor, group_size: int, scale_rewards: str | bool = "group", eps: float = 1e-4
) -> tuple[Tensor, Tensor]:
    """Advantage = reward − mean of its group, divided by (std + eps) unless `scale_rewards="none"`.

    `rewards` is flat, groups contiguous (the G samples of a prompt side by side). Std is unbiased
    (Bessel); "group" uses each group's std, "batch" the std of the whole batch (the mean stays per
    group). NaN rewards (unscorable samples) are left out of mean and std and get advantage 0.
    Returns (advantages, std) with std expanded to one value per sample, the std TRL tests for zero:
    `frac_reward_zero_std = isclose(std, 0).float().mean()`.
    """
    scale = SCALE_REWARDS.get(scale_rewards)
    if scale is None:
        raise ValueError(f"unknown scale_rewards {scale_rewards!r}; accepted: group, batch, none")
    grouped = rewards.view(-1, group_size)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(group_size)
    if scale == "batch":
        std = _nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    elif group_size > 1:  # "none" still computes the group std, for logging
        std = _nanstd(grouped, dim=1).repeat_interleave(group_size)
    else:
        std = torch.zeros_like(rewards)
    advantages = rewards - mean
    if scale != "none":
        advantages = advantages / (std + eps)
    return torch.nan_to_num(advantages, nan=0.0), std


def per_token_kl(logps: Tensor, ref_logps: Tensor) -> Tensor:
    """k3 estimator of KL(π ‖ π_ref) per token: exp(ref − logp) − (ref − logp) − 1 (≥ 0, unbiased)."""
    d = ref_logps - logps
    return torch.exp(d) - d - 1


def grpo_loss(
    logps: Tensor,
    old_logps: Tensor | None,
    ref_logps: Tensor | None,
    advantages: Tensor,
    completion_mask: Tensor,
    beta: float,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    loss_type: str = "token",
    max_completion_length: int | None = None,
    importance_sampling_level: str = "token",
    use_bias_correction_kl: bool = True,
    num_tokens: Tensor | float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped-surrogate GRPO loss plus β·KL, aggregated by `loss_type` (see module docstring).

    Shapes: log-probs and mask (B, T), advantages (B,). `old_logps=None` means on-policy (ratio 1, as
    TRL's `per_token_logps.detach()`). With `use_bias_correction_kl` (TRL's default) the KL term is
    multiplied by the importance ratio. Stats (detached): `kl` (only when beta != 0), and
    `clip_ratio/{low_mean,high_mean,region_mean,low_min,high_max}` as TRL logs them on one process.
    """
    kind = LOSS_TYPES.get(loss_type)
    if kind is None:
        raise ValueError(f"unknown loss_type {loss_type!r}; accepted: {', '.join(LOSS_TYPES)}")
    if kind == "dr_grpo" and max_completion_length is None:
        raise ValueError("loss_type 'dr_grpo' needs max_completion_length (its constant normaliser)")
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    mask = completion_mask.to(logps.dtype)
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    old_logps = logps.detach() if old_logps is None else old_logps

    log_ratio = logps - old_logps
    if importance_sampling_level == "token":
        log_w = log_ratio
    elif importance_sampling_level == "sequence":  # GSPO: one ratio per sequence, from its mean log-ratio
        log_w = ((log_ratio * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).unsqueeze(-1)
    else:
        raise ValueError(f"unknown importance_sampling_level {importance_sampling_level!r}; accepted: token, "
                         "sequence")
    coef_1 = torch.exp(log_w)
    coef_2 = torch.clamp(coef_1, 1 - epsilon, 1 + epsilon_high)
    per_token_loss = -torch.min(coef_1 * adv, coef_2 * adv)
    if beta != 0.0:
        kl = per_token_kl(logps, ref_logps)
        if use_bias_correction_kl:
            kl = kl * coef_1
        per_token_loss = per_token_loss + beta * kl

    if kind == "sequence":
        loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif kind == "token":
        denom = mask.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=mask.dtype)
        loss = (per_token_loss * mask).sum() / denom.clamp(min=1.0)
    else:
        loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * max_completion_length)

    def masked_mean(x):  # over active tokens, or over sequences when x has one value per sequence
        x = x.detach()
        if x.shape[1] == 1:
            return x.mean()
        return (x * mask).sum() / mask.sum().clamp(min=1.0)

    def seq_means(x):
        return x.squeeze(1) if x.shape[1] == 1 else (x * mask).sum(-1) / mask.sum(-1)

    low = ((coef_1 < 1 - epsilon) & (adv < 0)).to(logps.dtype)
    high = ((coef_1 > 1 + epsilon_high) & (adv > 0)).to(logps.dtype)
    stats = {
        "clip_ratio/low_mean": masked_mean(low),
        "clip_ratio/high_mean": masked_mean(high),
        "clip_ratio/region_mean": masked_mean(torch.maximum(low, high)),
        "clip_ratio/low_min": _nan_reduce(seq_means(low), torch.min),
        "clip_ratio/high_max": _nan_reduce(seq_means(high), torch.max),
    }
    if beta != 0.0:
        stats["kl"] = masked_mean(kl)
    return loss, stats


def _nan_reduce(x: Tensor, op) -> Tensor:
    """min/max ignoring NaN (empty sequences), NaN if all are NaN, as TRL's nanmin/nanmax."""
    x = x.detach()
    keep = x[~torch.isnan(x)]
    return op(keep) if keep.numel() else torch.tensor(float("nan"), dtype=x.dtype, device=x.device)
