"""The `train` stage: offline or online training, in this process or under `accelerate launch`.
Also the entry point of each launched process (`python -m align.stages.train JOB`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from align.config import PipelineConfig, validate_dict
from align.core.errors import AlignError
from align.core.io import atomic_write_text, read_json
from align.data.datasets import RecordStream
from align.data.records import ShardRecords
from align.stages.model_card import write_model_card


def train_stage(
    cfg: PipelineConfig, out: Path, upstream: dict, stage_hash: str
) -> tuple[dict, list]:
    models = upstream["prepare-model"]["summary"]
    policy, reference = Path(models["policy"]["path"]), Path(models["reference"]["path"])
    if cfg.train.distributed is not None:  # each launched process runs train_here
        from align.train.launch import launch_training

        metrics = launch_training(cfg, policy, out, stage_hash, reference=reference)
    else:
        metrics = train_here(cfg, policy, reference, out, stage_hash)
    write_model_card(out / "model", cfg, upstream, stage_hash, metrics)
    return metrics, [out / "model" / "config.json"]


def train_here(
    cfg: PipelineConfig, policy: Path, reference: Path, out: Path, stage_hash: str
) -> dict:
    """Online training (it samples and labels its own pairs from the prompts, against
    `reference`) or offline training, in this process, which may be one of several under
    `accelerate launch`; returns the final metrics (empty on processes but the main one)."""
    if not cfg.train.online:
        return train_offline(cfg, policy, out, stage_hash)
    from align.train.online import OnlineTrainer

    torch.manual_seed(cfg.train.seed)
    # streamed: the trainer tokenises them into its memory-mapped prompt file
    prompts = RecordStream(cfg.data.train, cfg.data.system_prompt, "data.train")
    return OnlineTrainer(cfg, policy, reference, prompts, out, stage_hash).train()


def train_offline(cfg: PipelineConfig, policy: Path, out: Path, stage_hash: str) -> dict:
    """Train `policy` on the annotated (BMC: rewritten) records in this process, which may be
    one of several under `accelerate launch`; returns the final metrics (empty on processes
    other than the main one)."""
    from align.train.trainer import Trainer

    torch.manual_seed(cfg.train.seed)
    source = "rewrite" if cfg.rewrite is not None else "annotate"  # BMC: the rewritten pairs
    records = ShardRecords(Path(cfg.runs_dir) / cfg.name / source)  # streamed, a shard at a time
    return Trainer(cfg, policy, records, out, stage_hash).train()


def main(argv: list[str] | None = None) -> int:
    """One launched process: train the job's pipeline; on bad input write the error for the
    stage runner and exit 2."""
    (job_file,) = sys.argv[1:] if argv is None else argv
    job = read_json(Path(job_file))
    out = Path(job["out"])
    try:
        cfg = validate_dict(job["config"], job_file)
        policy = Path(job["policy"])
        train_here(cfg, policy, Path(job.get("reference", policy)), out, job["stage_hash"])
    except AlignError as exc:
        atomic_write_text(Path(job["error"]), str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
