"""A folder's manifest: each file's size and sha256, written last, so a later reader can tell a complete,
untouched folder from a truncated, corrupted or half-copied one. Streaming `hashlib`, cheap next to training."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Optional

MANIFEST = "manifest.json"
_verified: dict[Path, tuple] = {}  # folder -> (name, size, mtime) of its files when it last verified


def write_manifest(folder: Path, meta: Optional[dict] = None) -> None:
    """`meta` (e.g. the code fingerprint that built the folder) is recorded beside the files."""
    folder = Path(folder)
    files = {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256(p)}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps({**(meta or {}), "files": files}, indent=1))


def verify(folder: Path, only: Optional[str] = None) -> Optional[str]:
    """None when every file (under the subfolder `only`, if given) matches the manifest, else the first
    problem, naming the file. A folder is re-hashed only when one of its files changed since it last passed."""
    folder = Path(folder)
    stamp = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file())
    if _verified.get(folder) == stamp:
        return None
    try:
        files = json.loads((folder / MANIFEST).read_text())["files"]
    except FileNotFoundError:
        return f"{MANIFEST}: missing"
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST}: unreadable"
    for name, want in files.items():
        if only and not name.startswith(f"{only}/"):
            continue
        path = folder / name
        if not path.is_file():
            return f"{path}: missing"
        if path.stat().st_size != want["size"]:
            return f"{path}: {path.stat().st_size} bytes, the manifest says {want['size']}"
        if sha256(path) != want["sha256"]:
            return f"{path}: sha256 differs from the manifest"
    if not only:
        _verified[folder] = stamp
    return None


def verify_given(path: Path) -> Optional[str]:
    """A folder the user names (a policy or reward model): checked against its own manifest or, for a
    reward model inside an rm artifact, the artifact's. None when it has no manifest (nothing to check)."""
    path = Path(path)
    if (path / MANIFEST).is_file():
        return verify(path)
    if (path.parent / MANIFEST).is_file():
        return verify(path.parent, only=path.name)
    return None


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
