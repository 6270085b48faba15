"""The `rewrite` stage (BMC) as a Prefect task. Calls retry inside the backend; a task retry is
cheap because every rewrite already obtained comes from the rewrite cache and every finished
shard stays on disk."""

from prefect.tasks import exponential_backoff

from tasks.stage_task import stage_task

rewrite_task = stage_task("rewrite", retries=2, retry_delay_seconds=exponential_backoff(10)(2))
