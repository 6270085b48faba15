"""The Prefect flow `align`: the pipeline's stages as tasks, in DAG order.

Each task is submitted with its stage hash; an unchanged stage is a cache hit (Prefect's
task cache) or, when its folder is current, returns at once (the manifest check). Before any
stage, a preflight stops a pipeline that needs a GPU on a machine without one; after the last,
the run report is written and published as artifacts (flows/report.py), and with
`record_dvc` the outputs go into dvc.lock (what the deployments do: nightly runs keep DVC's
lineage current).
"""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import flow
from prefect.logging import get_run_logger
from prefect.runtime import flow_run

import flows  # noqa: F401  (pins Prefect settings before Prefect loads)
from align.config import PipelineConfig, load_pipeline
from align.core.errors import AlignError
from align.model.loading import BUILT_IN
from align.pipeline import plan
from align.pipeline.history import keep_run
from flows.dvc_record import record_in_dvc_lock
from flows.report import publish
from tasks.annotate import annotate_task
from tasks.evaluate import evaluate_task
from tasks.judge import judge_task
from tasks.prepare_model import prepare_model_task
from tasks.rewrite import rewrite_task
from tasks.sample import sample_task
from tasks.train import train_task

STAGE_TASKS = {
    "prepare-model": prepare_model_task,
    "sample": sample_task,
    "annotate": annotate_task,
    "rewrite": rewrite_task,
    "train": train_task,
    "evaluate": evaluate_task,
    "judge": judge_task,
}


def preflight(cfg: PipelineConfig, pipeline: str) -> None:
    """Fail in one line, before any stage, when the policy is a hub model (a 7B-class recipe,
    not a built-in or a local folder) and this machine has no CUDA device: on CPU such a run
    would spend hours downloading and loading weights before it ever failed."""
    hub = [
        f"model.{role} {source!r}"
        for role, source in (("policy", cfg.model.policy), ("reference", cfg.model.reference))
        if source and source not in BUILT_IN and not Path(source).is_dir()
    ]
    if hub and not torch.cuda.is_available():
        raise AlignError(
            f"pipeline {cfg.name} needs a GPU: {' and '.join(hub)} "
            f"{'is a hub model' if len(hub) == 1 else 'are hub models'} and this "
            f"machine has no CUDA device; run it on a GPU machine (a worker there), or run its "
            f"stage structure on the tiny model with smoke=True (`align run {pipeline} --smoke`)"
        )


@flow(name="align", log_prints=True)
def align_flow(
    pipeline: str,
    overrides: list[str] | None = None,
    smoke: bool = False,
    record_dvc: bool = False,
) -> dict:
    """Run every stage of `pipeline` (a YAML path) with `--set` overrides; returns the manifests.
    `record_dvc`: afterwards, record the outputs in the pipeline's dvc.lock (flows/dvc_record)."""
    overrides = list(overrides or [])
    cfg = load_pipeline(pipeline, overrides, smoke)
    preflight(cfg, pipeline)
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
    run_id = str(flow_run.get_id())
    logger.info("report: %s", publish(cfg, manifests, run_id=run_id))
    logger.info("this run's outputs kept in %s", keep_run(cfg, run_id))
    if record_dvc:
        logger.info(record_in_dvc_lock(pipeline, overrides, smoke))
    return manifests
