"""The package's layering: stages talk to the library (and the artifact cache), never to each other."""
import ast
import subprocess
import sys
from pathlib import Path

import clicks2pref

STAGES = Path(clicks2pref.__file__).parent / "stages"
ALLOWED = {"clicks2pref.stages.artifacts"}  # the cache every stage reads and writes through


def test_the_stage_graph_starts_every_stage_and_no_stage_starts_another():
    from clicks2pref.stages.artifacts import SPECS
    from clicks2pref.stages.pipeline import RUNS

    assert set(RUNS) == set(SPECS)
    for path in STAGES.glob("*.py"):
        assert "get_method" not in path.read_text(), path.name


def _imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


def test_no_stage_imports_another_stage():
    """The stage graph (`stages/pipeline.py`) is the one module that imports every stage: it starts them."""
    stage_modules = {f"clicks2pref.stages.{p.stem}" for p in STAGES.glob("*.py") if p.stem != "__init__"}
    offenders = {}
    for path in STAGES.glob("*.py"):
        if path.stem == "pipeline":
            continue
        bad = (_imported(path) & stage_modules) - ALLOWED - {f"clicks2pref.stages.{path.stem}"}
        if bad:
            offenders[path.name] = sorted(bad)
    assert not offenders, f"stage modules import other stages (move the shared code into the library): {offenders}"


def test_checking_a_config_loads_no_torch():
    """The schema package (every config and name table the checks read) stays light."""
    code = ("import sys, clicks2pref.config; "
            "print(sorted(m for m in ('torch', 'sklearn', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_reward_configs_target_their_components():
    """Each `_target_` in `config.rewards` names a class whose module re-exports that config."""
    import dataclasses
    import importlib

    from clicks2pref.config import rewards

    specs = [c for c in vars(rewards).values() if dataclasses.is_dataclass(c) and hasattr(c, "_target_")]
    assert {c.__name__ for c in specs} == {f"{n}RewardConfig" for n in
                                           ("GaRM", "BTRM", "External", "Rule", "Perplexity", "Diversity")}
    for spec in specs:
        module, cls = spec._target_.rsplit(".", 1)
        mod = importlib.import_module(module)
        assert isinstance(getattr(mod, cls), type) and getattr(mod, spec.__name__) is spec, spec._target_


def test_torch_free_name_tables_match_the_losses():
    """The names the config checks (config.objectives, config.reward_model) are the losses' and heads' own."""
    from clicks2pref.config import objectives as names
    from clicks2pref.config.reward_model import KINDS
    from clicks2pref.models.reward_heads import HEADS
    from clicks2pref.objectives import dpo, gaussian, grpo

    assert names.LIKELIHOODS == tuple(gaussian.LIKELIHOODS) and names.REGULARIZERS == tuple(gaussian.REGULARIZERS)
    assert names.DPO_LOSS_TYPES == tuple(dpo.LOSS_TYPES) and names.DPO_LABEL_SMOOTHED == dpo.LABEL_SMOOTHED
    assert names.GRPO_LOSS_TYPES == tuple(grpo.LOSS_TYPES) and names.GRPO_SCALE_REWARDS == tuple(grpo.SCALE_REWARDS)
    assert KINDS == tuple(HEADS)


def test_every_objective_has_its_module():
    from clicks2pref.objectives import OBJECTIVES, READS, batch_loss

    for name, spec in OBJECTIVES.items():
        assert spec["reads"] in READS and callable(batch_loss(name)), name
