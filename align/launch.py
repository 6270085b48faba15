"""Multi-process training: the train stage under `accelerate launch` (`train.distributed`).

The stage runner calls `launch_training`, which writes the validated config and the stage's
inputs to a job file in the stage folder and runs

    accelerate launch --num_processes N [--config_file C] ... -m align.launch JOB

Each launched process runs `main`: the same offline trainer as a one-process run
(`align.stages.train_offline`), which shards every step's prompts by process index
(align/trainer.py). The main process writes the log, checkpoints, model and metrics; the stage
runner then returns those metrics. Without a config file the launcher starts plain DDP through
torchrun: gloo on CPU, NCCL on GPUs (the trainer's `Accelerator` picks the device).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from align.config import PipelineConfig, validate_dict
from align.errors import AlignError
from align.io import atomic_write_json, atomic_write_text, read_json

JOB = ".launch.json"  # in the stage folder while the processes run
ERROR = ".launch-error"  # a process's one-line AlignError, read back by the stage runner
SHARDED = ("FSDP", "DEEPSPEED")  # strategies that split the weights over the processes


def deepspeed_installed() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def accelerate_strategy(config: str | None) -> str:
    """The `distributed_type` of an accelerate config file ('MULTI_GPU', plain DDP, for None).

    Raises ValueError with one line when the file is missing or not an accelerate config, or
    names DeepSpeed where deepspeed is not installed."""
    if config is None:
        return "MULTI_GPU"
    path = Path(config)
    if not path.is_file():
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
    if strategy == "DEEPSPEED" and not deepspeed_installed():
        raise ValueError(
            f"{config} uses DeepSpeed, which is not installed here; install it on the training "
            "machine (pip install deepspeed) or use configs/accelerate/fsdp.yaml"
        )
    return strategy


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
    return [*cmd, "-m", "align.launch", str(job)]


def launch_training(cfg: PipelineConfig, policy: Path, out: Path, stage_hash: str) -> dict:
    """Train under `accelerate launch` and return the final metrics (`metrics.json`).

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


def main(argv: list[str] | None = None) -> int:
    """One launched process: train the job's pipeline; on bad input write the error for the
    stage runner and exit 2."""
    from align.stages import train_offline

    (job_file,) = sys.argv[1:] if argv is None else argv
    job = read_json(Path(job_file))
    out = Path(job["out"])
    try:
        cfg = validate_dict(job["config"], job_file)
        train_offline(cfg, Path(job["policy"]), out, job["stage_hash"])
    except AlignError as exc:
        atomic_write_text(out / ERROR, str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
