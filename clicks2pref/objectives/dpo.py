"""DPO losses on summed sequence log-probabilities, as TRL 1.16's `DPOTrainer` computes them.

A policy π and a frozen reference π_ref score a chosen and a rejected completion of the same prompt.
The implicit reward of a completion is r = β·(log π − log π_ref) (Rafailov et al. 2023), and every loss
here is a function of the margin Δ = (log π_c − log π_ref,c) − (log π_r − log π_ref,r), i.e. r_c − r_r
divided by β. Knob names are DPOConfig's: `beta`, `loss_type`, `label_smoothing`.

Loss types (names as TRL's `loss_type`; ε = `label_smoothing`):
    sigmoid       −log σ(β·Δ): the DPO paper. With ε > 0 it is conservative DPO (labels flipped with
                  probability ε): −(1 − ε)·log σ(β·Δ) − ε·log σ(−β·Δ), as TRL's `sigmoid` before 1.0.
                  TRL 1.16's `sigmoid` no longer reads `label_smoothing`; at ε = 0 the two are the same.
    hinge         max(0, 1 − β·Δ): SLiC's hinge, 1/β is the margin asked of Δ.
    ipo           (Δ̄ − 1/(2β))², IPO (Azar et al. 2023, eq. 17; β is its τ). Δ̄ is the margin of per-token
                  mean log-ratios: each side's log-ratio divided by its completion length, as TRL does
                  (without it the squared loss grows with length).
    robust        [−(1 − ε)·log σ(β·Δ) + ε·log σ(−β·Δ)] / (1 − 2ε): robust DPO (Chowdhury et al. 2024), an
                  unbiased loss when labels are flipped with probability ε < 1/2.
    sigmoid_norm  −log σ(β·Δ̄): the sigmoid loss on the per-token mean margin of `ipo`.

Click-derived pairs are noisy labels, which is why the two label-smoothed variants are offered.
"""

import torch
import torch.nn.functional as F
from torch import Tensor


def sigmoid_loss(margin: Tensor, *, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """−(1 − ε)·log σ(β·Δ) − ε·log σ(−β·Δ) per pair; ε = 0 is DPO, ε > 0 conservative DPO."""
    z = beta * margin
    return -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def hinge_loss(margin: Tensor, *, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """max(0, 1 − β·Δ) per pair: no gradient once the margin exceeds 1/β."""
    return torch.relu(1 - beta * margin)


def ipo_loss(margin: Tensor, *, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """(Δ̄ − 1/(2β))² per pair: regresses the margin onto a finite target, so it cannot grow without bound."""
    return (margin - 1 / (2 * beta)) ** 2


def robust_loss(margin: Tensor, *, beta: float, label_smoothing: float = 0.0) -> Tensor:
    """Robust DPO per pair: its expectation over labels flipped with probability ε is the clean DPO loss."""
    z = beta * margin
    clean = -(1 - label_smoothing) * F.logsigmoid(z)
    flipped = -label_smoothing * F.logsigmoid(-z)
    return (clean - flipped) / (1 - 2 * label_smoothing)


LOSS_TYPES = {  # TRL's loss_type → loss of the margin
    "sigmoid": sigmoid_loss,
    "hinge": hinge_loss,
    "ipo": ipo_loss,
    "robust": robust_loss,
    "sigmoid_norm": sigmoid_loss,
}
LENGTH_NORMALISED = ("ipo", "sigmoid_norm")  # their margin is of per-token mean log-ratios
LABEL_SMOOTHED = ("sigmoid", "robust")  # the types that read label_smoothing, which must lie in [0, 0.5)


def sequence_logps(per_token_logps: Tensor, completion_mask: Tensor) -> tuple[Tensor, Tensor]:
    """(summed log-prob of each completion, its number of tokens) from (B, T) per-token log-probs.

    Positions outside the mask are dropped with `where`, not multiplied by 0, so padding that holds −inf or
    NaN cannot leak into the sum. The lengths are what `ipo` and `sigmoid_norm` divide by; sum / length
    is the per-token mean log-prob.
    """
    mask = completion_mask.bool()
    summed = torch.where(mask, per_token_logps, torch.zeros_like(per_token_logps)).sum(-1)
    return summed, mask.sum(-1).to(per_token_logps.dtype)


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(loss per pair, chosen rewards, rejected rewards); all four log-prob inputs are (B,) sequence sums.

    The training loss is the mean of the first (TRL's). Rewards are β·(log π − log π_ref) of the summed
    log-probs for every loss type (TRL logs the same), detached: they are for logging and `dpo_stats`.
    `ipo` and `sigmoid_norm` need the completion lengths (from `sequence_logps`); a length below 1 counts
    as 1, as in TRL. `label_smoothing` is read by `sigmoid` and `robust` only; any other type refuses a
    non-zero value rather than ignore it.
    """
    loss_fn = LOSS_TYPES.get(loss_type)
    if loss_fn is None:
        raise ValueError(f"unknown loss_type {loss_type!r}; accepted: {', '.join(LOSS_TYPES)}")
    if loss_type in LABEL_SMOOTHED and not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must lie in [0, 0.5) for loss_type {loss_type!r}, got {label_smoothing}")
    if loss_type not in LABEL_SMOOTHED and label_smoothing != 0.0:
        raise ValueError(f"loss_type {loss_type!r} does not use label_smoothing; set it to 0 or use one of: "
                         f"{', '.join(LABEL_SMOOTHED)}")
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    if loss_type in LENGTH_NORMALISED:
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError(f"loss_type {loss_type!r} needs chosen_lengths and rejected_lengths (per-token means)")
        margin = (chosen_logratios / chosen_lengths.clamp(min=1.0)
                  - rejected_logratios / rejected_lengths.clamp(min=1.0))
    else:
        margin = chosen_logratios - rejected_logratios
    losses = loss_fn(margin, beta=beta, label_smoothing=label_smoothing)
    return losses, beta * chosen_logratios.detach(), beta * rejected_logratios.detach()


def dpo_stats(chosen_rewards: Tensor, rejected_rewards: Tensor) -> dict[str, Tensor]:
    """Batch means under TRL's metric names: `rewards/chosen`, `rewards/rejected`, `rewards/accuracies`
    (share of pairs whose chosen reward is strictly higher) and `rewards/margins`."""
    return {
        "rewards/chosen": chosen_rewards.mean(),
        "rewards/rejected": rejected_rewards.mean(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).to(chosen_rewards.dtype).mean(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean(),
    }
