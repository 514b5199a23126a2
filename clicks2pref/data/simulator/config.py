"""The simulator's schema lives in `clicks2pref.config.simulator`; re-exported here for `data.simulator.click_model`."""
from clicks2pref.config.simulator import SimulatorConfig

__all__ = ["SimulatorConfig"]
