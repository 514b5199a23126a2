"""The click-model reward objective: every impression's likelihood under a cascade with learned examination.

Pairs keep only impressions with a click and a skip above it, and in panels logged in the policy's
own order the clicked item is nearly always the lower one, so a pairwise reward model learns
position. A click model explains every impression, no-clicks included: position k is examined with
probability e_k (learned), an examined suggestion s is clicked with probability a(s), and

- `cascade` (the default): the user scans down and stops at the first click, so an impression with its
  click at position c says "not clicked" about positions above c, "clicked" at c, nothing below;
  a no-click impression says "not clicked" about every position;
- `pbm` (position-based model): every position is an independent Bernoulli(e_k a_k).

GaRM's Gaussian gives the attractiveness: a(s) = P(N(μ, σ²) > N(0, 1)) = Φ(μ / √(1 + σ²)); a BTRM
reward r gives a(s) = sigmoid(r). Only products e_k a(s) are seen, so e is fixed at position 1
(`anchor`, the usual PBM normalisation) and e_k, k > 1, are learned relative to it.

`fit_item_examination` estimates e the classic way, with a free attraction per logged suggestion:
in logs with randomised positions every suggestion is seen at several positions, so e is identified
from the logs alone, and the reward model's attraction need not be fitted before e settles.

Redundancy (optional): a suggestion that repeats one shown above it is clicked less, and a reward that
scores each suggestion alone cannot see that. With `sim_above` (each position's largest similarity to the
positions above it in that impression), an examined suggestion is clicked with probability a(s)·g, where
g = 1 − sigmoid(w (sim_above − b)): w ≥ 0 and the threshold b are fitted with e from the same logs. In
randomised logs the same pair of near-duplicates is seen in both orders, so g is identified beside the
free attractions. The reward then applies g to its own panels (`redundancy_discount`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clicks2pref.config.objectives import CLICK_MODELS

EPS = 1e-6
NOTHING_ABOVE = -1e3  # sim_above of the top position: far below any threshold, so g = 1 there


def garm_attraction(mu: Tensor, sigma: Tensor) -> Tensor:
    """Φ(μ / √(1 + σ²)): the chance a draw of the suggestion's reward beats a standard-normal threshold."""
    return torch.special.ndtr(mu / torch.sqrt(1 + sigma**2))


def btrm_attraction(reward: Tensor) -> Tensor:
    return torch.sigmoid(reward)


def examination(anchor: float, logits: Tensor) -> Tensor:
    """[e_1 = anchor, sigmoid(logits)...]: e_1 fixed, the rest learned."""
    return torch.cat([logits.new_full((1,), anchor), torch.sigmoid(logits)])


def redundancy_discount(sim_above: Tensor, weight: Tensor | float, threshold: Tensor | float) -> Tensor:
    """g = 1 − sigmoid(w (sim_above − b)): the share of a suggestion's attraction left after the ones above it.
    Position 1 has nothing above it: pass `NOTHING_ABOVE` there (g = 1; finite, so gradients stay finite)."""
    return 1 - torch.sigmoid(weight * (sim_above - threshold))


def similarity_above(sim: Tensor, k: int) -> Tensor:
    """[K] largest similarity of each of a panel's first k positions to the positions above it (`NOTHING_ABOVE`
    at the top and past the panel), from the panel's pairwise similarity matrix."""
    out = torch.full((k,), NOTHING_ABOVE, dtype=torch.float64)
    for j in range(1, min(k, sim.shape[0])):
        out[j] = float(sim[j, :j].max())
    return out


def click_nll(attraction: Tensor, exam: Tensor, clicked: Tensor, lengths: Tensor, weights: Tensor,
              model: str = "cascade", discount: Tensor | None = None) -> Tensor:
    """Mean negative log-likelihood per impression.

    attraction [N, K] (per impression, in shown order; values past `lengths` are ignored), exam [K],
    clicked [N, K] 0/1, lengths [N], weights [N] (how many users saw that panel in that order and
    clicked that way); discount [N, K] (optional) multiplies the attraction (`redundancy_discount`).
    """
    if model not in CLICK_MODELS:
        raise ValueError(f"unknown click model {model!r}; accepted: {', '.join(CLICK_MODELS)}")
    n, k = attraction.shape
    if discount is not None:
        attraction = attraction * discount
    p = (exam[None, :k] * attraction).clamp(EPS, 1 - EPS)
    positions = torch.arange(k, device=p.device)[None, :]
    shown = positions < lengths[:, None]
    if model == "cascade":  # positions up to and including the first click were examined
        has_click = clicked.any(dim=1)
        first = torch.where(has_click, clicked.float().argmax(dim=1), lengths)
        seen = shown & (positions <= first[:, None])
    else:
        seen = shown
    ll = torch.where(clicked.bool(), torch.log(p), torch.log1p(-p)) * seen
    return -(ll.sum(dim=1) * weights).sum() / weights.sum()


def fit_item_examination(items: Tensor, clicks: Tensor, lengths: Tensor, weights: Tensor, n_items: int,
                         anchor: float = 1.0, model: str = "cascade", steps: int = 2000, lr: float = 0.05,
                         sim_above: Tensor | None = None, threshold_init: float = 1.0, weight_init: float = 10.0
                         ) -> tuple[list[float], dict | None]:
    """e_k of the click model with one free attraction per item (`items` [N, K] indexes them), and with
    `sim_above` [N, K] the redundancy term's {"weight", "threshold"} (else None), by Adam on `click_nll`;
    deterministic (no sampling, fixed start). The threshold starts at `threshold_init` (no discount below it)."""
    raw_a = torch.zeros(n_items, dtype=torch.float64, requires_grad=True)
    raw_e = torch.zeros(items.shape[1] - 1, dtype=torch.float64, requires_grad=True)
    params = [raw_a, raw_e]
    if sim_above is not None:  # w = softplus(raw_w) ≥ 0: a repeat never earns more than it would alone
        raw_w = torch.tensor(float(weight_init), dtype=torch.float64)
        raw_w = (raw_w + torch.log(-torch.expm1(-raw_w))).requires_grad_(True)
        b = torch.tensor(float(threshold_init), dtype=torch.float64, requires_grad=True)
        params += [raw_w, b]
        sim_above = sim_above.to(torch.float64)
    optimizer = torch.optim.Adam(params, lr=lr)
    w = weights.to(torch.float64)
    for _ in range(steps):
        optimizer.zero_grad()
        discount = None if sim_above is None else redundancy_discount(sim_above, F.softplus(raw_w), b)
        loss = click_nll(torch.sigmoid(raw_a)[items], examination(anchor, raw_e), clicks, lengths, w, model, discount)
        loss.backward()
        optimizer.step()
    exam = [float(v) for v in examination(anchor, raw_e).detach()]
    if sim_above is None:
        return exam, None
    return exam, {"weight": float(F.softplus(raw_w.detach())), "threshold": float(b.detach())}


def panel_click_probability(attraction: Tensor, exam: Tensor) -> Tensor:
    """P(at least one click) = 1 − Π_k (1 − e_k a_k) over the last dimension (either click model)."""
    k = attraction.shape[-1]
    return 1 - torch.prod(1 - exam[:k] * attraction, dim=-1)


def logit(p: float) -> float:
    p = min(max(p, EPS), 1 - EPS)
    return float(torch.logit(torch.tensor(p)))



def batch_loss(head, out: dict[str, Tensor], batch: dict, cfg, *, examination: Tensor, model: str = "cascade"
               ) -> tuple[list[tuple[Tensor, Tensor]], dict]:
    """The impressions' NLL (a mean weighted by user counts) and the head's regulariser λ·R (GaRM's, a mean over
    the batch's suggestions; the same R as the pairwise loss), each with the count it averages over.

    `out`: the head's outputs per distinct suggestion; `batch`: `items` [N, K] index them per shown position,
    `clicks`, `lengths`, `weights` and optionally `discount` (`lit.reward_module.ImpressionCollator`);
    `cfg`: reward_model.loss; `examination`: e [K]; `model`: cascade | pbm."""
    attraction = head.attraction(out)
    discount = batch.get("discount")
    nll = click_nll(attraction[batch["items"]], examination, batch["clicks"], batch["lengths"], batch["weights"],
                    model, discount=discount.to(attraction.dtype) if discount is not None else None)
    terms, parts = [(nll, batch["weights"].sum().double())], {"nll": nll.detach()}
    reg = head.regularizer(out, cfg)
    if reg is not None:
        lam, r = reg
        terms.append((lam * r, torch.tensor(float(attraction.shape[0]))))
        parts["reg"] = r.detach()
    return terms, parts
