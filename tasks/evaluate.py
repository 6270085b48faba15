"""The `evaluate` stage as a Prefect task."""

from tasks.stage_task import stage_task

evaluate_task = stage_task("evaluate")
