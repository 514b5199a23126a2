"""The few range checks every schema's `__post_init__` uses; each raises `ConfigError` naming its key."""
from __future__ import annotations

from typing import Any, Iterable, Optional

from clicks2pref.errors import ConfigError


def one_of(key: str, value: Any, accepted: Iterable) -> None:
    accepted = [a for a in accepted if isinstance(a, str)] or list(accepted)
    if value not in accepted:
        raise ConfigError(f"unknown {value!r}; accepted: {', '.join(map(str, accepted))}", key)


def at_least(key: str, value: Optional[float], low: float, what: str = "") -> None:
    if value is not None and value < low:
        raise ConfigError(f"{value} must be at least {low}{what}", key)


def positive(key: str, value: Optional[float]) -> None:
    if value is not None and not value > 0:
        raise ConfigError(f"{value} must be > 0", key)


def fraction(key: str, value: Optional[float], open_low: bool = False, open_high: bool = False) -> None:
    """value in [0, 1], with either end excluded on request."""
    if value is None:
        return
    low_ok = value > 0 if open_low else value >= 0
    high_ok = value < 1 if open_high else value <= 1
    if not (low_ok and high_ok):
        raise ConfigError(f"{value} must be in {'(' if open_low else '['}0, 1{')' if open_high else ']'}", key)


def optimizer_lr(key: str, optimizer: Optional[dict]) -> None:
    """A `_partial_` optimizer spec's learning rate, when it sets one."""
    if optimizer and optimizer.get("lr") is not None:
        positive(f"{key}.lr", optimizer["lr"])
