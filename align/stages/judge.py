"""The `judge` stage: MT-Bench and AlpacaEval verdicts on the trained policy."""

from __future__ import annotations

import contextlib
from pathlib import Path

from align.config import PipelineConfig
from align.core.errors import AlignError
from align.model.loading import cache_root, load_tokenizer
from align.stages.common import stage_device


def judge_stage(cfg: PipelineConfig, out: Path, upstream: dict, _: str) -> tuple[dict, list]:
    """MT-Bench / AlpacaEval on the trained policy; verdicts are cached outside the stage folder
    so a re-run or a resumed run never pays for the same judgment twice."""
    from align.judging.policy import hf_generate_fn, vllm_generate_fn
    from align.judging.run import run_judge

    trained = Path(cfg.runs_dir) / cfg.name / "train" / "model"
    device = stage_device(cfg)
    with contextlib.ExitStack() as stack:
        if cfg.judge.policy_backend == "vllm":  # shut down when the judge stage ends
            from align.generate.vllm_engine import VLLMSampler, vllm_dtype

            engine = stack.enter_context(VLLMSampler(trained, vllm_dtype(cfg), seed=0))
            generate_fn = vllm_generate_fn(engine, load_tokenizer(trained))
        else:
            generate_fn = hf_generate_fn(trained, cfg.model.dtype, device=device)
        metrics = run_judge(
            cfg.judge, generate_fn, out, cfg.name, cache_root() / "judgments", device=device
        )
    judged = (
        metrics.get("mtbench/n_judgments", 0)
        - metrics.get("mtbench/n_failed", 0)
        + metrics.get("alpacaeval/n_total", 0)  # AlpacaEval counts only the judged pairs
    )
    # A remote judge without a single verdict is misconfigured or unreachable (a weak local
    # judge, like the smoke one, may fail every parse: those stay counted failures).
    if cfg.judge.backend.kind == "openai" and metrics.get("judge/failed") and not judged:
        raise AlignError(
            f"judge: all {metrics['judge/failed']} judgments failed (reasons in {out}/report.md); "
            f"check judge.backend (base_url {cfg.judge.backend.base_url}, api_key_env) and "
            "re-run: nothing here counts as done"
        )
    policy = f"{device} (vllm)" if cfg.judge.policy_backend == "vllm" else str(device)
    return {**metrics, "device": policy}, []
