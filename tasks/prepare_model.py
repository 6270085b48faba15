"""The `prepare-model` stage as a Prefect task."""

from tasks.stage_task import stage_task

prepare_model_task = stage_task("prepare-model")
