"""The `annotate` stage: rewards, reference log-probs, token counts and UPO's designer rewards
for every response, in shards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

import torch

from align.config import PipelineConfig
from align.config.rewards import RewardConfig
from align.core.errors import AlignError
from align.data.datasets import RecordStream
from align.data.records import RESERVED, ShardRecords, chunks, write_shard_by_units
from align.model.loading import (
    load_model,
    load_tokenizer,
)
from align.model.logprobs import shared_prompt_logps
from align.model.tokenize import encode_record
from align.rewards import Scorer
from align.rewards.aux import combined_aux_rewards
from align.stages.common import check_prompts, stage_device, train_source
from align.stages.workers import Part, devices_of, run_parts


@torch.no_grad()
def _ref_logps(
    model, tokenizer, records: list[dict], cfg: PipelineConfig
) -> list[tuple[list[float], list[int]]]:
    """(reference log-probs [K], token counts [K]) per record; each prompt runs once, its
    responses on its KV cache (`shared_prompt_logps`), about annotate.batch_size rows a pass."""
    groups = [
        encode_record(tokenizer, rec, cfg.train.max_length, cfg.train.max_prompt_length)
        for rec in records
    ]
    k = max(len(responses) for _, responses in groups)
    out: list[tuple[list[float], list[int]]] = []
    for batch in chunks(groups, max(1, cfg.annotate.batch_size // k)):
        s, n = shared_prompt_logps(model, batch, tokenizer.pad_token_id)
        s, n = s.tolist(), n.tolist()
        for _, responses in batch:
            out.append((s[: len(responses)], n[: len(responses)]))
            s, n = s[len(responses) :], n[len(responses) :]
    return out


def _check_k(cfg: PipelineConfig, records: Iterable[dict]) -> None:
    """Dataset responses: every record needs the K the loss asks for (sampling checks sample.k
    at validation)."""
    spec = cfg.train.loss
    for i, rec in enumerate(records):
        if len(rec["responses"]) < spec.min_k:
            raise AlignError(
                f"{train_source(cfg)} record {i} (id {rec['id']}): {len(rec['responses'])} "
                f"response(s) but train.loss {spec.name!r} needs K >= {spec.min_k}; "
                f"give every record at least {spec.min_k} responses or drop it"
            )


def _score(scorer: Scorer, shard: list[dict]) -> None:
    """Set `rewards` on every record of a shard with one scorer call (K may vary per record)."""
    extra = [k for k in shard[0] if k not in RESERVED]
    flat = scorer(
        [r["prompt"] for r in shard for _ in r["responses"]],
        [t for r in shard for t in r["responses"]],
        {k: [r.get(k) for r in shard for _ in r["responses"]] for k in extra},
        [f"record {r['id']!r} response {j}" for r in shard for j in range(len(r["responses"]))],
    )
    start = 0
    for rec in shard:
        rec["rewards"] = flat[start : start + len(rec["responses"])]
        start += len(rec["responses"])


def annotate_stage(cfg: PipelineConfig, out: Path, upstream: dict, _: str) -> tuple[dict, list]:
    """Annotate the sampled records (or data.train's K-wise records) a shard at a time: memory
    holds one shard, whatever the dataset's size; `annotate.processes` workers split the
    shards between GPUs (align/stages/workers.py)."""
    records: RecordStream | ShardRecords
    if cfg.sample is not None:
        records = ShardRecords(Path(cfg.runs_dir) / cfg.name / "sample")
    else:
        records = RecordStream(cfg.data.train, cfg.data.system_prompt, "data.train")
        _check_k(cfg, records)
    path = Path(upstream["prepare-model"]["summary"]["reference"]["path"])
    check_prompts(cfg, load_tokenizer(path, "reference"), records)
    total = len(records)
    results = run_parts(
        partial(_annotate_part, cfg, out, path, records),
        cfg.annotate.processes,
        cfg.model.device,
        total,
        "annotate",
        "prompt",
        "annotate.processes",
    )
    summary = _reward_summary(ShardRecords(out))
    return {"records": total, **summary, "device": devices_of(results)}, []


def _annotate_part(
    cfg: PipelineConfig,
    out: Path,
    path: Path,
    records: RecordStream | ShardRecords,
    part: Part,
    progress: Callable[[int], object],
) -> dict:
    """Annotate this worker's shards not yet written with the models on its device."""
    ac = cfg.annotate
    tokenizer = load_tokenizer(path, "reference")
    device = stage_device(cfg)
    scorer = None
    if not ac.reward.from_data:
        scorer = Scorer(_worker_reward(ac.reward, part.count), "annotate.reward", device=device)
    model = load_model(path, cfg.model.dtype, device=device)

    def annotate(shard: list[dict], _index: int) -> list[dict]:
        if scorer is not None:
            _score(scorer, shard)
        for rec, (lp, n) in zip(shard, _ref_logps(model, tokenizer, shard, cfg), strict=True):
            rec["ref_logps"], rec["n_tokens"] = lp, n
        if cfg.train.aux_rewards:  # UPO's designer rewards, once per response
            flat, _ = combined_aux_rewards(
                cfg.train.aux_rewards, [t for r in shard for t in r["responses"]], device
            )
            for rec in shard:
                rec["aux_rewards"], flat = (
                    flat[: len(rec["responses"])],
                    flat[len(rec["responses"]) :],
                )
        return shard

    for si, shard in part.shards(records, cfg.sample.shard_size if cfg.sample else 256):
        # a unit is one reference forward batch (what _ref_logps batches), kept as it finishes
        unit = max(1, ac.batch_size // max(len(r["responses"]) for r in shard))
        write_shard_by_units(out, si, chunks(shard, unit), annotate, progress)
    return {"device": str(device)}


def _worker_reward(reward: RewardConfig, workers: int) -> RewardConfig:
    """One worker's reward settings: an LLM judge's concurrency and request rate divided
    between the workers, so that together they keep the configured limits."""
    if reward.judge is None or workers == 1:
        return reward
    backend = reward.judge.backend
    rate = backend.requests_per_minute
    shared = backend.model_copy(
        update={
            "concurrency": max(1, backend.concurrency // workers),
            "requests_per_minute": rate and rate / workers,
        }
    )
    return reward.model_copy(update={"judge": reward.judge.model_copy(update={"backend": shared})})


def _reward_summary(annotated: Iterable[dict]) -> dict:
    """Mean, min and max of every response's reward (and UPO's aux reward mean), streamed."""
    n = total = aux_n = aux_total = 0.0
    low, high = math.inf, -math.inf
    for rec in annotated:
        rewards = rec["rewards"]
        n, total = n + len(rewards), total + sum(rewards)
        low, high = min(low, *rewards), max(high, *rewards)
        aux = rec.get("aux_rewards") or []
        aux_n, aux_total = aux_n + len(aux), aux_total + sum(aux)
    return {
        "reward_mean": total / n,
        "reward_min": low,
        "reward_max": high,
        **({"aux_reward_mean": aux_total / aux_n} if aux_n else {}),
    }
