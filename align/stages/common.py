"""What the stages share: the device their models run on, naming the training data in errors,
refusing over-long prompts before any model work.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from align.config import PipelineConfig
from align.core.device import resolve_device
from align.model.tokenize import check_prompt_lengths


def stage_device(cfg: PipelineConfig) -> torch.device:
    """Where this stage places every model it loads and their inputs: `model.device` resolved
    on this machine (align/core/device.py)."""
    return resolve_device(cfg.model.device)


def train_source(cfg: PipelineConfig) -> str:
    return f"data.train: {cfg.data.train.path or cfg.data.train.hf_dataset}"


def check_prompts(cfg: PipelineConfig, tokenizer, records: Iterable[dict]) -> None:
    if cfg.train.prompt_overflow == "error":
        check_prompt_lengths(tokenizer, records, cfg.train.max_prompt_length, train_source(cfg))
