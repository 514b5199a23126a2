"""Reward-model calibration (SPEC 5.6): ECE, reliability diagram bins, accuracy by score decile.

A pairwise prediction is "chosen ≻ rejected"; its confidence is the model's probability for the side
it picks, so confidences lie in [0.5, 1] and `correct` says whether it picked the chosen item. GaRM's
claim is that these confidences are calibrated; BTRM's σ(|Δ|) typically is over-confident.
"""

import torch
from torch import Tensor
from torchmetrics.classification import BinaryCalibrationError

from clicks2pref.objectives.gaussian import garm_z


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> Tensor:
    """L1 ECE with `n_bins` equal-width bins on [0, 1] (torchmetrics BinaryCalibrationError).

    `probs` is the confidence of each prediction and `labels` 1 where it was right (or, equally, the
    probability of the positive class and the 0/1 target).
    """
    metric = BinaryCalibrationError(n_bins=n_bins, norm="l1").to(probs.device)
    return metric(probs, labels.long())


def reliability_bins(probs: Tensor, labels: Tensor, n_bins: int = 15) -> dict[str, Tensor]:
    """Per equal-width bin: `lower`, `upper`, mean `confidence`, `accuracy` (NaN when empty), `count`.

    Bins are [lower, upper) like torchmetrics'; a probability of exactly 1 is put in the last bin
    (torchmetrics gives it a bin of its own, so ECE from these bins differs only when some p == 1).
    """
    probs, labels = probs.detach().flatten(), labels.detach().flatten().double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=probs.dtype, device=probs.device)  # torchmetrics' edges
    idx = (torch.bucketize(probs, edges, right=True) - 1).clamp(0, n_bins - 1)
    probs = probs.double()
    def bin_sum(x):
        return torch.zeros(n_bins, dtype=x.dtype, device=x.device).scatter_add_(0, idx, x)

    count = bin_sum(torch.ones_like(probs))
    conf, acc = bin_sum(probs) / count, bin_sum(labels) / count
    return {"lower": edges[:-1], "upper": edges[1:], "confidence": conf, "accuracy": acc,
            "count": count.long()}


def accuracy_by_decile(scores: Tensor, correct: Tensor, n: int = 10) -> dict[str, Tensor]:
    """Sort by score, split into `n` near-equal groups (lowest first): mean `score`, `accuracy`, `count`.

    Scores are confidence, reference perplexity, or anything else accuracy should be read against.
    """
    scores, correct = scores.detach().flatten().double(), correct.detach().flatten().double()
    order = torch.argsort(scores, stable=True)
    parts = [(scores[i], correct[i]) for i in torch.tensor_split(order, n)]
    return {
        "score": torch.stack([s.mean() for s, _ in parts]),
        "accuracy": torch.stack([c.mean() for _, c in parts]),
        "count": torch.tensor([len(s) for s, _ in parts]),
    }


def garm_confidence(mu_c: Tensor, sigma_c: Tensor, mu_r: Tensor, sigma_r: Tensor) -> tuple[Tensor, Tensor]:
    """GaRM pairwise (confidence, correct): Φ(|z|), and z > 0 (it ranks the chosen item first)."""
    z = garm_z(mu_c, sigma_c, mu_r, sigma_r)
    return torch.special.ndtr(z.abs()), z > 0


def btrm_confidence(r_chosen: Tensor, r_rejected: Tensor) -> tuple[Tensor, Tensor]:
    """BTRM pairwise (confidence, correct): σ(|Δ|), and Δ = r_c − r_r > 0."""
    delta = r_chosen - r_rejected
    return torch.sigmoid(delta.abs()), delta > 0
