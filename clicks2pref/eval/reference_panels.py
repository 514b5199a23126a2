"""A benchmark's floor and ceiling: panels no policy produced, scored beside every policy.

- canned: three questions made from the topic's title by fixed templates, the same for every context of
  the topic. A policy that only learned to be "about the topic" scores like this row; a method that
  moves toward it has learned the simulator's blind spot, not the user.
- ideal: the best panel of the world's own questions for the context (the topic's facets and this
  conversation's follow-ups), built greedily position by position with the oracle. An upper bound that
  no policy can see: it is labelled as such and never used to choose anything.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from clicks2pref.data.parsing import format_suggestions
from clicks2pref.eval.ctr import bootstrap_mean, cluster_labels
from clicks2pref.rewards.diversity import distinct_n


def canned_panel(title: str, templates: Sequence[str]) -> list[str]:
    """The templates filled with the topic's title (first letter lowered: it sits inside a question)."""
    subject = title[:1].lower() + title[1:]
    return [t.format(title=subject) for t in templates]


def candidate_questions(topic, facet_id: str) -> list[str]:
    """Every question of every intent the context can have: the other facets and this facet's follow-ups."""
    current = topic.facet(facet_id)
    intents = [f for f in topic.facets if f.id != facet_id] + list(current.follow_ups)
    return list(dict.fromkeys(q for i in intents for q in i.questions))


def ideal_panel(sim, topic_id: str, facet_id: str, size: int) -> list[str]:
    """Greedy oracle panel: each position takes the candidate that raises the panel's oracle CTR most."""
    candidates = candidate_questions(sim.world[topic_id], facet_id)
    panel: list[str] = []
    for _ in range(min(size, len(candidates))):
        rest = [c for c in candidates if c not in panel]
        scores = sim.oracle_ctr_many([(topic_id, facet_id, panel + [c]) for c in rest])
        panel.append(rest[int(scores.argmax())])
    return panel


def reference_panels(sim, contexts: Sequence[tuple[str, str]], templates: Sequence[str], size: int
                     ) -> dict[str, list[list[str]]]:
    """The canned and ideal panel of each (topic, facet) context, in context order."""
    return {"canned": [canned_panel(sim.world[t].title, templates) for t, _ in contexts],
            "ideal": [ideal_panel(sim, t, f, size) for t, f in contexts]}


def score_reference_panels(sim, contexts: Sequence[tuple[str, str]], templates: Sequence[str], ev, seed: int,
                           diversity=None) -> dict[str, dict]:
    """The canned and ideal rows of an evaluation, in the fields a policy's result has (CTR with its CI,
    per-context CTR, outputs, format, diversity), so they sit in the same table and the same paired tests."""
    panels = reference_panels(sim, contexts, templates, len(sim.cfg.examination))
    labels = cluster_labels(contexts, ev.ci_clusters)
    out = {}
    for name, rows in panels.items():
        ctr = sim.oracle_ctr_many([(t, f, p) for (t, f), p in zip(contexts, rows)])
        est = bootstrap_mean(ctr, ev.bootstrap_samples, ev.ci_level, seed, labels)
        m = {"oracle_ctr": est.mean, "ci_low": est.low, "ci_high": est.high, "n_contexts": est.n,
             "per_context_ctr": ctr.tolist(), "outputs": [format_suggestions(p) for p in rows], "panels": rows,
             "format_rate": 1.0, "clusters": labels, "samples_per_context": 1, "contexts": [list(c) for c in contexts]}
        if diversity is not None:
            m["distinct_2"], m["mean_pairwise_cosine"] = distinct_n(rows, 2), diversity.mean_pairwise_cosine(rows)
        out[name] = m
    return out


def nearness_to_canned(panels: Sequence[Sequence[str]], canned: Sequence[Sequence[str]], similarity) -> float:
    """Mean over suggestions of their largest cosine to the same context's canned panel: how far a policy has
    drifted toward "be broadly about the topic" (a method that rises here learned the floor's trick)."""
    values = []
    for panel, ref in zip(panels, canned):
        if panel:
            sims = similarity.matrix([*panel, *ref])[: len(panel), len(panel):]
            values.extend(sims.max(axis=1).tolist())
    return float(np.mean(values)) if values else float("nan")
