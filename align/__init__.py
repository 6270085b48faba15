"""align: align language models from explicit rewards and preferences.

Packages, lowest first; each imports only packages listed before it:
core, config, data, model, generate, llm, rewards, rewrite, train, judging, stages, pipeline.
No package imports Prefect or DVC (flows/ and tasks/ do).

The Python API (docs/python-api.md), loaded on first use so `import align.core...` stays cheap:
  align.load_pipeline(path, overrides=None, smoke=False) -> PipelineConfig
  align.run(pipeline, overrides=None, smoke=False) -> {stage: manifest}
  align.run_stage(pipeline, stage, overrides=None, smoke=False, force=False) -> manifest
  align.results(pipeline, overrides=None, smoke=False) -> Results (metrics, log, model folder)
`pipeline` is a YAML path or a loaded config. Stages run in this process, in order, with the
same cache as `align run --no-prefect`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_pipeline", "results", "run", "run_stage"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from align.pipeline import api

        return getattr(api, name)
    raise AttributeError(f"module 'align' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
