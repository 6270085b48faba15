"""The one task factory every stage file uses: a Prefect task around `align.pipeline.run_stage`.

Cache policy: TASK_SOURCE + INPUTS, where the inputs include the stage's content hash, so a
stage whose config, inputs and code are unchanged is a cache hit across flow runs. `threads` (how
many torch threads the stage may use beside the stages running with it) is left out of the key:
it changes how fast a stage runs, never what it writes. Bad input
(`AlignError`) is never retried; other failures are retried where the stage allows it.
"""

from __future__ import annotations

from prefect import Task, task
from prefect.cache_policies import INPUTS, TASK_SOURCE
from prefect.logging import get_run_logger

from align.config import load_pipeline
from align.core.errors import AlignError
from align.pipeline import run_stage, stage_folder
from flows.output import stage_line


def _retry_unless_bad_input(task: Task, task_run, state) -> bool:
    try:
        state.result()
    except AlignError:
        return False
    except Exception:
        return True
    return False


def stage_task(
    stage: str, retries: int = 0, retry_delay_seconds: float | list[float] = 5.0
) -> Task:
    @task(
        name=stage,
        task_run_name=stage,
        cache_policy=TASK_SOURCE + (INPUTS - "threads"),
        persist_result=True,
        retries=retries,
        retry_delay_seconds=retry_delay_seconds,
        retry_condition_fn=_retry_unless_bad_input,
    )
    def run(
        pipeline: str,
        overrides: list[str],
        smoke: bool,
        stage_hash: str,
        threads: int | None = None,
    ) -> dict:
        """The stage's manifest, plus `ran`."""
        cfg = load_pipeline(pipeline, overrides, smoke)
        manifest, ran = run_stage(cfg, stage, threads=threads)
        if manifest["stage_hash"] != stage_hash:
            raise RuntimeError(f"{stage}: the pipeline changed while the flow ran; run it again")
        get_run_logger().info(stage_line(stage, manifest, ran, str(stage_folder(cfg, stage))))
        # `ran`: whether this task did the work or found it done (another run did it meanwhile)
        return {**manifest, "ran": ran}

    return run
