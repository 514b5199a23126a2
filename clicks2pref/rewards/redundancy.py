"""The redundancy term in a panel score: each suggestion's share g of its click probability after the ones above it.

The reward models score suggestions one at a time; the term, fitted beside their examination on the logs
(`reward_model.click_model.redundancy`, `clicks2pref.objectives.click_model`), is what lets a panel score see
that the second of two near-identical questions earns few clicks.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from clicks2pref.objectives.click_model import redundancy_discount, similarity_above
from clicks2pref.models.similarity import PanelSimilarity


def resolve_redundancy(wanted: bool, model, resources) -> tuple[Optional[dict], Optional[PanelSimilarity]]:
    """(the model's learned term, the similarity it was fitted with, shared through `resources.similarities`)
    when `wanted` and the model has one, else (None, None)."""
    term = getattr(model, "redundancy", None) if wanted else None
    if not term:
        return None, None
    return term, resources.similarities.setdefault(term["embedder"], PanelSimilarity(term["embedder"]))


def redundancy_discounts(panels: Sequence[Sequence[str]], redundancy: Optional[dict], similarity
                         ) -> Optional[list[list[float]]]:
    """g_k of every suggestion under a learned term ({"weight", "threshold"}), from `similarity.matrix` of each
    panel; None without a term."""
    if not redundancy:
        return None
    similarity.prefetch(s for p in panels for s in p)
    out = []
    for p in panels:
        above = similarity_above(torch.as_tensor(similarity.matrix(list(p)), dtype=torch.float64), len(p))
        out.append(redundancy_discount(above, redundancy["weight"], redundancy["threshold"]).tolist())
    return out
