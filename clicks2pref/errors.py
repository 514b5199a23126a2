"""Errors a user can cause. Each carries one sentence that says what is wrong and what to do."""


class Clicks2PrefError(Exception):
    """Base class: raised for bad input, never for our own bugs."""


class ClickLogError(Clicks2PrefError):
    """A click-log file or record breaks the schema (SPEC section 3)."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None, field: str | None = None):
        self.path, self.line, self.field, self.reason = path, line, field, message
        where = ":".join(str(p) for p in (path, line) if p is not None)
        text = ": ".join(p for p in (where, field, message) if p)
        super().__init__(text)


class ModelNotFoundError(Clicks2PrefError):
    """A model name, package or path could not be resolved."""


class ConfigError(Clicks2PrefError):
    """A config value is out of range or inconsistent in a way the structured schema cannot express.

    `key` is the dotted key at fault; `clicks2pref.config.validate` prefixes it with the key of the
    group that raised it, so the message always names the full key (`grpo.eval.split: ...`).
    """

    def __init__(self, message: str, key: str | None = None):
        self.key, self.reason = key, message
        super().__init__(f"{key}: {message}" if key else message)

    def under(self, prefix: str) -> "ConfigError":
        return ConfigError(self.reason, f"{prefix}.{self.key}" if self.key else prefix)


class NonFiniteLossError(Clicks2PrefError):
    """Training produced too many non-finite losses in a row."""
