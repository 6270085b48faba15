"""The `annotate` stage as a Prefect task."""

from tasks.stage_task import stage_task

annotate_task = stage_task("annotate")
