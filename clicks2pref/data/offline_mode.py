"""Whether a run has a simulator: the one decision every stage reads before it builds one.

There is none when the config says so (`simulator=none`, i.e. `simulator.enabled=false`), and none when the
click logs are not the simulator's: with `data.logs` set, the oracle can only score conversations of its
own world, so logs with any impression that lacks a `topic`/`facet` of that world are *foreign* and imply
`simulator=none` (one info line says so). That keeps a team's first command to `data.logs=PATH`: their
logs carry no topic of the packaged world. The decision depends only on the config and the logs' bytes,
both of which every stage's cache key already holds, so it is the same in every stage of a run.
"""
from __future__ import annotations

import functools
import logging
import os

from clicks2pref.data.io import expand_sources, load_impressions
from clicks2pref.data.log_splits import LogSplit, check_weeks, split_logs
from clicks2pref.data.simulator import load_world
from clicks2pref.errors import ConfigError

log = logging.getLogger(__name__)


def foreign_impressions(records: list[dict], world: dict) -> int:
    """How many impressions carry no (topic, facet) of `world`."""
    def known(r) -> bool:
        topic = world.get(r.get("topic"))
        return topic is not None and any(f.id == r.get("facet") for f in topic.facets)
    return sum(not known(r) for r in records)


@functools.lru_cache(maxsize=16)
def _logs_are_foreign(files: tuple, world: str | None, domains: tuple | None, on_invalid: str) -> bool:
    records = load_impressions([f for f, _, _ in files], on_invalid)
    foreign = foreign_impressions(records, load_world(world, list(domains) if domains else None))
    if foreign:
        log.info("data.logs: %d of %d impressions are not conversations of the simulator's world (no topic/facet "
                 "of it), so there is no oracle for them: running without the simulator (simulator=none); every "
                 "estimate is model-based", foreign, len(records))
    return bool(foreign)


def uses_simulator(cfg) -> bool:
    """True when this run has simulated users and an oracle (module docstring)."""
    sim = cfg.simulator
    if not sim.get("enabled", True):
        return False
    if not cfg.data.logs:  # collect's logs are the simulator's own
        return True
    files = tuple((str(p), os.path.getsize(p), os.path.getmtime(p)) for p in expand_sources(cfg.data.logs))
    domains = tuple(sim.domains) if sim.get("domains") else None
    return not _logs_are_foreign(files, sim.get("world"), domains, cfg.data.on_invalid)


def require_simulator(cfg, what: str) -> None:
    """A ConfigError for a step that only exists with simulated users (`what`), naming the way out."""
    if not uses_simulator(cfg):
        raise ConfigError(f"{what} needs the click simulator, and this run has none (simulator=none or logs that "
                          "are not its world); drop it from the command", "simulator")


def log_split(cfg, records: list[dict]) -> LogSplit:
    """The train / held-out split of these logs under `data.holdout` (`clicks2pref.data.log_splits`)."""
    h = cfg.data.holdout
    return split_logs(records, h.fraction, h.val_fraction, h.seed)


def training_records(cfg, records: list[dict]) -> list[dict]:
    """What a policy may train on: every logged impression with the simulator (its evaluation contexts are never
    logged), only the train slice without it (the held-out conversations are the evaluation's)."""
    return records if uses_simulator(cfg) else log_split(cfg, records).train


def check_configured_weeks(cfg, records: list[dict], source=None) -> None:
    """Every week the config names (the reward models' train and test weeks, fusion's) is in the logs; else one
    line naming the weeks present. Run by the first stage that reads the logs, before anything trains."""
    pairs = cfg.reward_model.pairs
    check_weeks(pairs.train_weeks, records, "reward_model.pairs.train_weeks", source)
    check_weeks(pairs.test_weeks, records, "reward_model.pairs.test_weeks", source)
    if cfg.fusion.logs == "clicks":
        check_weeks(cfg.fusion.weeks, records, "fusion.weeks", source)
