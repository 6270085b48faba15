"""Prefect tasks, one file per stage: cache key = stage hash, retries, logging; the work itself
is `align.pipeline.run_stage`."""
