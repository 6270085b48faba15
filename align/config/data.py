"""`data`: the training and held-out datasets and how their columns map to records."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from align.config.base import Strict

DataFormat = Literal["prompts", "kwise", "ultrafeedback", "pairs"]


FIELD_NAMES = ("id", "prompt", "answer", "responses", "rewards", "chosen", "rejected")


class WindowConfig(Strict):
    """A seeded slice of a dataset: the records of a fixed permutation (by `seed`) from
    `index * size` on, `size` of them, wrapping around the end. `rounds.prompts_per_round`
    sets it for each round."""

    size: int = Field(gt=0)
    index: int = Field(0, ge=0)
    seed: int = 0


class DatasetConfig(Strict):
    path: str | None = None  # local .jsonl / .json / .parquet file
    hf_dataset: str | None = None  # hub id or local dataset folder, read with datasets.load_dataset
    split: str = "train"
    revision: str | None = None  # hf_dataset on the hub: branch, tag or commit (default: main)
    format: DataFormat = "prompts"  # prompts only, or responses with rewards (K-wise / pairs)
    fields: dict[str, str] = Field(default_factory=dict)  # our field name -> column in the file
    limit: int | None = Field(None, gt=0)
    window: WindowConfig | None = None  # applied after limit

    @model_validator(mode="after")
    def _one_source(self) -> DatasetConfig:
        if (self.path is None) == (self.hf_dataset is None):
            raise ValueError("set exactly one of 'path' (local file) or 'hf_dataset'")
        if self.revision is not None and self.hf_dataset is None:
            raise ValueError("revision applies to hf_dataset only; remove it or use hf_dataset")
        bad = sorted(set(self.fields) - set(FIELD_NAMES))
        if bad:
            raise ValueError(f"fields: unknown name(s) {bad}; valid: {', '.join(FIELD_NAMES)}")
        return self


class DataConfig(Strict):
    train: DatasetConfig
    eval: DatasetConfig | None = None
    system_prompt: str | None = None  # prepended as a system message to every prompt
