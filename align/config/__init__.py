"""The pipeline YAML schema, one file per topic, and loading it.

`load_pipeline(path, overrides, smoke)` is the entry point: it reads the YAML (reading), applies
the smoke profile and `--set key.path=value` overrides, validates against `PipelineConfig`
(pipeline, with its sections in model, data, stages, rewards, train, losses, judge), and raises
`AlignError` with one line per problem naming the file, the YAML path and the valid values
(load). The config package imports nothing of align but `align.core`.
"""

from align.config.accelerate import accelerate_strategy
from align.config.data import DatasetConfig
from align.config.judge import JudgeConfig
from align.config.load import load_pipeline, parse_override, set_path, validate_dict
from align.config.pipeline import PipelineConfig, section, section_model
from align.config.reading import parse_yaml, read_yaml
from align.config.rewards import AuxRewardConfig, PreferenceConfig, RewardConfig
from align.config.stages import RewriteConfig

# What callers outside align/config use most; every other model is imported from its topic file.
__all__ = [
    "AuxRewardConfig",
    "DatasetConfig",
    "JudgeConfig",
    "PipelineConfig",
    "PreferenceConfig",
    "RewardConfig",
    "RewriteConfig",
    "accelerate_strategy",
    "load_pipeline",
    "parse_override",
    "parse_yaml",
    "read_yaml",
    "section",
    "section_model",
    "set_path",
    "validate_dict",
]
