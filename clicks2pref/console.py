"""A clean console: our progress and one line per stage milestone. Known-harmless third-party noise is kept
off the terminal but still written to the run's log file; each filter below says what it hides and why.

`quiet_third_party()` runs once at start-up (the CLI and the Python API): warnings are routed into logging
(`py.warnings`), and a filter on the console handlers drops the records listed in NOISE.
"""
from __future__ import annotations

import logging
import re
import warnings

# (logger name prefix, message pattern, why it is harmless here)
NOISE = [
    ("bitsandbytes", r"Failed to load CPU gemm_4bit_forward",
     "bitsandbytes probes an optional CPU kernel package at import; 4-bit loading is for GPUs here"),
    ("pytorch_lightning.utilities.rank_zero", r"Tip: ",
     "Lightning's advertisement for its own cloud logger"),
    ("pytorch_lightning.utilities.rank_zero", r"(GPU|TPU|HPU) available",
     "Lightning's accelerator census; the trainer config already says which accelerator runs"),
    ("py.warnings", r"module\(s\) in eval mode at the start of training",
     "frozen base weights and dropout-free LoRA stay in eval mode on purpose (see the Lightning modules)"),
    ("py.warnings", r"is_gradient_checkpointing` is deprecated",
     "transformers' deprecation inside PEFT's own code; nothing of ours to change"),
    ("py.warnings", r"isinstance\(treespec, LeafSpec\)` is deprecated",
     "a deprecation inside Lightning's own code"),
    ("py.warnings", r"Using ModelCheckpoint with manual optimization",
     "GRPO's checkpoint after each manual step is what resuming wants"),
    ("py.warnings", r"does not have many workers",
     "data loaders hold a few hundred short examples; worker processes would cost more than they save"),
]


class _Noise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "console", True) is False:  # meant for the log file only
            return False
        msg = record.getMessage()
        return not any(record.name.startswith(name) and re.search(pattern, msg) for name, pattern, _ in NOISE)


def quiet_third_party() -> None:
    """Route warnings to logging and keep NOISE off console handlers (the log file still gets everything)."""
    logging.captureWarnings(True)
    warnings.filterwarnings("default")  # each distinct warning once per location, into the log file
    _quiet_progress_bars()
    # the root's console handler, and the ones libraries attach to their own non-propagating loggers
    # (Lightning does, when it is imported before logging is configured)
    loggers = [logging.getLogger()] + [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    for handler in {h for lg in loggers for h in getattr(lg, "handlers", [])}:
        console = isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)
        if console and not any(isinstance(f, _Noise) for f in handler.filters):
            handler.addFilter(_Noise())


def _quiet_progress_bars() -> None:
    """transformers' per-load "Loading weights" bars: a model loads in well under a second here."""
    from transformers.utils import logging as hf_logging  # here: checking a config imports this module, not torch

    hf_logging.disable_progress_bar()
