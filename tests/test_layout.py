"""The package's import structure: layers import downwards only, no circle, config holds every schema."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "clicks2pref"
LOWER = ("data", "models", "objectives", "rewards", "eval", "lit", "config")


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = ast.parse(path.read_text(), str(path))
    return out


MODULES = _modules()


def _imports(tree: ast.Module, top_level_only: bool) -> set[str]:
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES}
    return {m for m in found if m.startswith("clicks2pref")}


def test_lower_layers_never_import_stages():
    for name, tree in MODULES.items():
        if name.split(".")[1:2] and name.split(".")[1] in LOWER:
            assert not any(m.startswith("clicks2pref.stages") for m in _imports(tree, False)), name


def test_config_imports_no_lightning_module():
    for name, tree in MODULES.items():
        if name.startswith("clicks2pref.config"):
            assert not any(m.startswith(("clicks2pref.lit", "clicks2pref.stages")) for m in _imports(tree, False))


def test_no_import_circle():
    graph = {name: {m for m in _imports(tree, True) if m in MODULES and m != name} for name, tree in MODULES.items()}
    # a submodule importing a sibling passes through its package's __init__; that is not a circle of ours
    graph = {n: {m for m in deps if not n.startswith(m + ".")} for n, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in graph[node]:
            assert state.get(dep) != 1, " -> ".join(path + [node, dep])
            if dep not in state:
                visit(dep, path + [node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_stages_hold_no_config_dataclass_and_imports_sit_at_the_top():
    for name, tree in MODULES.items():
        if name.startswith("clicks2pref.stages"):
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    decorators = [ast.unparse(d) for d in node.decorator_list]
                    assert not any(d.startswith("dataclass") for d in decorators) or node.name == "StageSpec", \
                        f"{name}.{node.name}"
    nested = sum(1 for tree in MODULES.values() for fn in ast.walk(tree)
                 if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                 for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom)))
    assert nested < 40, nested


def _absolute(module: str, node: ast.ImportFrom) -> str:
    """The absolute name of an ImportFrom's module (relative imports resolved against `module`'s package)."""
    if not node.level:
        return node.module or ""
    is_package = (PACKAGE.parent / module.replace(".", "/") / "__init__.py").is_file()
    parts = module.split(".")[: len(module.split(".")) - node.level + is_package]
    return ".".join(parts + ([node.module] if node.module else []))


def test_config_imports_nothing_of_the_library_above_it():
    """The schema package is the bottom layer: its modules import only each other and `clicks2pref.errors`."""
    allowed = ("clicks2pref.config", "clicks2pref.errors")
    offenders = {}
    for name, tree in MODULES.items():
        if name.split(".")[:2] != ["clicks2pref", "config"]:
            continue
        found = set()
        for node in ast.walk(tree):  # top-level and nested imports alike
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(name, node)
                found |= {f"{base}.{a.name}" if base == "clicks2pref" else base for a in node.names}
        bad = sorted(m for m in found if m.split(".")[0] == "clicks2pref"
                     and not any(m == a or m.startswith(a + ".") for a in allowed))
        if bad:
            offenders[name] = bad
    assert not offenders, f"clicks2pref.config modules import the library above them (move the name down): {offenders}"


def test_rewards_never_import_the_simulator():
    """A reward sees texts and trained models only: its rules are the product's own, never the user model's."""
    for name, tree in MODULES.items():
        if name.startswith("clicks2pref.rewards"):
            found = {m for m in _imports(tree, False) if m.startswith("clicks2pref.data.simulator")}
            assert not found, f"{name} imports {sorted(found)}"
