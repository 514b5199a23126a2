"""The click simulator: the embedded default data source and the offline oracle.

The simulator itself (which loads a sentence embedder, hence torch) is imported on first use, so that
its world can be read without it. Its settings are `clicks2pref.config.simulator`.
"""
from clicks2pref.data.simulator.world import context_splits, load_world, split_contexts

__all__ = ["ClickSimulator", "build_simulator", "context_splits", "load_world", "split_contexts"]


def __getattr__(name: str):
    if name in ("ClickSimulator", "build_simulator"):
        from clicks2pref.data.simulator import click_model
        return getattr(click_model, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
