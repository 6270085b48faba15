"""`model`: the policy, its reference, their dtype and LoRA."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from align.config.base import Dtype, Strict


class LoraConfig(Strict):
    r: int = Field(16, gt=0)  # NCA recipe: r=16, lora_alpha=16, dropout 0.05
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class ModelConfig(Strict):
    policy: str  # 'embedded' (SmolLM2-135M-Instruct), 'tiny', a local HF folder or a hub id
    reference: str | None = None  # None: the policy's initial weights (the usual SFT reference)
    revision: str | None = None  # hub policy (and default reference): branch, tag or commit
    dtype: Dtype = "float32"  # weights as loaded; training precision is train.precision
    lora: LoraConfig | None = None
