"""The structured schema of `conf/config.yaml`, registered in Hydra's ConfigStore.

Composition merges every group file onto these dataclasses, so a misspelled key or a wrong type
fails with Hydra's own message before anything loads. Each dataclass lives next to its consumer;
this module only assembles them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore

from clicks2pref.data.prompts import PromptTemplate
from clicks2pref.data.simulator.click_model import SimulatorConfig
from clicks2pref.data.sources import DataConfig
from clicks2pref.models.generate import GenerationConfig
from clicks2pref.models.registry import ModelConfig
from clicks2pref.rewards.composite import RewardsConfig
from clicks2pref.rewards.fusion import FusionConfig
from clicks2pref.stages.collect import CollectConfig
from clicks2pref.stages.evaluate import EvalConfig
from clicks2pref.stages.grpo import GRPOStageConfig
from clicks2pref.stages.rm import RewardModelConfig
from clicks2pref.stages.sft import SFTConfig
from clicks2pref.stages.teacher import TeacherConfig


@dataclass
class StageConfig:
    name: str = "collect"
    _target_: str = "clicks2pref.stages.collect.run"


@dataclass
class PolicyConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)


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
    task_name: str = "collect"
    tags: List[str] = field(default_factory=list)
    seed: int = 1234
    cache: bool = True  # reuse a stage's artifact when its key matches; cache=off recomputes
    ckpt_path: Optional[str] = None


def register_configs() -> None:
    ConfigStore.instance().store(name="c2p_schema", node=Config)
