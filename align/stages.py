"""What each stage does, as plain functions over a validated config (no Prefect, no DVC).

Each runner takes (cfg, out folder, upstream manifests, stage hash) and returns
(summary figures for the manifest, paths that must exist for the output to count as current).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from align.config import PipelineConfig
from align.data import load_records
from align.evaluate import evaluate, reward_columns
from align.io import sha256_tree
from align.logprobs import shared_prompt_logps
from align.models import cache_root, load_model, load_tokenizer, resolve_model, set_threads
from align.records import chunks, read_shards, shard_path, write_shard
from align.rewards import Scorer
from align.sampling import generate
from align.tokenize import encode_record


def prepare_model_stage(
    cfg: PipelineConfig, out: Path, upstream: dict, _: str
) -> tuple[dict, list]:
    models = {"policy": cfg.model.policy, "reference": cfg.model.reference or cfg.model.policy}
    summary: dict = {}
    for role, source in models.items():
        path = Path(resolve_model(source))
        if not path.is_dir():
            raise RuntimeError(f"model.{role}: {source!r} did not resolve to a local folder")
        summary[role] = {"source": source, "path": str(path), "hash": sha256_tree(path)}
    return summary, [summary["policy"]["path"], summary["reference"]["path"]]


def sample_stage(cfg: PipelineConfig, out: Path, upstream: dict, _: str) -> tuple[dict, list]:
    sc = cfg.sample
    set_threads()
    records = load_records(cfg.data.train, cfg.data.system_prompt, "data.train")
    path = upstream["prepare-model"]["summary"]["policy"]["path"]
    model, tokenizer = load_model(path, sc.dtype or cfg.model.dtype), load_tokenizer(path)
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
            texts, finished = generate(
                model,
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
    }, []


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


def annotate_stage(cfg: PipelineConfig, out: Path, upstream: dict, _: str) -> tuple[dict, list]:
    ac = cfg.annotate
    set_threads()
    if cfg.sample is not None:
        records = read_shards(Path(cfg.runs_dir) / cfg.name / "sample")
    else:
        records = load_records(cfg.data.train, cfg.data.system_prompt, "data.train")
    scorer = None if ac.reward.from_data else Scorer(ac.reward)
    path = upstream["prepare-model"]["summary"]["reference"]["path"]
    model, tokenizer = load_model(path, cfg.model.dtype), load_tokenizer(path)
    shards = chunks(records, cfg.sample.shard_size if cfg.sample else 256)
    bar = tqdm(total=len(records), desc="annotate", unit="prompt")
    for si, shard in enumerate(shards):
        target = shard_path(out, si)
        if target.exists():
            bar.update(len(shard))
            continue
        if scorer is not None:
            k = len(shard[0]["responses"])
            flat = scorer(
                [r["prompt"] for r in shard for _ in r["responses"]],
                [t for r in shard for t in r["responses"]],
                reward_columns(shard, k),
            )
            for j, rec in enumerate(shard):
                rec["rewards"] = flat[j * k : (j + 1) * k]
        for rec, (lp, n) in zip(shard, _ref_logps(model, tokenizer, shard, cfg), strict=True):
            rec["ref_logps"], rec["n_tokens"] = lp, n
        write_shard(target, shard)
        bar.update(len(shard))
    bar.close()
    rewards = [x for r in read_shards(out) for x in r["rewards"]]
    return {
        "records": len(records),
        "reward_mean": sum(rewards) / len(rewards),
        "reward_min": min(rewards),
        "reward_max": max(rewards),
    }, []


def train_stage(
    cfg: PipelineConfig, out: Path, upstream: dict, stage_hash: str
) -> tuple[dict, list]:
    from align.trainer import Trainer

    set_threads()
    torch.manual_seed(cfg.train.seed)
    records = read_shards(Path(cfg.runs_dir) / cfg.name / "annotate")
    path = Path(upstream["prepare-model"]["summary"]["policy"]["path"])
    metrics = Trainer(cfg, path, records, out, stage_hash).train()
    return metrics, [out / "model" / "config.json"]


def evaluate_stage(cfg: PipelineConfig, out: Path, upstream: dict, _: str) -> tuple[dict, list]:
    set_threads()
    initial = Path(upstream["prepare-model"]["summary"]["policy"]["path"])
    trained = Path(cfg.runs_dir) / cfg.name / "train" / "model"
    return evaluate(cfg, initial, trained, out), []


def judge_stage(cfg: PipelineConfig, out: Path, upstream: dict, _: str) -> tuple[dict, list]:
    """MT-Bench / AlpacaEval on the trained policy; verdicts are cached outside the stage folder
    so a re-run or a resumed run never pays for the same judgment twice."""
    from align.judging.policy import hf_generate_fn
    from align.judging.run import run_judge

    set_threads()
    trained = Path(cfg.runs_dir) / cfg.name / "train" / "model"
    generate_fn = hf_generate_fn(trained, cfg.model.dtype)
    metrics = run_judge(cfg.judge, generate_fn, out, cfg.name, cache_root() / "judgments")
    return metrics, []


RUNNERS = {
    "prepare-model": prepare_model_stage,
    "sample": sample_stage,
    "annotate": annotate_stage,
    "train": train_stage,
    "evaluate": evaluate_stage,
    "judge": judge_stage,
}
