"""Multi-process training: the train stage under `accelerate launch` (`train.distributed`).

The stage runner calls `launch_training`, which writes the validated config and the stage's
inputs to a job file in the stage folder and runs

    accelerate launch --num_processes N [--config_file C] ... -m align.stages.train JOB

Each launched process runs `main`: the same trainer as a one-process run
(`align.stages.train.train_here`, offline or online), which shards every step's prompts by
process index (align/train/trainer.py). The main process writes the log, checkpoints, model
and metrics; the stage runner then returns those metrics. Without a config file the launcher
starts plain DDP through torchrun: gloo on CPU, NCCL on GPUs (the trainer's `Accelerator`
picks the device).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from align.config import PipelineConfig, accelerate_strategy
from align.core.errors import AlignError
from align.core.io import atomic_write_json, read_json

JOB = ".launch.json"  # in the stage folder while the processes run
ERROR = ".launch-error"  # a process's one-line AlignError, read back by the stage runner


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(cfg: PipelineConfig, job: Path) -> list[str]:
    """The `accelerate launch` command line that trains `cfg` from the job file `job`.

    train.precision and train.distributed.num_processes win over the config file; each process
    gets an equal share of this machine's cores; the rendezvous port is a free one, so two runs
    on one machine do not collide."""
    dist = cfg.train.distributed
    n = dist.num_processes
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(n),
        "--mixed_precision",
        "bf16" if cfg.train.precision == "bf16" else "no",
        "--num_cpu_threads_per_process",
        str(max(1, len(os.sched_getaffinity(0)) // n)),
        "--main_process_port",
        str(_free_port()),
    ]
    if dist.config is not None:
        cmd += ["--config_file", dist.config]
    else:  # plain DDP through torchrun, whatever the user's default accelerate config says
        cmd += ["--num_machines", "1", "--dynamo_backend", "no"]
        cmd += ["--multi_gpu"] if n > 1 else []
    return [*cmd, "-m", "align.stages.train", str(job)]


def launch_training(
    cfg: PipelineConfig, policy: Path, out: Path, stage_hash: str, *, reference: Path | None = None
) -> dict:
    """Train under `accelerate launch` and return the final metrics (`metrics.json`);
    `reference` (online training; default the policy) is the frozen reference model's folder.

    A process that stops on bad input raises its one-line AlignError here; any other failure
    raises RuntimeError (the processes' output, above it, says why)."""
    try:
        accelerate_strategy(cfg.train.distributed.config)
    except ValueError as exc:
        raise AlignError(f"train.distributed.config: {exc}") from None
    job, error = out / JOB, out / ERROR
    error.unlink(missing_ok=True)
    atomic_write_json(
        job,
        {
            "config": cfg.model_dump(mode="json", exclude_unset=True),  # re-validates as is
            "policy": str(policy),
            "reference": str(reference or policy),
            "out": str(out),
            "stage_hash": stage_hash,
        },
    )
    try:
        status = subprocess.run(launch_command(cfg, job), check=False).returncode
    finally:
        job.unlink(missing_ok=True)
    if status != 0:
        if error.is_file():
            message = error.read_text()
            error.unlink()
            raise AlignError(message)
        raise RuntimeError(
            f"train: `accelerate launch` ({cfg.train.distributed.num_processes} processes) "
            f"exited with status {status}; the processes' output above says why"
        )
    return read_json(out / "metrics.json")
