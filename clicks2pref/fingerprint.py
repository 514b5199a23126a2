"""The code a cached result depends on: the clicks2pref source files a computation runs, hashed.

A computation starts from root modules (a stage's module, or the evaluation's panel sampler) and runs every
module they import, directly or not, plus the modules it loads by name: `_target_` strings in its config
(reward components, a `_partial_` optimiser of ours) and registry names (`reward_model.objective` names a
module of `clicks2pref.objectives`). Editing any of them changes the hash, so no artifact built by the old code
is reused; editing anything else keeps every cached result.

Two kinds of module stay out: the artifact cache's own plumbing, and `REPORTS`, modules that only render what a
computation stored (tables, figures, metric files, loggers, the console). An artifact holds nothing they
compute, and a reused artifact's report is rendered again from its result file, so editing a plot rebuilds
nothing. A module listed there must keep that promise: it reads result dicts and writes files, never a number
an artifact stores.
"""
from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path
from typing import Iterable

from omegaconf import OmegaConf

PACKAGE = Path(__file__).resolve().parent
PLUMBING = ("clicks2pref.stages.artifacts", "clicks2pref.stages.pipeline")  # the cache and the stage graph
REPORTS = ("clicks2pref.report", "clicks2pref.loggers", "clicks2pref.console", "clicks2pref.eval.training",
           "clicks2pref.eval.calibration_report", "clicks2pref.eval.results_report")
# config keys whose value names a module that code loads by name (a registry), as a template of its module
BY_NAME = {"reward_model.objective": "clicks2pref.objectives.{}"}


def _source(name: str) -> Path | None:
    """The file of module `name` (a package's __init__), or None for a name inside a module or outside ours."""
    parts = name.split(".")
    if parts[0] != "clicks2pref":
        return None
    base = PACKAGE.joinpath(*parts[1:])
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if parts[1:] and p.is_file()), None)


def modules(roots: Iterable[str]) -> list[str]:
    """The source files (paths from the repository) of `roots` and every clicks2pref module they import,
    directly or not, leaving out the plumbing and the report modules (and what only they import)."""
    seen, found, todo = set(PLUMBING + REPORTS), [], list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = _source(name)
        if path is None:  # a name imported from a module (its module is queued too), or not ours
            continue
        found.append(str(path.relative_to(PACKAGE.parent)))
        for node in ast.walk(ast.parse(path.read_bytes())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("clicks2pref"):
                todo += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.startswith("clicks2pref")]
    return sorted(found)


@functools.lru_cache(maxsize=None)
def fingerprint(roots: tuple[str, ...]) -> str:
    """Hash of the source of `modules(roots)`."""
    digest = hashlib.sha256()
    for path in modules(roots):
        digest.update(path.encode() + (PACKAGE.parent / path).read_bytes())
    return digest.hexdigest()[:12]


def named_modules(cfg, subtrees: Iterable[str]) -> tuple[str, ...]:
    """The clicks2pref modules the config `subtrees` load by name: each `_target_` (its module, and the name
    itself when it is a module) and each `BY_NAME` key's module, sorted."""
    found = set()
    for name in subtrees:
        node = OmegaConf.select(cfg, name)
        tree = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else None
        for target in _targets(tree):
            if target.startswith("clicks2pref."):
                found |= {target, target.rsplit(".", 1)[0]}
    for dotted, template in BY_NAME.items():
        if any(dotted == s or dotted.startswith(s + ".") for s in subtrees):
            value = OmegaConf.select(cfg, dotted)
            if isinstance(value, str) and value:
                found.add(template.format(value))
    return tuple(sorted(found))


def _targets(tree) -> list[str]:
    if isinstance(tree, dict):
        own = [tree["_target_"]] if isinstance(tree.get("_target_"), str) else []
        return own + [t for v in tree.values() for t in _targets(v)]
    if isinstance(tree, list):
        return [t for v in tree for t in _targets(v)]
    return []
