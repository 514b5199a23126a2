"""The click simulator: the embedded default data source and the offline oracle.

The simulator itself (which loads a sentence embedder, hence torch) is imported on first use, so that
its config and world can be read without it.
"""
from clicks2pref.data.simulator.config import SimulatorConfig
from clicks2pref.data.simulator.world import context_splits, load_world, split_contexts

__all__ = ["ClickSimulator", "SimulatorConfig", "build_simulator", "context_splits", "load_world", "split_contexts"]


def __getattr__(name: str):
    if name in ("ClickSimulator", "build_simulator"):
        from clicks2pref.data.simulator import click_model
        return getattr(click_model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
