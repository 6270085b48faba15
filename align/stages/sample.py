"""The `sample` stage: K responses per training prompt from the policy (HF generate or vLLM),
written in shards so a killed run resumes at the first missing one.
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from tqdm.auto import tqdm

from align.config import PipelineConfig
from align.data.datasets import load_records
from align.data.records import chunks, shard_path, write_shard
from align.generate.hf import generate
from align.model.loading import (
    load_model,
    load_tokenizer,
)
from align.stages.common import check_prompts, stage_device


def sample_stage(cfg: PipelineConfig, out: Path, upstream: dict, _: str) -> tuple[dict, list]:
    sc = cfg.sample
    records = load_records(cfg.data.train, cfg.data.system_prompt, "data.train")
    path = upstream["prepare-model"]["summary"]["policy"]["path"]
    tokenizer = load_tokenizer(path)
    check_prompts(cfg, tokenizer, records)  # before generating: annotate would refuse them
    dtype = sc.dtype or cfg.model.dtype
    device = stage_device(cfg)
    if sc.backend == "vllm":  # vLLM places itself on the GPU (validate refuses device cpu)
        from align.generate.vllm_engine import VLLMSampler

        sample = VLLMSampler(path, dtype, sc.seed).generate
    else:
        sample = partial(generate, load_model(path, dtype, device=device))
    shards = chunks(records, sc.shard_size)
    started, new_tokens = time.perf_counter(), 0
    bar = tqdm(total=len(records), desc="sample", unit="prompt")
    for si, shard in enumerate(shards):
        target = shard_path(out, si)
        if target.exists():  # written by an earlier, interrupted run of this configuration
            bar.update(len(shard))
            continue
        rows = []
        for bi, batch in enumerate(chunks(shard, sc.batch_prompts)):
            texts, finished = sample(
                tokenizer,
                [r["prompt"] for r in batch],
                k=sc.k,
                max_new_tokens=sc.max_new_tokens,
                temperature=sc.temperature,
                top_p=sc.top_p,
                seed=sc.seed * 1_000_003 + si * 10_007 + bi,
            )
            new_tokens += sum(len(tokenizer(t).input_ids) for ts in texts for t in ts)
            rows.extend(
                {**r, "responses": t, "finished": f}
                for r, t, f in zip(batch, texts, finished, strict=True)
            )
            bar.update(len(batch))
        write_shard(target, rows)
    bar.close()
    seconds = time.perf_counter() - started
    return {
        "prompts": len(records),
        "k": sc.k,
        "shards": len(shards),
        "new_tokens": new_tokens,
        "tokens_per_s": round(new_tokens / seconds, 1) if new_tokens else None,
        "device": f"{device} (vllm)" if sc.backend == "vllm" else str(device),
    }, []
