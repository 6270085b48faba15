"""The `train` stage as a Prefect task."""

from tasks.stage_task import stage_task

train_task = stage_task("train")
