"""Multi-process training: the train stage under `accelerate launch` (`train.distributed`).

The stage runner calls `launch_training`, which writes the validated config and the stage's
inputs to a job file in a private temporary folder of this machine and runs

    accelerate launch --num_processes N --num_machines M --machine_rank R [--config_file C] ...
        -m align.stages.train JOB

Each launched process runs `main`: the same trainer as a one-process run
(`align.stages.train.train_here`, offline or online), which shards every step's prompts by
process index (align/train/trainer.py). The main process (rank 0 of machine 0) writes the log,
checkpoints, model and metrics; the stage runner then returns those metrics. Without a config
file the launcher starts plain DDP through torchrun: gloo on CPU, NCCL on GPUs (the trainer's
`Accelerator` picks the device, align/train/placement.py).

Several machines: every machine runs the train stage with its own
`train.distributed.machine_rank`; machine 0 listens on main_address:main_port and the others
connect to it (accelerate's static rendezvous). The run folder must be the same on all of them
(a shared volume): the others read the annotated records and the prepared model from it, and
only machine 0 writes into it (docs/operations.md).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from align.config import PipelineConfig, accelerate_strategy
from align.core.errors import AlignError
from align.core.io import atomic_write_json, read_json

JOB = "launch.json"  # in a temporary folder of this machine while the processes run
ERROR = "launch-error"  # beside it: a process's one-line AlignError, read back by the runner


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(cfg: PipelineConfig, job: Path) -> list[str]:
    """The `accelerate launch` command line that trains `cfg` from the job file `job`.

    train.precision and train.distributed (processes, machines, this machine's rank, machine
    0's address) win over the config file; each process gets an equal share of this machine's
    cores. On one machine the rendezvous port is a free one, so two runs do not collide; on
    several it is main_port on main_address."""
    dist = cfg.train.distributed
    n = dist.num_processes
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(dist.processes),  # accelerate counts the processes of all machines
        "--num_machines",
        str(dist.machines),
        "--machine_rank",
        str(dist.machine_rank),
        "--mixed_precision",
        "bf16" if cfg.train.precision == "bf16" else "no",
        "--num_cpu_threads_per_process",
        str(max(1, len(os.sched_getaffinity(0)) // n)),
    ]
    if dist.machines > 1:
        cmd += ["--main_process_ip", dist.main_address, "--main_process_port", str(dist.main_port)]
    else:
        cmd += ["--main_process_port", str(_free_port())]
    if dist.config is not None:
        cmd += ["--config_file", dist.config]
    else:  # plain DDP through torchrun, whatever the user's default accelerate config says
        cmd += ["--dynamo_backend", "no"]
        cmd += ["--multi_gpu"] if dist.processes > 1 else []
    return [*cmd, "-m", "align.stages.train", str(job)]


def launch_training(
    cfg: PipelineConfig, policy: Path, out: Path, stage_hash: str, *, reference: Path | None = None
) -> dict:
    """Train under `accelerate launch` and return the final metrics (`metrics.json`; empty on
    machines other than machine 0, which writes them); `reference` (online training; default
    the policy) is the frozen reference model's folder.

    A process that stops on bad input raises its one-line AlignError here; any other failure
    raises RuntimeError (the processes' output, above it, says why)."""
    try:
        accelerate_strategy(cfg.train.distributed.config)
    except ValueError as exc:
        raise AlignError(f"train.distributed.config: {exc}") from None
    dist = cfg.train.distributed
    with tempfile.TemporaryDirectory(prefix="align-launch-") as folder:
        job, error = Path(folder) / JOB, Path(folder) / ERROR
        atomic_write_json(
            job,
            {
                "config": cfg.model_dump(mode="json", exclude_unset=True),  # re-validates as is
                "policy": str(policy),
                "reference": str(reference or policy),
                "out": str(out),
                "stage_hash": stage_hash,
                "error": str(error),
            },
        )
        status = subprocess.run(launch_command(cfg, job), check=False).returncode
        if status != 0 and error.is_file():
            raise AlignError(error.read_text())
    if status != 0:
        where = f" on machine {dist.machine_rank} of {dist.machines}" if dist.machines > 1 else ""
        raise RuntimeError(
            f"train: `accelerate launch` ({dist.num_processes} processes{where}) exited with "
            f"status {status}; the processes' output above says why"
        )
    return read_json(out / "metrics.json") if dist.machine_rank == 0 else {}
