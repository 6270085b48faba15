"""The `train` stage: offline training in this process or under `accelerate launch`, or online
training. Also the entry point of each launched process (`python -m align.stages.train JOB`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from align.config import PipelineConfig, validate_dict
from align.core.errors import AlignError
from align.core.io import atomic_write_text, read_json
from align.data.datasets import load_records
from align.data.records import read_shards


def train_stage(
    cfg: PipelineConfig, out: Path, upstream: dict, stage_hash: str
) -> tuple[dict, list]:
    path = Path(upstream["prepare-model"]["summary"]["policy"]["path"])
    if cfg.train.online:  # samples and labels its own pairs from the prompts
        from align.train.online import OnlineTrainer

        torch.manual_seed(cfg.train.seed)
        prompts = load_records(cfg.data.train, cfg.data.system_prompt, "data.train")
        ref = Path(upstream["prepare-model"]["summary"]["reference"]["path"])
        metrics = OnlineTrainer(cfg, path, ref, prompts, out, stage_hash).train()
    elif cfg.train.distributed is not None:  # each launched process runs train_offline
        from align.train.launch import launch_training

        metrics = launch_training(cfg, path, out, stage_hash)
    else:
        metrics = train_offline(cfg, path, out, stage_hash)
    return metrics, [out / "model" / "config.json"]


def train_offline(cfg: PipelineConfig, policy: Path, out: Path, stage_hash: str) -> dict:
    """Train `policy` on the annotated (BMC: rewritten) records in this process, which may be
    one of several under `accelerate launch`; returns the final metrics (empty on processes
    other than the main one)."""
    from align.train.trainer import Trainer

    torch.manual_seed(cfg.train.seed)
    source = "rewrite" if cfg.rewrite is not None else "annotate"  # BMC: the rewritten pairs
    records = read_shards(Path(cfg.runs_dir) / cfg.name / source)
    return Trainer(cfg, policy, records, out, stage_hash).train()


def main(argv: list[str] | None = None) -> int:
    """One launched process: train the job's pipeline; on bad input write the error for the
    stage runner and exit 2."""
    (job_file,) = sys.argv[1:] if argv is None else argv
    job = read_json(Path(job_file))
    out = Path(job["out"])
    try:
        cfg = validate_dict(job["config"], job_file)
        train_offline(cfg, Path(job["policy"]), out, job["stage_hash"])
    except AlignError as exc:
        atomic_write_text(Path(job["error"]), str(exc))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
