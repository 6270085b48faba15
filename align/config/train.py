"""`train`: optimisation, precision, lengths, checkpoints, online rollouts and multi-process
training. The loss and its parameters are in align/config/losses.py.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from align.config.base import Strict
from align.config.losses import LossConfig
from align.config.rewards import AuxRewardConfig, PreferenceConfig


class RolloutConfig(Strict):
    """Sampling inside online training (both models, KV-cached geometric mixture)."""

    max_new_tokens: int = Field(64, gt=0)  # TRL OnlineDPOConfig default
    temperature: float = Field(1.0, gt=0)  # 1: the policy's own distribution (on-policy)
    top_p: float = Field(1.0, gt=0, le=1)
    # log P(training sample > a reference sample) per step; one reference sample per prompt,
    # drawn once (seeded by the prompt's index) and kept
    win_rate: bool = True


class DistributedConfig(Strict):
    """Multi-process training under `accelerate launch`, on one machine or several
    (docs/operations.md)."""

    # processes on each machine, one per GPU; train.batch_size is per process
    num_processes: int = Field(gt=0)
    # an accelerate config file (configs/accelerate/ddp.yaml, fsdp.yaml, zero3.yaml);
    # None: plain DDP (gloo on CPU, NCCL on GPUs)
    config: str | None = None
    # several machines (accelerate's multi-node launch): each runs `align stage PIPELINE train`
    # with its own machine_rank (--set train.distributed.machine_rank=R); machine 0 is the main
    # one and listens on main_address:main_port; the run folder is shared by all
    machines: int = Field(1, gt=0)
    machine_rank: int = Field(0, ge=0)  # not part of the stage hash: the same job on every machine
    main_address: str | None = None  # machine 0's address as the others reach it
    main_port: int = Field(29500, gt=0, lt=65536)

    @model_validator(mode="after")
    def _machines(self) -> DistributedConfig:
        if self.machine_rank >= self.machines:
            raise ValueError(
                f"machine_rank {self.machine_rank} must be below machines ({self.machines}); "
                "ranks run 0..machines-1"
            )
        if self.machines > 1 and not self.main_address:
            raise ValueError(
                f"main_address: required with machines: {self.machines} (machine 0's address "
                "as the other machines reach it, e.g. 10.0.0.1 or a headless service name)"
            )
        return self

    @property
    def processes(self) -> int:
        """Processes over all machines: num_processes x machines."""
        return self.num_processes * self.machines


class ProbeConfig(Strict):
    """Log-likelihood of a fixed, seeded set of training records, before the first step and
    every `every` steps (align/train/probe.py)."""

    every: int = Field(gt=0)  # optimizer steps between probes
    records: int = Field(32, gt=0)  # how many training records; all when fewer


class TrainConfig(Strict):
    loss: LossConfig
    learning_rate: float = Field(5e-6, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0)  # overrides epochs when set
    batch_size: int = Field(4, gt=0)  # prompts per micro-batch, each with all its responses
    grad_accum: int = Field(1, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    # bf16: autocast over fp32 weights; bf16_weights: bf16 weights and activations, fp32 master
    # copies in the optimizer (align/precision.py; faster on CPU, one process or DDP)
    precision: Literal["fp32", "bf16", "bf16_weights"] = "fp32"
    # the trained policy's attention: 'sdpa' (torch's fused kernel, least memory) or 'matmul'
    # (grouped batched matmuls, align/attention.py; faster for bf16 on CPU, O(T^2) memory)
    attention: Literal["sdpa", "matmul"] = "sdpa"
    max_length: int = Field(1024, gt=0)  # prompt + response tokens
    max_prompt_length: int = Field(512, gt=0)  # prompt tokens (chat template included)
    # a longer prompt: 'error' names the record; 'keep_end' cuts it from the left (NCA recipe)
    prompt_overflow: Literal["error", "keep_end"] = "error"
    save_steps: int = Field(50, gt=0)
    keep_checkpoints: int = Field(1, ge=1)
    gradient_checkpointing: bool = False
    # run each prompt once and its K responses on its KV cache (off with gradient checkpointing)
    share_prompt: bool = True
    seed: int = 0
    # online alignment (docs/online.md): sample a pair per prompt every step, label it with
    # `preference`, update with an online loss (online_ipo, ipo_md, nash_md_pg, ...)
    online: bool = False
    preference: PreferenceConfig | None = None
    # UPO's designer rewards, computed once by annotate on every response: R = sum_i w_i r_i
    aux_rewards: list[AuxRewardConfig] = Field(default_factory=list)
    rollout: RolloutConfig = RolloutConfig()
    # None: one process; set: `accelerate launch` with num_processes on each of `machines`
    distributed: DistributedConfig | None = None
    # None: no probe; set: probe.jsonl, probe/* in metrics.json and the likelihood-trend plot
    probe: ProbeConfig | None = None
    # experiment trackers fed with every step's log row (align/train/trackers.py), offline by
    # default; each needs its optional extra: pip install -e '.[tensorboard]' (or mlflow, wandb)
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(default_factory=list)
    # the intended prompts per optimizer step; `align validate` refuses it unless it equals
    # batch_size x grad_accum x processes (num_processes x machines, 1 without distributed)
    global_batch: int | None = Field(None, gt=0)

    @property
    def processes(self) -> int:
        """Training processes over all machines (1 without train.distributed)."""
        return self.distributed.processes if self.distributed else 1

    @property
    def effective_global_batch(self) -> int:
        """Prompts per optimizer step: batch_size x grad_accum x processes."""
        return self.batch_size * self.grad_accum * self.processes

    @model_validator(mode="after")
    def _lengths(self) -> TrainConfig:
        if self.max_prompt_length >= self.max_length:
            raise ValueError("max_prompt_length must be smaller than max_length")
        return self

    @model_validator(mode="after")
    def _unique_trackers(self) -> TrainConfig:
        if len(set(self.report_to)) != len(self.report_to):
            raise ValueError("report_to: a tracker is listed twice")
        return self
