"""The `judge` stage as a Prefect task. Calls retry inside the backend; a task retry is cheap
because every verdict already obtained comes from the judgment cache."""

from prefect.tasks import exponential_backoff

from tasks.stage_task import stage_task

judge_task = stage_task("judge", retries=2, retry_delay_seconds=exponential_backoff(10)(2))
