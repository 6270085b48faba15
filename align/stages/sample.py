"""The `sample` stage: K responses per training prompt from the policy (HF generate or vLLM),
written in shards, each kept a generation batch at a time, so a stopped run resumes at the
first batch it had not finished (records.write_shard_by_units); `sample.processes` workers
split the shards between GPUs (align/stages/workers.py).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from align.config import PipelineConfig
from align.data.datasets import RecordStream
from align.data.records import chunks, write_shard_by_units
from align.generate.hf import generate
from align.model.loading import (
    load_model,
    load_tokenizer,
)
from align.stages.common import check_prompts, stage_device
from align.stages.workers import Part, devices_of, run_parts


def sample_stage(cfg: PipelineConfig, out: Path, upstream: dict, _: str) -> tuple[dict, list]:
    sc = cfg.sample
    records = RecordStream(cfg.data.train, cfg.data.system_prompt, "data.train")
    path = Path(upstream["prepare-model"]["summary"]["policy"]["path"])
    check_prompts(cfg, load_tokenizer(path), records)  # before generating: annotate would refuse
    started = time.perf_counter()
    results = run_parts(
        partial(_sample_part, cfg, out, path, records),
        sc.processes,
        cfg.model.device,
        len(records),
        "sample",
        "prompt",
        "sample.processes",
        sc.tensor_parallel,
    )
    seconds = time.perf_counter() - started
    new_tokens = sum(r["new_tokens"] for r in results)
    return {
        "prompts": len(records),
        "k": sc.k,
        "shards": math.ceil(len(records) / sc.shard_size),
        "new_tokens": new_tokens,
        "tokens_per_s": round(new_tokens / seconds, 1) if new_tokens else None,
        "device": devices_of(results),
    }, []


def _sample_part(
    cfg: PipelineConfig,
    out: Path,
    path: Path,
    records: RecordStream,
    part: Part,
    progress: Callable[[int], object],
) -> dict:
    """Sample this worker's shards not yet written, one shard of prompts in memory at a time,
    with HF generate or vLLM on this worker's device; its new-token count and device."""
    sc = cfg.sample
    tokenizer = load_tokenizer(path)
    device = stage_device(cfg)
    with contextlib.ExitStack() as stack:
        if sc.backend == "vllm":  # shut down when sampling ends: the next stage gets the GPU
            from align.generate.vllm_engine import VLLMSampler, vllm_dtype

            engine = stack.enter_context(
                VLLMSampler(path, vllm_dtype(cfg, sc.dtype), sc.seed, sc.tensor_parallel)
            )
            sample = engine.generate
        else:  # vLLM places itself on the GPU (validate refuses model.device cpu with it)
            sample = partial(generate, load_model(path, sc.dtype or cfg.model.dtype, device=device))
        new_tokens = 0

        def draw(si: int, batch: list[dict], bi: int) -> list[dict]:
            nonlocal new_tokens
            texts, finished = sample(
                tokenizer,
                [r["prompt"] for r in batch],
                k=sc.k,
                max_new_tokens=sc.max_new_tokens,
                temperature=sc.temperature,
                top_p=sc.top_p,
                seed=sc.seed * 1_000_003 + si * 10_007 + bi,  # a resumed batch draws the same
            )
            new_tokens += sum(len(tokenizer(t).input_ids) for ts in texts for t in ts)
            return [
                {**r, "responses": t, "finished": f}
                for r, t, f in zip(batch, texts, finished, strict=True)
            ]

        for si, shard in part.shards(records, sc.shard_size):
            write_shard_by_units(
                out, si, chunks(shard, sc.batch_prompts), partial(draw, si), progress
            )
    return {
        "new_tokens": new_tokens,
        "device": f"{device} (vllm)" if sc.backend == "vllm" else str(device),
    }
