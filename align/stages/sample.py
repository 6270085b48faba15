"""The `sample` stage: K responses per training prompt from the policy (HF generate or vLLM),
written in shards, each kept a generation batch at a time, so a stopped run resumes at the
first batch it had not finished (records.write_shard_by_units).
"""

from __future__ import annotations

import contextlib
import math
import time
from functools import partial
from pathlib import Path

from tqdm.auto import tqdm

from align.config import PipelineConfig
from align.data.datasets import RecordStream
from align.data.records import batched, chunks, write_shard_by_units
from align.generate.hf import generate
from align.model.loading import (
    load_model,
    load_tokenizer,
)
from align.stages.common import check_prompts, stage_device


def sample_stage(cfg: PipelineConfig, out: Path, upstream: dict, _: str) -> tuple[dict, list]:
    sc = cfg.sample
    records = RecordStream(cfg.data.train, cfg.data.system_prompt, "data.train")
    path = upstream["prepare-model"]["summary"]["policy"]["path"]
    tokenizer = load_tokenizer(path)
    check_prompts(cfg, tokenizer, records)  # before generating: annotate would refuse them
    dtype, device = sc.dtype or cfg.model.dtype, stage_device(cfg)
    with contextlib.ExitStack() as stack:
        if sc.backend == "vllm":  # shut down when sampling ends: the next stage gets the GPU
            from align.generate.vllm_engine import VLLMSampler, vllm_dtype

            engine = stack.enter_context(VLLMSampler(path, vllm_dtype(cfg), sc.seed))
            sample = engine.generate
        else:  # vLLM places itself on the GPU (validate refuses model.device cpu with it)
            sample = partial(generate, load_model(path, dtype, device=device))
        return _sample_shards(cfg, out, records, tokenizer, sample, device)


def _sample_shards(
    cfg: PipelineConfig, out: Path, records: RecordStream, tokenizer, sample, device
) -> tuple[dict, list]:
    """Sample every shard not yet written with `sample` (the HF or vLLM `generate`) on
    `device` (reported in the summary); one shard of prompts in memory at a time."""
    sc = cfg.sample
    started, new_tokens = time.perf_counter(), 0
    bar = tqdm(total=len(records), desc="sample", unit="prompt")

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

    for si, shard in enumerate(batched(records, sc.shard_size)):
        write_shard_by_units(
            out, si, chunks(shard, sc.batch_prompts), partial(draw, si), bar.update
        )
    bar.close()
    seconds = time.perf_counter() - started
    return {
        "prompts": len(records),
        "k": sc.k,
        "shards": math.ceil(len(records) / sc.shard_size),
        "new_tokens": new_tokens,
        "tokens_per_s": round(new_tokens / seconds, 1) if new_tokens else None,
        "device": f"{device} (vllm)" if sc.backend == "vllm" else str(device),
    }, []
