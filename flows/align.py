"""The Prefect flow `align`: the pipeline's stages as tasks, in DAG order.

Each task is submitted with its stage hash; an unchanged stage is a cache hit (Prefect's
task cache) or, when its folder is current, returns at once (the manifest check).
"""

from __future__ import annotations

from prefect import flow
from prefect.logging import get_run_logger

import flows  # noqa: F401  (pins Prefect settings before Prefect loads)
from align.config import load_pipeline
from align.pipeline import plan
from tasks.annotate import annotate_task
from tasks.evaluate import evaluate_task
from tasks.judge import judge_task
from tasks.prepare_model import prepare_model_task
from tasks.sample import sample_task
from tasks.train import train_task

STAGE_TASKS = {
    "prepare-model": prepare_model_task,
    "sample": sample_task,
    "annotate": annotate_task,
    "train": train_task,
    "evaluate": evaluate_task,
    "judge": judge_task,
}


@flow(name="align", log_prints=True)
def align_flow(pipeline: str, overrides: list[str] | None = None, smoke: bool = False) -> dict:
    """Run every stage of `pipeline` (a YAML path) with `--set` overrides; returns the manifests."""
    overrides = list(overrides or [])
    cfg = load_pipeline(pipeline, overrides, smoke)
    logger = get_run_logger()
    manifests = {}
    upstream = None
    for p in plan(cfg):
        task = STAGE_TASKS[p.name].with_options(refresh_cache=not p.cached)
        future = task.submit(
            pipeline, overrides, smoke, p.stage_hash, wait_for=[upstream] if upstream else None
        )
        manifests[p.name] = future.result()
        upstream = future
    logger.info("pipeline %s done: %s", cfg.name, ", ".join(manifests))
    return manifests
