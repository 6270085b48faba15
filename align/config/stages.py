"""The sections of the stages around training: `sample`, `annotate`, `rewrite`, `evaluate`, plus
`schedule` and `smoke`.
"""

from __future__ import annotations

import zoneinfo
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from align.config.base import Dtype, Strict, check_vllm_installed
from align.config.judge import BackendConfig
from align.config.rewards import RewardConfig


class SampleConfig(Strict):
    k: int = Field(4, ge=1)  # responses per prompt
    max_new_tokens: int = Field(128, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    batch_prompts: int = Field(8, gt=0)  # prompts per generate call (x k sequences)
    shard_size: int = Field(32, gt=0)  # prompts per shard: the unit a killed run resumes from
    seed: int = 0
    dtype: Dtype | None = (
        None  # generation precision; None: model.dtype (bfloat16 is ~1.7x faster on CPU)
    )
    backend: Literal["hf", "vllm"] = "hf"  # vllm: GPU machines with vLLM installed
    # worker processes, one per GPU (each takes every N-th shard; docs/gpu.md); same output
    processes: int = Field(1, gt=0)
    # vllm: GPUs one engine splits the model over (a model that does not fit one GPU)
    tensor_parallel: int = Field(1, gt=0)

    @model_validator(mode="after")
    def _backend_installed(self) -> SampleConfig:
        if self.tensor_parallel > 1 and self.backend != "vllm":
            raise ValueError(
                f"tensor_parallel: {self.tensor_parallel} splits the model inside a vLLM engine, "
                "but backend is hf (one device per worker); set backend: vllm or tensor_parallel: 1"
            )
        if self.backend == "vllm":
            check_vllm_installed("backend")
        return self


class AnnotateConfig(Strict):
    reward: RewardConfig
    ref_logps: bool = True  # precompute reference log-probs once (offline losses need them)
    batch_size: int = Field(8, gt=0)  # sequences per reference forward pass
    # worker processes, one per GPU (each takes every N-th shard; docs/gpu.md); same output
    processes: int = Field(1, gt=0)


class RewriteConfig(Strict):
    """BMC's bridging stage: an LLM minimally edits each loser towards its winner."""

    method: Literal["bmc"] = "bmc"
    backend: BackendConfig  # the judge backends: local HF (offline default) or OpenAI-compatible
    # a rewrite longer than this many times the loser (in tokens, plus 16) is cut by rule
    max_length_ratio: float = Field(2.0, ge=1)
    cache_dir: str | None = None  # rewrite cache; None: <cache root>/rewrites
    shard_size: int = Field(32, gt=0)  # pairs per shard: the unit a killed run resumes from


class EvaluateConfig(Strict):
    max_new_tokens: int = Field(128, gt=0)
    temperature: float = Field(0.0, ge=0)  # 0 = greedy
    batch_size: int = Field(16, gt=0)
    limit: int | None = Field(None, gt=0)
    dtype: Dtype | None = None  # generation precision; None: model.dtype
    reward: RewardConfig | None = None  # default: annotate.reward


CRON_NICKNAMES = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


class ScheduleConfig(Strict):
    """When the Prefect deployment of this pipeline runs on its own (not part of any hash)."""

    cron: str  # e.g. "0 2 * * *": nightly re-training at 02:00
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        """Parsed by a real cron parser, which also finds the next time it fires."""
        from cronsim import CronSim, CronSimError

        try:
            next(CronSim(CRON_NICKNAMES.get(value.strip(), value), datetime(2000, 1, 1)))
        except (CronSimError, StopIteration) as exc:
            raise ValueError(
                f"{value!r} is not a cron expression ({str(exc).rstrip('.') or 'never fires'}); "
                'use five fields "minute hour day month weekday", e.g. "0 2 * * *"'
            ) from None
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r}; use an IANA name such as 'UTC' or 'Europe/Paris'"
            ) from None
        return value


class SmokeConfig(Strict):
    # extra overrides `--smoke` applies after the global smoke profile
    set: dict[str, Any] = Field(default_factory=dict)
