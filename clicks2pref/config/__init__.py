"""The structured schema of `conf/config.yaml`, one module per config group that several modules read.

Composition merges every group file onto these dataclasses, so a misspelled key or a wrong type fails
with Hydra's own message; `validate` then builds the typed config once, which runs every schema's
`__post_init__` range check, and names the full key of the first bad value. Every schema and every name table a
check accepts lives in this package, which imports nothing of the library above it (only `clicks2pref.errors`):
library code reads its settings from here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from clicks2pref.config.collect import CollectConfig, EvalConfig
from clicks2pref.config.data import DataConfig
from clicks2pref.config.fusion import FusionConfig
from clicks2pref.config.grpo import GRPOStageConfig, move_trl_aliases
from clicks2pref.config.model import GenerationConfig, ModelConfig
from clicks2pref.config.optimizer import OptimizerConfig
from clicks2pref.config.prompt import PromptTemplate
from clicks2pref.config.resolvers import register_resolvers
from clicks2pref.config.reward_model import RewardModelConfig
from clicks2pref.config.rewards import RewardsConfig, needed_reward_models
from clicks2pref.config.serve import ServeConfig
from clicks2pref.config.sft import SFTConfig, TeacherConfig
from clicks2pref.config.simulator import SimulatorConfig
from clicks2pref.errors import ConfigError


@dataclass
class StageConfig:
    name: str = "pipeline"  # a stage of clicks2pref.stages.pipeline.RUNS


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
    serve: ServeConfig = field(default_factory=ServeConfig)
    reward_model: RewardModelConfig = field(default_factory=RewardModelConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    grpo: GRPOStageConfig = field(default_factory=GRPOStageConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)  # what trains the policy in stage=grpo
    eval: EvalConfig = field(default_factory=EvalConfig)
    trainer: Dict[str, Any] = field(default_factory=dict)   # a Lightning Trainer `_target_` spec
    logger: Dict[str, Any] = field(default_factory=dict)    # name -> Lightning logger `_target_` spec
    paths: PathsConfig = field(default_factory=PathsConfig)
    task_name: str = "pipeline"
    tags: List[str] = field(default_factory=list)
    seed: int = 1234
    cache: bool = True  # reuse a stage's artifact when its key matches; cache=off recomputes
    ckpt_path: Optional[str] = None
    # the number the job returns, a sweeper's objective (conf/hparams_search/): a dotted path into the stage's
    # result dict (`eval.grpo.oracle_ctr`); null = the stage's `headline` in `stages/artifacts.py` SPECS
    optimized_metric: Optional[str] = None

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
    TRL's GRPO names are moved onto ours first, in `cfg` itself: stages read the DictConfig.
    """
    resolve_aliases(cfg)
    check_fitted_kappa(cfg)
    check_one_rollout_process(cfg)
    if "hydra" in cfg:  # a config composed with `return_hydra_config` (tests, the Python API)
        cfg = cfg.copy()
        with open_dict(cfg):
            cfg.pop("hydra")
    _check_groups(cfg, "")
    return OmegaConf.to_object(cfg)


def resolve_aliases(cfg: DictConfig) -> None:
    """Move each TRL name set in `grpo` (`grpo.num_generations=8`) onto ours (`grpo.group_size`) and null it.

    A key of ours given as an override too (`grpo.group_size=4`) with another value is a conflict: ConfigError
    naming both. A value of ours from a preset (`grpo=smoke`) is simply replaced by the alias.
    """
    if OmegaConf.select(cfg, "grpo") is None:
        return
    with open_dict(cfg):
        move_trl_aliases(cfg.grpo, [k[len("grpo."):] for k in given_keys(cfg) if k.startswith("grpo.")], "grpo.")


def check_one_rollout_process(cfg: DictConfig) -> None:
    """vLLM rollouts: the engine lives in one training process; under DDP/FSDP every rank would start its own on
    the same GPUs (TRL groups ranks into tensor-parallel engines there, which this path does not)."""
    if not OmegaConf.select(cfg, "grpo.use_vllm", default=False):
        return
    devices, nodes = OmegaConf.select(cfg, "trainer.devices", default=1), OmegaConf.select(cfg, "trainer.num_nodes",
                                                                                          default=1)
    if devices != 1 or nodes != 1:
        raise ConfigError(f"vLLM rollouts run in one training process; trainer has devices={devices}, "
                          f"num_nodes={nodes} (use trainer=gpu)", "grpo.use_vllm")


def check_fitted_kappa(cfg: DictConfig) -> None:
    """A κ given as an override while stage fusion fits κ would be replaced by the fitted one without a word."""
    fitted = (OmegaConf.select(cfg, "rewards.fit_kappa", default=False)
              and OmegaConf.select(cfg, "rewards.weights", default=None) == "fusion"
              and OmegaConf.select(cfg, "rewards.garm", default=None) is not None
              and OmegaConf.select(cfg, "fusion.kappa_grid", default=None))
    if fitted and "rewards.garm.kappa" in given_keys(cfg):
        raise ConfigError(f"stage fusion replaces it with the κ of fusion.kappa_grid {list(cfg.fusion.kappa_grid)} "
                          "that ranks clicks best; add rewards.fit_kappa=false to keep the given κ",
                          "rewards.garm.kappa")


def given_keys(cfg: DictConfig) -> list[str]:
    """The keys set by the command line's (or `compose`'s) overrides, `+`/`~` stripped."""
    if "hydra" in cfg:
        overrides = OmegaConf.select(cfg, "hydra.overrides.task", default=None) or []
    else:
        overrides = HydraConfig.get().overrides.task if HydraConfig.initialized() else []
    return [o.lstrip("+~").split("=", 1)[0] for o in overrides]


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


def compose_job(conf_dir: str, overrides: Sequence[str] = (), output_dir: Optional[str] = None) -> DictConfig:
    """The config of `python -m clicks2pref <overrides>`, composed without a Hydra run (`clicks2pref.compose`).

    What the run would set is set: the run folder (`output_dir`, by default `hydra.run.dir`) in
    `hydra.runtime.output_dir` and, as a plain value, in `paths.output_dir`; and the current `HydraConfig`.
    """
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(conf_dir, version_base="1.3", job_name="clicks2pref"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    out = str(output_dir if output_dir is not None else OmegaConf.select(cfg, "hydra.run.dir"))
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = out
        cfg.paths.output_dir = out  # not `${hydra:...}`: the config keeps its folder after another compose
    HydraConfig().set_config(cfg)
    return cfg


def register_configs() -> None:
    ConfigStore.instance().store(name="c2p_schema", node=Config)
    register_resolvers()
