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
