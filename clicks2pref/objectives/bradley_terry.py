"""Bradley-Terry reward-model loss (the BTRM baseline), written to match TRL's RewardTrainer."""

import torch
import torch.nn.functional as F
from torch import Tensor


def bt_loss(
    r_chosen: Tensor,
    r_rejected: Tensor,
    margin: Tensor | None = None,
    center_rewards_coefficient: float | None = None,
) -> Tensor:
    """−log σ(r_c − r_r − margin), averaged over pairs, plus TRL's optional reward-centring term.

    Same formula as `trl.RewardTrainer.compute_loss`, so a BTRM trained here and one trained with TRL agree.
    """
    delta = r_chosen - r_rejected if margin is None else r_chosen - r_rejected - margin
    loss = -F.logsigmoid(delta).mean()
    if center_rewards_coefficient is not None:
        loss = loss + center_rewards_coefficient * torch.mean((r_chosen + r_rejected) ** 2)
    return loss


def bt_probability(r_chosen: Tensor, r_rejected: Tensor) -> Tensor:
    """P(chosen ≻ rejected) = σ(r_c − r_r) under the Bradley-Terry model."""
    return torch.sigmoid(r_chosen - r_rejected)
