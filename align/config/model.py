"""`model`: the policy, its reference, their dtype and LoRA."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from align.config.base import Dtype, Strict
from align.core.device import DEVICE_SETTING


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
    # where every stage runs its models (docs/gpu.md): auto = CUDA when torch sees it, else CPU;
    # cpu; cuda (the current device); cuda:N. Under train.distributed each process takes its own
    # GPU, so there only auto, cuda or cpu
    device: str = "auto"

    @field_validator("device")
    @classmethod
    def _device_here(cls, value: str) -> str:
        if not DEVICE_SETTING.fullmatch(value):
            raise ValueError(f"{value!r} is not one of auto, cpu, cuda, cuda:N")
        if value.startswith("cuda"):  # torch is imported only for a CUDA setting
            from align.core.device import cuda_problem

            problem = cuda_problem(value)
            if problem is not None:
                raise ValueError(problem)
        return value
