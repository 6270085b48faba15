"""Where models run: `model.device` resolved to a torch device, and the accelerator's memory
handed back when a stage ends.

Settings: 'auto' (the first CUDA device when torch sees one, else the CPU), 'cpu', 'cuda' (the
current CUDA device) or 'cuda:N'. Every stage that loads a model resolves the setting once and
places its models and their inputs there (docs/gpu.md).

torch is imported inside the functions: the config package checks settings with this module,
and `align validate` must not pay torch's import time for 'auto' or 'cpu'.
"""

from __future__ import annotations

import gc
import os
import re
from typing import TYPE_CHECKING

from align.core.errors import AlignError

if TYPE_CHECKING:
    import torch

DEVICE_SETTING = re.compile(r"auto|cpu|cuda(:\d+)?")


def cuda_problem(setting: str) -> str | None:
    """Why `setting` cannot run on this machine (None when it can): a CUDA setting on a machine
    or a torch build without CUDA, or a device index past the visible devices."""
    if not setting.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        return (
            f"{setting!r} but torch {torch.__version__} ({build}) sees no CUDA device here; "
            "use 'auto' or 'cpu', or run on a GPU machine (CUDA install: docs/gpu.md)"
        )
    _, _, index = setting.partition(":")
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        return f"{setting!r} but this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})"
    return None


def resolve_device(setting: str) -> torch.device:
    """The torch device a `model.device` setting names on this machine: 'auto' -> cuda when
    torch sees a CUDA device, else cpu; 'cuda' -> the current CUDA device ('cuda:<index>').
    Raises AlignError naming model.device when the setting is malformed or cannot run here."""
    if not DEVICE_SETTING.fullmatch(setting):
        raise AlignError(f"model.device: {setting!r} is not one of auto, cpu, cuda, cuda:N")
    import torch

    problem = cuda_problem(setting)
    if problem is not None:
        raise AlignError(f"model.device: {problem}")
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(setting)


def visible_gpus() -> list[str]:
    """This machine's CUDA devices as CUDA_VISIBLE_DEVICES names them (their indices when it is
    unset); empty without CUDA."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    named = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in named.split(",")] if named else [str(i) for i in range(count)]
    return ids[:count]


def worker_gpus(setting: str, processes: int, each: int = 1) -> list[str] | None:
    """The GPUs (a CUDA_VISIBLE_DEVICES value: `each` consecutive visible devices) each of
    `processes` stage workers takes under the `model.device` setting, in rank order; None when
    they run on the CPU. Raises ValueError when the machine has fewer GPUs than they need."""
    if setting == "cpu":
        return None
    gpus = visible_gpus()
    if not gpus:  # 'auto' on a machine without CUDA ('cuda' there is refused on its own)
        return None
    if processes * each > len(gpus):
        need = f"{processes} worker processes" + (f" x {each} GPUs" if each > 1 else "")
        most = f"at most {len(gpus) // each} workers" if len(gpus) >= each else "fewer GPUs each"
        raise ValueError(f"{need} but this machine has {len(gpus)} CUDA device(s); use {most}")
    return [",".join(gpus[r * each : (r + 1) * each]) for r in range(processes)]


def free_accelerator() -> None:
    """After a stage: collect what it left behind and hand torch's cached CUDA blocks back to
    the driver, so the next stage (or vLLM, or a stage in another worker process) gets them."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.ipc_collect()
