"""Reading an accelerate config file: which distributed strategy `train.distributed.config`
names, checked when the pipeline is validated (before anything is launched)."""

from __future__ import annotations

from pathlib import Path

import yaml

from align.core.io import is_local_file
from align.core.packages import installed

SHARDED = ("FSDP", "DEEPSPEED")  # strategies that split the weights over the processes


def accelerate_strategy(config: str | None) -> str:
    """The `distributed_type` of an accelerate config file ('MULTI_GPU', plain DDP, for None).

    Raises ValueError with one line when the file is missing or not an accelerate config, or
    names DeepSpeed where deepspeed is not installed."""
    if config is None:
        return "MULTI_GPU"
    path = Path(config)
    if not is_local_file(path):
        raise ValueError(
            f"{config!r}: no such file; the shipped ones are configs/accelerate/ddp.yaml, "
            "fsdp.yaml and zero3.yaml"
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError):
        raw = None
    strategy = raw.get("distributed_type") if isinstance(raw, dict) else None
    if not isinstance(strategy, str):
        raise ValueError(
            f"{config!r} is not an accelerate config (a YAML mapping with distributed_type); "
            "write one with `accelerate config --config_file PATH` or use configs/accelerate/"
        )
    if strategy == "DEEPSPEED" and not installed("deepspeed"):
        raise ValueError(
            f"{config} uses DeepSpeed, which is not installed here; install it on the training "
            "machine (pip install deepspeed) or use configs/accelerate/fsdp.yaml"
        )
    return strategy
