"""What the sample and annotate stages share: naming the training data in errors, refusing
over-long prompts before any model work.
"""

from __future__ import annotations

from align.config import PipelineConfig
from align.model.tokenize import check_prompt_lengths


def train_source(cfg: PipelineConfig) -> str:
    return f"data.train: {cfg.data.train.path or cfg.data.train.hf_dataset}"


def check_prompts(cfg: PipelineConfig, tokenizer, records: list[dict]) -> None:
    if cfg.train.prompt_overflow == "error":
        check_prompt_lengths(tokenizer, records, cfg.train.max_prompt_length, train_source(cfg))
