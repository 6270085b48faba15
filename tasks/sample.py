"""The `sample` stage as a Prefect task: a retry resumes at the first missing shard."""

from prefect.tasks import exponential_backoff

from tasks.stage_task import stage_task

sample_task = stage_task("sample", retries=2, retry_delay_seconds=exponential_backoff(10)(2))
