"""The `judge` stage as a Prefect task (judge calls retry inside the backend)."""

from tasks.stage_task import stage_task

judge_task = stage_task("judge")
