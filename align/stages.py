"""What each stage does, as plain functions over a validated config (no Prefect, no DVC).

Each runner takes (cfg, out folder, upstream manifests, stage hash) and returns
(summary figures for the manifest, paths that must exist for the output to count as current).
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from align.config import PipelineConfig
from align.data import load_records
from align.errors import AlignError
from align.evaluate import RESERVED, evaluate
from align.io import sha256_tree
from align.logprobs import shared_prompt_logps
from align.models import (
    cache_root,
    check_model_folder,
    load_model,
    load_tokenizer,
    resolve_model,
)
from align.records import chunks, read_shards, shard_path, write_shard
from align.rewards import Scorer
from align.rewards.aux import combined_aux_rewards
from align.rewrite import rewrite_stage
from align.sampling import generate
from align.tokenize import check_prompt_lengths, encode_record


def prepare_model_stage(
    cfg: PipelineConfig, out: Path, upstream: dict, _: str
) -> tuple[dict, list]:
    """Resolve the policy and reference to local folders and check them before any other stage
    loads them: safetensors weights, no custom code, a chat template, one shared vocabulary."""
    models = {"policy": cfg.model.policy, "reference": cfg.model.reference or cfg.model.policy}
    summary: dict = {}
    vocab: dict[str, dict] = {}
    for role, source in models.items():
        path = resolve_model(source, role)
        vocab[role] = check_model_folder(path, role).get_vocab()
        summary[role] = {"source": source, "path": str(path), "hash": sha256_tree(path)}
    if vocab["policy"] != vocab["reference"]:
        raise AlignError(
            f"model.reference: {models['reference']!r} has another vocabulary than model.policy "
            f"{models['policy']!r} ({len(vocab['reference'])} vs {len(vocab['policy'])} tokens); "
            "reference log-probs must score the policy's tokens: use a reference with the "
            "policy's tokenizer, or remove model.reference to use the initial policy"
        )
    return summary, [summary["policy"]["path"], summary["reference"]["path"]]


def _source(cfg: PipelineConfig) -> str:
    return f"data.train: {cfg.data.train.path or cfg.data.train.hf_dataset}"


def _check_prompts(cfg: PipelineConfig, tokenizer, records: list[dict]) -> None:
    if cfg.train.prompt_overflow == "error":
        check_prompt_lengths(tokenizer, records, cfg.train.max_prompt_length, _source(cfg))


def sample_stage(cfg: PipelineConfig, out: Path, upstream: dict, _: str) -> tuple[dict, list]:
    sc = cfg.sample
    records = load_records(cfg.data.train, cfg.data.system_prompt, "data.train")
    path = upstream["prepare-model"]["summary"]["policy"]["path"]
    tokenizer = load_tokenizer(path)
    _check_prompts(cfg, tokenizer, records)  # before generating: annotate would refuse them
    dtype = sc.dtype or cfg.model.dtype
    if sc.backend == "vllm":
        from align.sampling_vllm import VLLMSampler

        sample = VLLMSampler(path, dtype, sc.seed).generate
    else:
        sample = partial(generate, load_model(path, dtype))
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


def _check_k(cfg: PipelineConfig, records: list[dict]) -> None:
    """Dataset responses: every record needs the K the loss asks for (sampling checks sample.k
    at validation)."""
    from align.losses import get_loss

    spec = get_loss(cfg.train.loss.name)
    for i, rec in enumerate(records):
        if len(rec["responses"]) < spec.min_k:
            raise AlignError(
                f"{_source(cfg)} record {i} (id {rec['id']}): {len(rec['responses'])} "
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
    ac = cfg.annotate
    if cfg.sample is not None:
        records = read_shards(Path(cfg.runs_dir) / cfg.name / "sample")
    else:
        records = load_records(cfg.data.train, cfg.data.system_prompt, "data.train")
        _check_k(cfg, records)
    path = upstream["prepare-model"]["summary"]["reference"]["path"]
    tokenizer = load_tokenizer(path, "reference")
    _check_prompts(cfg, tokenizer, records)
    scorer = None if ac.reward.from_data else Scorer(ac.reward, "annotate.reward")
    model = load_model(path, cfg.model.dtype)
    shards = chunks(records, cfg.sample.shard_size if cfg.sample else 256)
    bar = tqdm(total=len(records), desc="annotate", unit="prompt")
    for si, shard in enumerate(shards):
        target = shard_path(out, si)
        if target.exists():
            bar.update(len(shard))
            continue
        if scorer is not None:
            _score(scorer, shard)
        for rec, (lp, n) in zip(shard, _ref_logps(model, tokenizer, shard, cfg), strict=True):
            rec["ref_logps"], rec["n_tokens"] = lp, n
        if cfg.train.aux_rewards:  # UPO's designer rewards, once per response
            flat, _ = combined_aux_rewards(
                cfg.train.aux_rewards, [t for r in shard for t in r["responses"]]
            )
            for rec in shard:
                rec["aux_rewards"], flat = (
                    flat[: len(rec["responses"])],
                    flat[len(rec["responses"]) :],
                )
        write_shard(target, shard)
        bar.update(len(shard))
    bar.close()
    annotated = read_shards(out)
    rewards = [x for r in annotated for x in r["rewards"]]
    aux = [x for r in annotated for x in r.get("aux_rewards") or []]
    return {
        "records": len(records),
        "reward_mean": sum(rewards) / len(rewards),
        "reward_min": min(rewards),
        "reward_max": max(rewards),
        **({"aux_reward_mean": sum(aux) / len(aux)} if aux else {}),
    }, []


def train_stage(
    cfg: PipelineConfig, out: Path, upstream: dict, stage_hash: str
) -> tuple[dict, list]:
    path = Path(upstream["prepare-model"]["summary"]["policy"]["path"])
    if cfg.train.online:  # samples and labels its own pairs from the prompts
        from align.online import OnlineTrainer

        torch.manual_seed(cfg.train.seed)
        prompts = load_records(cfg.data.train, cfg.data.system_prompt, "data.train")
        ref = Path(upstream["prepare-model"]["summary"]["reference"]["path"])
        metrics = OnlineTrainer(cfg, path, ref, prompts, out, stage_hash).train()
    elif cfg.train.distributed is not None:  # each launched process runs train_offline
        from align.launch import launch_training

        metrics = launch_training(cfg, path, out, stage_hash)
    else:
        metrics = train_offline(cfg, path, out, stage_hash)
    return metrics, [out / "model" / "config.json"]


def train_offline(cfg: PipelineConfig, policy: Path, out: Path, stage_hash: str) -> dict:
    """Train `policy` on the annotated (BMC: rewritten) records in this process, which may be
    one of several under `accelerate launch`; returns the final metrics (empty on processes
    other than the main one)."""
    from align.trainer import Trainer

    torch.manual_seed(cfg.train.seed)
    source = "rewrite" if cfg.rewrite is not None else "annotate"  # BMC: the rewritten pairs
    records = read_shards(Path(cfg.runs_dir) / cfg.name / source)
    return Trainer(cfg, policy, records, out, stage_hash).train()


def evaluate_stage(cfg: PipelineConfig, out: Path, upstream: dict, _: str) -> tuple[dict, list]:
    initial = Path(upstream["prepare-model"]["summary"]["policy"]["path"])
    trained = Path(cfg.runs_dir) / cfg.name / "train" / "model"
    return evaluate(cfg, initial, trained, out), []


def judge_stage(cfg: PipelineConfig, out: Path, upstream: dict, _: str) -> tuple[dict, list]:
    """MT-Bench / AlpacaEval on the trained policy; verdicts are cached outside the stage folder
    so a re-run or a resumed run never pays for the same judgment twice."""
    from align.judging.policy import hf_generate_fn
    from align.judging.run import run_judge

    trained = Path(cfg.runs_dir) / cfg.name / "train" / "model"
    generate_fn = hf_generate_fn(trained, cfg.model.dtype)
    metrics = run_judge(cfg.judge, generate_fn, out, cfg.name, cache_root() / "judgments")
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
    return metrics, []


RUNNERS = {
    "prepare-model": prepare_model_stage,
    "sample": sample_stage,
    "annotate": annotate_stage,
    "rewrite": rewrite_stage,
    "train": train_stage,
    "evaluate": evaluate_stage,
    "judge": judge_stage,
}
