"""The `sample` stage as a Prefect task."""

from tasks.stage_task import stage_task

sample_task = stage_task("sample", retries=1)
