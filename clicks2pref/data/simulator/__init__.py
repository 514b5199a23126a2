"""The click simulator: the embedded default data source and the offline oracle."""
from clicks2pref.data.simulator.click_model import ClickSimulator, SimulatorConfig, build_simulator
from clicks2pref.data.simulator.world import load_world, split_contexts

__all__ = ["ClickSimulator", "SimulatorConfig", "build_simulator", "load_world", "split_contexts"]
