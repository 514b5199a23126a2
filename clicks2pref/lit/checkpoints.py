"""Which Lightning checkpoint a killed run resumes from: the user's `ckpt_path`, else the work folder's last
one if it can be read. A truncated or corrupt checkpoint is moved aside with a warning (nothing deleted)
and training restarts from scratch, instead of every rerun dying on the same unreadable file."""
from __future__ import annotations

import logging
import os
import time
import zipfile
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)


def resume_checkpoint(work: Path, explicit: Optional[str] = None, prefix: str = "") -> Optional[str]:
    if explicit:
        return explicit
    last = Path(work) / "ckpt" / "last.ckpt"
    if not last.exists():
        return None
    problem = readable(last)
    if problem:
        aside = last.with_name(f"{last.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        os.replace(last, aside)
        log.warning("%s: cannot read %s (%s); moved it to %s and training starts from scratch", prefix, last,
                    problem, aside.name)
        return None
    log.info("%s: resuming from %s", prefix, last)
    return str(last)


def readable(path: Path) -> Optional[str]:
    """None when `path` is a complete torch zip archive (every member's CRC checks), else what is wrong."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
        return f"member {bad} is corrupt" if bad else None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return str(e) or type(e).__name__
