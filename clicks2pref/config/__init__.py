"""The structured schema of `conf/config.yaml`, one module per config group that several modules read.

Composition merges every group file onto these dataclasses, so a misspelled key or a wrong type fails
with Hydra's own message; `validate` then builds the typed config once, which runs every schema's
`__post_init__` range check, and names the full key of the first bad value. The package imports no
stage and no Lightning module: library code reads its settings from here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf, open_dict

from clicks2pref.config.collect import CollectConfig, EvalConfig
from clicks2pref.config.data import DataConfig
from clicks2pref.config.grpo import GRPOStageConfig
from clicks2pref.config.reward_model import RewardModelConfig
from clicks2pref.config.sft import SFTConfig, TeacherConfig
from clicks2pref.data.prompts import PromptTemplate
from clicks2pref.data.simulator.click_model import SimulatorConfig
from clicks2pref.errors import ConfigError
from clicks2pref.models.generate import GenerationConfig
from clicks2pref.models.registry import ModelConfig
from clicks2pref.rewards.composite import RewardsConfig, needed_reward_models
from clicks2pref.rewards.fusion import FusionConfig


@dataclass
class StageConfig:
    name: str = "pipeline"
    _target_: str = "clicks2pref.stages.pipeline.run"


@dataclass
class PolicyConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(temperature=0.6))


@dataclass
class PathsConfig:
    root_dir: str = "."
    log_dir: str = "logs"
    artifacts_dir: str = "artifacts"
    model_cache: str = "~/.cache/clicks2pref"
    output_dir: str = "."


@dataclass
class Config:
    stage: StageConfig = field(default_factory=StageConfig)
    data: DataConfig = field(default_factory=DataConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    prompt: Dict[str, PromptTemplate] = field(default_factory=dict)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    collect: CollectConfig = field(default_factory=CollectConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    grpo: GRPOStageConfig = field(default_factory=GRPOStageConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    trainer: Dict[str, Any] = field(default_factory=dict)   # a Lightning Trainer `_target_` spec
    logger: Dict[str, Any] = field(default_factory=dict)    # name -> Lightning logger `_target_` spec
    paths: PathsConfig = field(default_factory=PathsConfig)
    task_name: str = "pipeline"
    tags: List[str] = field(default_factory=list)
    seed: int = 1234
    cache: bool = True  # reuse a stage's artifact when its key matches; cache=off recomputes
    ckpt_path: Optional[str] = None

    def __post_init__(self):
        """Checks across groups (each group's own range checks ran in its `__post_init__`)."""
        if not self.prompt:
            raise ConfigError("no templates selected; choose at least one, e.g. prompt=[concise,engaging]", "prompt")
        if self.sft.template is not None and self.sft.template not in self.prompt:
            raise ConfigError(f"'{self.sft.template}' is not among the selected prompts {list(self.prompt)}; add it "
                              f"with prompt=[{self.sft.template},...]", "sft.template")
        missing = [k for k in needed_reward_models(self.rewards) if k not in self.reward_model.kinds]
        if missing:
            raise ConfigError(f"rewards={self.rewards.name} needs reward models {missing} that reward_model.kinds "
                              f"{list(self.reward_model.kinds)} does not train; add them to reward_model.kinds",
                              "reward_model.kinds")


def validate(cfg: DictConfig) -> Config:
    """The typed config: every `__post_init__` check runs once, and the first failure names its full key.

    Groups are built deepest first, so a check raised inside `grpo.eval` is reported as `grpo.eval.<key>`.
    """
    if "hydra" in cfg:  # a config composed with `return_hydra_config` (tests, the Python API)
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.pop("hydra")
    _check_groups(cfg, "")
    return OmegaConf.to_object(cfg)


def _check_groups(node: DictConfig, prefix: str) -> None:
    for key in node.keys():
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            _check_groups(child, f"{prefix}{key}.")
    if prefix and OmegaConf.get_type(node) not in (dict, None):
        try:
            OmegaConf.to_object(node)
        except ConfigError as e:
            raise e.under(prefix[:-1]) from None


def register_configs() -> None:
    ConfigStore.instance().store(name="c2p_schema", node=Config)
