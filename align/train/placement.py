"""Where training runs: the run's `Accelerator` on `model.device`, and where the policy is loaded
before accelerate prepares it."""

from __future__ import annotations

from typing import Any

import torch
from accelerate import Accelerator

from align.config import PipelineConfig
from align.config.accelerate import SHARDED
from align.core.device import resolve_device


def make_accelerator(cfg: PipelineConfig, **kwargs: Any) -> Accelerator:
    """The run's Accelerator (`kwargs`: more of its arguments, e.g. the trackers): bf16 autocast
    when `train.precision` is bf16; `model.device: cpu`
    forces the CPU (gloo between launched processes) even where CUDA is present; `cuda:N` pins a
    one-process run to GPU N. Under `accelerate launch` each process takes its own local GPU, so
    CUDA is never initialised here before accelerate picks it."""
    cpu = cfg.model.device == "cpu" or not torch.cuda.is_available()
    if not cpu and cfg.train.distributed is None:
        torch.cuda.set_device(resolve_device(cfg.model.device))
    return Accelerator(
        mixed_precision="bf16" if cfg.train.precision == "bf16" else "no",
        cpu=cpu,
        **kwargs,
    )


def load_device(acc: Accelerator) -> torch.device:
    """Where the trained models are loaded: the process's device, except under FSDP or
    DeepSpeed, which load on the CPU and move each process's shard themselves (a whole model on
    every GPU first would defeat the sharding)."""
    return torch.device("cpu") if acc.distributed_type in SHARDED else acc.device
