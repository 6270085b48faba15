"""Entry points the pipeline calls: the `judge` stage and judge-based reward annotation.

`run_judge` writes under `out_dir`:
  mtbench/model_answer/<model>.jsonl, mtbench/model_judgment/<judge>_{single,pair}.jsonl,
  alpacaeval/model_outputs.json, alpacaeval/annotations.json, alpacaeval/lc_glm.json,
  scores.json (the flat metrics) and report.md (the `## Judge` section),
and returns the metrics. Judgments go through the cache in `cache_dir` (or `cfg.cache_dir`),
so a killed run resumes without paying twice; answers and outputs already complete in `out_dir`
are reused.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from align.config.judge import JudgeConfig
from align.core.io import atomic_write_json, atomic_write_text
from align.judging.alpacaeval import run_alpacaeval
from align.judging.mtbench import run_mtbench
from align.judging.policy import GenerateFn
from align.judging.report import Metrics, Outcome, render_section
from align.llm.open import open_backend

log = logging.getLogger("align.judging")
STATS = ("cache_hits", "cache_misses", "requests", "retries", "input_tokens", "output_tokens")


def run_judge(
    cfg: JudgeConfig,
    generate_fn: GenerateFn,
    out_dir: Path,
    model_id: str,
    cache_dir: Path,
    *,
    device: torch.device | str = "cpu",
) -> Metrics:
    """Run every configured protocol for one policy (see the module docstring); a local judge
    model runs on `device`."""
    out_dir = Path(out_dir)
    backend = open_backend(cfg.backend, Path(cfg.cache_dir or cache_dir), device=device)
    judge_name = cfg.backend.model
    outcome, parts = Outcome({}), []
    try:
        if cfg.mtbench is not None:
            parts.append(
                run_mtbench(
                    cfg.mtbench,
                    backend,
                    generate_fn,
                    out_dir / "mtbench",
                    model_id,
                    judge_name,
                    cfg.backend.max_new_tokens,
                )
            )
        if cfg.alpacaeval is not None:
            parts.append(
                run_alpacaeval(
                    cfg.alpacaeval,
                    backend,
                    generate_fn,
                    out_dir / "alpacaeval",
                    model_id,
                    judge_name,
                    cfg.backend.logprobs,
                )
            )
    finally:
        backend.cache.close()
    for part in parts:
        outcome.metrics.update(part.metrics)
        outcome.errors += part.errors
        outcome.warnings += part.warnings
    stats = backend.stats()
    m = outcome.metrics
    m.update({f"judge/{k}": stats.get(k, 0) for k in STATS})
    m["judge/failed"] = len(outcome.errors)
    if cfg.backend.price_per_1k_input is not None or cfg.backend.price_per_1k_output is not None:
        m["judge/cost_usd"] = stats.get("cost_usd", 0.0)
    atomic_write_json(out_dir / "scores.json", m)
    atomic_write_text(out_dir / "report.md", render_section(cfg.backend, model_id, outcome))
    return m
