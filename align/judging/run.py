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

from align.errors import AlignError
from align.io import atomic_write_json, atomic_write_text
from align.judging.alpacaeval import run_alpacaeval
from align.judging.backends import make_backend
from align.judging.cache import CachedBackend, JudgmentCache
from align.judging.config import BackendConfig, JudgeConfig, JudgeRewardConfig
from align.judging.mtbench import run_mtbench
from align.judging.policy import GenerateFn
from align.judging.rating import neutral_fill, prefer, rate
from align.judging.report import Metrics, Outcome, render_section

log = logging.getLogger("align.judging")
STATS = ("cache_hits", "cache_misses", "requests", "retries", "input_tokens", "output_tokens")


def open_backend(cfg: BackendConfig, cache_dir: Path) -> CachedBackend:
    """The configured backend behind the judgment cache."""
    return CachedBackend(make_backend(cfg), JudgmentCache(Path(cache_dir)))


def run_judge(
    cfg: JudgeConfig, generate_fn: GenerateFn, out_dir: Path, model_id: str, cache_dir: Path
) -> Metrics:
    """Run every configured protocol for one policy (see the module docstring)."""
    out_dir = Path(out_dir)
    backend = open_backend(cfg.backend, Path(cfg.cache_dir or cache_dir))
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


class RewardJudge:
    """A judge kept open across calls (the local model loads once): 1–10 ratings as rewards,
    and pairwise preference probabilities for the online losses."""

    def __init__(self, cfg: JudgeRewardConfig, cache_dir: Path):
        self.cfg = cfg
        self.backend = open_backend(cfg.backend, Path(cfg.cache_dir or cache_dir))

    def rewards(self, prompts: list, completions: list[str]) -> list[float]:
        """One rating per completion; failures raise (on_failure 'error') or become the
        prompt's neutral value (on_failure 'neutral'), with a warning giving the count."""
        ratings = rate(
            self.backend, prompts, completions, self.cfg.template, self.cfg.backend.max_new_tokens
        )
        failed = [r for r in ratings if r.score is None]
        if failed and self.cfg.on_failure == "error":
            raise AlignError(
                f"judge reward: {len(failed)} of {len(ratings)} ratings failed "
                f"(first: {failed[0].error}); re-run to retry (successes are cached), use a "
                "stronger judge, or set on_failure: neutral"
            )
        if failed:
            log.warning(
                "judge reward: %d of %d ratings failed; neutral values used",
                len(failed),
                len(ratings),
            )
        return neutral_fill(prompts, ratings)

    def preferences(self, prompts: list, a: list[str], b: list[str]) -> list[float]:
        """P(a > b) per pair, both orders averaged; 0.5 where both orders failed (counted in
        a warning)."""
        prefs = prefer(self.backend, prompts, a, b, self.cfg.backend.logprobs)
        failed = sum(p.p is None for p in prefs)
        if failed:
            log.warning(
                "judge preference: %d of %d pairs failed in both orders; 0.5 used",
                failed,
                len(prefs),
            )
        return [p.p if p.p is not None else 0.5 for p in prefs]

    def close(self) -> None:
        self.backend.cache.close()


def judge_rewards(
    cfg: JudgeRewardConfig, prompts: list, completions: list[str], cache_dir: Path
) -> list[float]:
    """Rewards for annotation: the judge's 1–10 rating of each (prompt, completion)."""
    judge = RewardJudge(cfg, cache_dir)
    try:
        return judge.rewards(prompts, completions)
    finally:
        judge.close()
