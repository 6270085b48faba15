"""Held-out evaluation: generate with the initial and the trained policy, score both with the
same reward, report mean reward before/after and the trained-over-initial win rate."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from align.config import PipelineConfig
from align.core.device import free_accelerator
from align.core.io import atomic_write_json, atomic_write_text
from align.data.datasets import load_records
from align.data.records import RESERVED, chunks
from align.generate.hf import generate
from align.model.loading import load_model, load_tokenizer
from align.rewards import Scorer
from align.rewards.aux import combined_aux_rewards
from align.stages.common import stage_device


def reward_columns(records: list[dict], repeat: int = 1) -> dict[str, list]:
    """The records' extra fields (e.g. `answer`) as reward-function columns, each value repeated
    `repeat` times to align with K completions per prompt."""
    keys = [k for k in records[0] if k not in RESERVED] if records else []
    return {k: [r.get(k) for r in records for _ in range(repeat)] for k in keys}


def answer(
    model_path: Path, records: list[dict], cfg: PipelineConfig, label: str, device: torch.device
) -> list[str]:
    """The greedy (or evaluate.temperature) answer of the model at `model_path`, on `device`,
    to every record's prompt."""
    ec = cfg.evaluate
    model = load_model(model_path, ec.dtype or cfg.model.dtype, device=device)
    tokenizer = load_tokenizer(model_path)
    texts: list[str] = []
    for i, batch in enumerate(
        tqdm(chunks(records, ec.batch_size), desc=f"evaluate {label}", unit="batch")
    ):
        out, _ = generate(
            model,
            tokenizer,
            [r["prompt"] for r in batch],
            k=1,
            max_new_tokens=ec.max_new_tokens,
            temperature=ec.temperature,
            seed=i,
        )
        texts.extend(t[0] for t in out)
    return texts


def pairwise_wins(a: list[float], b: list[float]) -> list[float]:
    """Per prompt, 1 where a's reward beats b's, 1/2 on a tie, else 0 (the mean is a's win
    rate over b)."""
    return [1.0 if x > y else 0.5 if x == y else 0.0 for x, y in zip(a, b, strict=True)]


def evaluate(
    cfg: PipelineConfig, initial: Path, trained: Path, out: Path, device: torch.device
) -> dict:
    """Both policies answer the held-out prompts on `device`; the reward scores the answers."""
    records = load_records(cfg.data.eval, cfg.data.system_prompt, "data.eval")[: cfg.evaluate.limit]
    scorer = Scorer(cfg.eval_reward, device=device)
    prompts, columns = [r["prompt"] for r in records], reward_columns(records)
    scores, aux = {}, {}
    for label, path in (("initial", initial), ("trained", trained)):
        texts = answer(path, records, cfg, label, device)
        free_accelerator()  # the initial policy's memory goes before the trained one loads
        scores[label] = scorer(prompts, texts, columns)
        if cfg.train.aux_rewards:  # UPO's designer reward R of the held-out answers
            aux[label] = combined_aux_rewards(cfg.train.aux_rewards, texts, device)
        rows = [
            {"id": r["id"], "prompt": r["prompt"], "response": t, "reward": s}
            for r, t, s in zip(records, texts, scores[label], strict=True)
        ]
        atomic_write_text(
            out / f"answers-{label}.jsonl", "".join(json.dumps(x) + "\n" for x in rows)
        )
    wins = pairwise_wins(scores["trained"], scores["initial"])
    n = len(records)
    metrics = {
        "n_prompts": n,
        "reward/initial": sum(scores["initial"]) / n,
        "reward/trained": sum(scores["trained"]) / n,
        "win_rate/trained_vs_initial": sum(wins) / n,
    }
    for label, (total, parts) in aux.items():
        metrics[f"aux_reward/{label}"] = sum(total) / n
        metrics.update({f"aux/{fn}/{label}": mean for fn, mean in parts.items()})
    atomic_write_json(out / "metrics.json", metrics)
    atomic_write_text(out / "report.md", render_report(cfg, metrics))
    return metrics


def render_report(cfg: PipelineConfig, m: dict) -> str:
    reward = cfg.eval_reward.function or cfg.eval_reward.model
    return (
        f"# {cfg.name}: evaluation\n\n"
        f"Held-out prompts: {m['n_prompts']} · reward: `{reward}` · "
        f"loss: `{cfg.train.loss.name}` · decoding: "
        f"{'greedy' if cfg.evaluate.temperature == 0 else f'T={cfg.evaluate.temperature}'}\n\n"
        "| policy | mean reward |\n|---|---|\n"
        f"| initial | {m['reward/initial']:.4f} |\n| trained | {m['reward/trained']:.4f} |\n\n"
        "Win rate of trained over initial (ties count ½): "
        f"**{m['win_rate/trained_vs_initial']:.3f}**\n"
    )


def evaluate_stage(cfg: PipelineConfig, out: Path, upstream: dict, _: str) -> tuple[dict, list]:
    """The `evaluate` stage: the initial and the trained policy answer the held-out prompts."""
    initial = Path(upstream["prepare-model"]["summary"]["policy"]["path"])
    trained = Path(cfg.runs_dir) / cfg.name / "train" / "model"
    device = stage_device(cfg)
    return {**evaluate(cfg, initial, trained, out, device), "device": str(device)}, []
