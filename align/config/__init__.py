"""The pipeline YAML schema, one file per topic, and loading it.

`load_pipeline(path, overrides, smoke)` is the entry point: it reads the YAML (reading), applies
the smoke profile and `--set key.path=value` overrides, validates against `PipelineConfig`
(pipeline, with its sections in model, data, stages, rewards, train, losses, judge), and raises
`AlignError` with one line per problem naming the file, the YAML path and the valid values
(load). The config package imports nothing of align but `align.core`.
"""

from align.config.accelerate import SHARDED, accelerate_strategy
from align.config.base import Dtype, Strict
from align.config.data import DataConfig, DatasetConfig
from align.config.judge import (
    AlpacaEvalConfig,
    BackendConfig,
    JudgeConfig,
    JudgeRewardConfig,
    MTBenchConfig,
)
from align.config.load import load_pipeline, parse_override, set_path, validate_dict
from align.config.losses import (
    LOSS_MODELS,
    LossConfig,
    LossParams,
    loss_config,
    loss_parameters,
)
from align.config.model import LoraConfig, ModelConfig
from align.config.pipeline import PipelineConfig, section, section_model
from align.config.reading import parse_yaml, read_yaml
from align.config.rewards import AuxRewardConfig, PreferenceConfig, RewardConfig
from align.config.stages import (
    AnnotateConfig,
    EvaluateConfig,
    RewriteConfig,
    SampleConfig,
    ScheduleConfig,
    SmokeConfig,
)
from align.config.train import DistributedConfig, RolloutConfig, TrainConfig

__all__ = [
    "LOSS_MODELS",
    "SHARDED",
    "AlpacaEvalConfig",
    "AnnotateConfig",
    "AuxRewardConfig",
    "BackendConfig",
    "DataConfig",
    "DatasetConfig",
    "DistributedConfig",
    "Dtype",
    "EvaluateConfig",
    "JudgeConfig",
    "JudgeRewardConfig",
    "LoraConfig",
    "LossConfig",
    "LossParams",
    "MTBenchConfig",
    "ModelConfig",
    "PipelineConfig",
    "PreferenceConfig",
    "RewardConfig",
    "RewriteConfig",
    "RolloutConfig",
    "SampleConfig",
    "ScheduleConfig",
    "SmokeConfig",
    "Strict",
    "TrainConfig",
    "accelerate_strategy",
    "load_pipeline",
    "loss_config",
    "loss_parameters",
    "parse_override",
    "parse_yaml",
    "read_yaml",
    "section",
    "section_model",
    "set_path",
    "validate_dict",
]
