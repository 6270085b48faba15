"""The Prefect flow `align`: the pipeline's stages as tasks, submitted as one DAG.

Each task waits for the futures of its upstream stages only (`wait_for`), so stages that need
nothing of each other (evaluate and judge both read only train's model) run at the same time.
Each stage runs in a worker process of its own (Prefect's process-pool task runner), never in a
thread beside another: torch's default dtype, which transformers changes while it loads a model
in bf16, and torch's RNG are process-wide, so two stages in threads of one process corrupt each
other (a float32 model fed bf16 tensors). Ordering is still enforced on disk: `run_stage` holds a
lock per stage and refuses to run while an upstream stage is not current.

Each task is submitted with its stage hash; an unchanged stage is a cache hit (Prefect's
task cache) or, when its folder is current, returns at once (the manifest check). Before any
stage, a preflight stops a pipeline that needs a GPU on a machine without one; after the last,
the run report is written and published as artifacts (flows/report.py), and with
`record_dvc` (the default) the outputs go into dvc.lock, so DVC's lineage stays current and a
following `dvc repro` finds every stage current.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from prefect import flow
from prefect.logging import get_run_logger
from prefect.runtime import flow_run
from prefect.task_runners import ProcessPoolTaskRunner

import flows  # noqa: F401  (pins Prefect settings before Prefect loads)
from align.config import PipelineConfig
from align.core.errors import AlignError
from align.model.loading import BUILT_IN
from align.pipeline import STAGES, plan
from align.pipeline.graph import StagePlan
from align.pipeline.history import keep_run
from align.pipeline.rounds import close_round, prepare_run
from flows.dvc_record import record_run
from flows.output import LINES, stage_line
from flows.report import publish
from flows.stopping import reclaim_sigterm
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


# The widest level of the stage DAG: evaluate and judge side by side.
PARALLEL_STAGES = 2


@flow(
    name="align",
    log_prints=True,
    task_runner=ProcessPoolTaskRunner(max_workers=PARALLEL_STAGES),
)
def align_flow(
    pipeline: str,
    overrides: list[str] | None = None,
    smoke: bool = False,
    record_dvc: bool = True,
) -> dict:
    """Run every stage of `pipeline` (a YAML path) with `--set` overrides; returns the manifests.
    `record_dvc`: afterwards, record the outputs in the pipeline's dvc.lock (flows/dvc_record)."""
    reclaim_sigterm()  # under `align run`: SIGTERM stops the run as Ctrl-C does
    logger = get_run_logger()
    cfg, overrides, round_plan = prepare_run(pipeline, list(overrides or []), smoke)
    preflight(cfg, pipeline)
    if round_plan is not None:
        parent = round_plan.parent
        LINES.info(
            f"round {round_plan.number} from "
            + (f"round {parent}'s model" if parent is not None else "the base model")
        )
    plans = plan(cfg)
    threads = thread_shares(plans)
    done: dict[str, dict] = {}
    futures = {}
    for p in plans:  # DAG order: a stage's upstream futures exist before it is submitted
        task = STAGE_TASKS[p.name].with_options(refresh_cache=not p.cached)
        args = (pipeline, overrides, smoke, p.stage_hash, threads[p.name])
        if p.cached:  # returns its manifest at once and loads nothing: no worker process needed
            done[p.name] = task(*args)
            LINES.info(stage_line(p.name, done[p.name], False, str(p.folder)))
            continue
        futures[p.name] = task.submit(
            *args, wait_for=[futures[u] for u in STAGES[p.name].upstream if u in futures]
        )
    folders = {p.name: str(p.folder) for p in plans}
    # every branch ends before we look (a failure hides none); a line per stage, in DAG order
    for name, future in futures.items():
        future.wait()
        if future.state.is_completed():
            done[name] = future.result()
            LINES.info(stage_line(name, done[name], done[name].get("ran", True), folders[name]))
    manifests = {p.name: done[p.name] for p in plans if p.name in done}
    failed = [n for n in futures if n not in manifests]
    if failed:
        # No report, no kept run, no dvc.lock entry: those describe a whole round (the report's
        # lineage and results, the history a promotion decision reads). The finished stages'
        # folders are current on disk, so the next run reuses them and publishes the round.
        logger.error(
            "pipeline %s failed at %s; finished: %s",
            cfg.name,
            ", ".join(failed),
            ", ".join(manifests) or "none",
        )
        # the first failure in DAG order that is a stage's own error, not an upstream's knock-on
        cause = next((n for n in failed if not futures[n].state.is_pending()), failed[0])
        futures[cause].result()  # raises that stage's exception: the flow run fails with it
        raise RuntimeError(f"stage {cause} did not complete: {futures[cause].state.message}")
    logger.info("pipeline %s done: %s", cfg.name, ", ".join(manifests))
    if round_plan is not None:
        record = close_round(cfg, round_plan)
        LINES.info(f"round {record['round']} {record['decision']}: {record['reason']}")
    run_id = str(flow_run.get_id())
    logger.info("report: %s", publish(cfg, manifests, run_id=run_id))
    logger.info("this run's outputs kept in %s", keep_run(cfg, run_id))
    if record_dvc:
        LINES.info(record_run(pipeline, overrides, smoke, cfg))
    return manifests


def thread_shares(plans: list[StagePlan]) -> dict[str, int]:
    """Torch threads per stage: every core, split evenly among the stages to run that the DAG
    lets run beside it (neither upstream nor downstream of it; current stages return at once).

    Each stage's process sets its torch thread count before the stage starts (`run_stage`).
    Left at every core each, two generation stages side by side run twice as many busy threads
    as there are cores; on 2 cores that made small matmuls 1.65x slower than one thread each. A
    stage that ends early does not hand its share on to the other."""
    cores = len(os.sched_getaffinity(0))
    ancestors: dict[str, set[str]] = {}
    for p in plans:
        ups = [u for u in STAGES[p.name].upstream if u in ancestors]
        ancestors[p.name] = set(ups).union(*(ancestors[u] for u in ups))
    to_run = {p.name for p in plans if not p.cached}

    def beside(name: str) -> int:
        return sum(
            other != name and other not in ancestors[name] and name not in ancestors[other]
            for other in to_run
        )

    return {p.name: max(1, cores // (1 + beside(p.name))) for p in plans}
