"""The `rewrite` stage (BMC): annotate's records -> (pseudo-winner, loser) records in shards,
the rewriter's answers cached so a re-run or a resumed run never pays for one twice."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from tqdm.auto import tqdm

from align.config import PipelineConfig
from align.core.errors import AlignError
from align.data.records import ShardRecords, batched, shard_path, write_shard
from align.llm.open import open_backend
from align.model.loading import cache_root, load_model, load_tokenizer
from align.rewrite.masks import stopword_token_ids
from align.rewrite.rewriter import (
    FALLBACKS,
    REWRITTEN,
    pair_records,
    preference_pairs,
    rewrite_texts,
)
from align.stages.common import stage_device


def rewrite_stage(cfg: PipelineConfig, out: Path, upstream: dict, _: str) -> tuple[dict, list]:
    """The `rewrite` stage: annotate's records -> (pseudo-winner, loser) records in shards,
    one shard of pairs in memory at a time."""
    rc = cfg.rewrite
    records = ShardRecords(Path(cfg.runs_dir) / cfg.name / "annotate")
    pairs, skipped = preference_pairs(records)
    n_records = len(records)
    if skipped == n_records:
        raise AlignError(
            f"rewrite: none of the {n_records} annotated records has a preference (all "
            "rewards equal within every record); BMC needs pairs: use data or a reward that "
            "separates responses, or remove 'rewrite'"
        )
    path = upstream["prepare-model"]["summary"]["reference"]["path"]
    tokenizer = load_tokenizer(path, "reference")
    stopwords = stopword_token_ids(tokenizer)
    device = stage_device(cfg)
    backend = open_backend(
        rc.backend, Path(rc.cache_dir or cache_root() / "rewrites"), device=device
    )
    model = None
    bar = tqdm(total=n_records - skipped, desc="rewrite", unit="pair")
    try:
        for si, shard in enumerate(batched(pairs, rc.shard_size)):
            target = shard_path(out, si)
            if not target.exists():  # else written by an earlier, interrupted run
                texts = rewrite_texts(backend, shard, rc, tokenizer)
                model = model or load_model(path, cfg.model.dtype, device=device)
                write_shard(target, pair_records(shard, texts, model, tokenizer, stopwords, cfg))
            bar.update(len(shard))
    finally:
        backend.cache.close()
        bar.close()
    summary = summarise(ShardRecords(out), skipped, backend.stats())
    return {**summary, "device": str(device)}, []


def summarise(rows: Iterable[dict], skipped: int, stats: dict) -> dict:
    """Manifest figures, counted as the rewritten records `rows` stream by: how many pairs were
    modified, why the others fell back, how much of the pseudo-winners the diff marks."""
    status: Counter[str] = Counter()
    marked = 0.0  # a running sum in record order: the same float as summing a list of shares
    for r in rows:
        status[r["rewrite"]] += 1
        mask = r["diff_masks"][0]
        marked += sum(mask) / max(len(mask), 1)
    pairs = status.total()
    modified = sum(status[s] for s in REWRITTEN)
    return {
        "pairs": pairs,
        "skipped_ties": skipped,
        "modified": modified,
        "modified_share": round(modified / pairs, 4),
        "shortened": status["shortened"],
        **{f"fallback_{reason}": status[reason] for reason in FALLBACKS},
        "changed_token_share": round(marked / pairs, 4),
        "rewriter": {k: stats.get(k, 0) for k in ("requests", "cache_hits", "output_tokens")},
    }
