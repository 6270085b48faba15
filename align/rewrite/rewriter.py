"""BMC's bridging stage: an LLM repairs each loser with minimal edits, guided by the winner.

Jiang et al., arXiv 2408.07471, section 3.1. For every annotated record with a
preference (best vs worst reward, `best_worst_pairs`; records whose rewards are all equal are
skipped), the rewriter sees the instruction, the winner (as a reference only) and the loser,
and returns the loser with only its wrong or weaker spans changed. The pair becomes
(pseudo-winner, loser); the original winner is kept in the record as `winner`.

Guard rails, each counted in the manifest summary:
- failed (no answer after the backend's retries), empty, truncated (hit the token cap) or
  unchanged rewrites fall back to the original (winner, loser) pair, with the reason recorded
  in the record's `rewrite` field;
- a rewrite longer than `max_length_ratio` x the loser's tokens + 16 is cut by rule
  (`limit_length`) and kept as `shortened`.

The stage stores, per pair, the token-level data training needs so nothing is recomputed per
step: reference log-probs (summed and per token) and the BMC diff masks (`bmc_diff_masks` over
the response token ids, stop words excluded).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator

import torch

from align.config import PipelineConfig, RewriteConfig
from align.data.records import chunks
from align.llm.backend import ChatRequest, ChatResult
from align.model.logprobs import shared_prompt_token_logps
from align.model.tokenize import encode_record
from align.rewrite.masks import bmc_diff_masks

TEMPLATE = "bmc-rewrite@1"
SYSTEM = (
    "You are a careful editor. You improve a draft answer by changing as little of it as possible."
)
USER = """Below are an instruction, a reference answer and a draft answer.

Revise the draft so that it is as good as the reference. Edit only the parts of the draft \
that are wrong, missing or clearly worse than the reference, and bring those parts up to the \
reference's content and quality. Keep everything else in the draft exactly as it is: the same \
wording, order, format and roughly the same length. Do not copy the reference wholesale and do \
not add commentary.

Reply with the revised draft only.

[Instruction]
{instruction}

[Reference answer]
{winner}

[Draft answer]
{loser}"""
LENGTH_SLACK = 16  # tokens allowed beyond max_length_ratio x the loser's length
FALLBACKS = ("failed", "empty", "truncated", "unchanged")
REWRITTEN = ("ok", "shortened")  # the other statuses: the original winner kept
LABEL = re.compile(r"^\s*(revised( draft| answer| response)?|rewrite|answer)\s*:\s*", re.I)
FENCE = re.compile(r"^```[\w-]*\n(.*)\n```$", re.S)


def instruction_text(prompt: list[dict]) -> str:
    """The conversation as the rewriter reads it: the last user turn alone, or every turn as
    'role: content' lines when there are several."""
    turns = [m for m in prompt if m["role"] != "system"]
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in turns)


def rewrite_request(prompt: list[dict], winner: str, loser: str, max_tokens: int) -> ChatRequest:
    """The rewriter's chat request (template `bmc-rewrite@1`, which keys the cache): our
    system line, then the instruction, the winner as the reference and the loser as the draft."""
    user = USER.format(instruction=instruction_text(prompt), winner=winner, loser=loser)
    return ChatRequest.chat(SYSTEM, user, TEMPLATE, max_tokens)


def parse_rewrite(text: str) -> str:
    """The revised response from the rewriter's reply: surrounding whitespace, one leading
    label ('Revised draft:', 'Answer:') and a code fence around the whole reply removed."""
    text = text.strip()
    fenced = FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    return LABEL.sub("", text, count=1).strip()


def _same(a: str, b: str) -> bool:
    return " ".join(a.split()) == " ".join(b.split())


def check_rewrite(result: ChatResult, loser: str, max_tokens: int) -> tuple[str | None, str]:
    """(revised text, 'ok') or (None, reason) with reason one of FALLBACKS."""
    if not result.ok:
        return None, "failed"
    if result.output_tokens >= max_tokens:
        return None, "truncated"
    text = parse_rewrite(result.text or "")
    if not text:
        return None, "empty"
    if _same(text, loser):
        return None, "unchanged"
    return text, "ok"


def limit_length(text: str, tokenizer, loser_tokens: int, ratio: float) -> tuple[str, bool]:
    """Cut an over-long rewrite: at most ``ceil(ratio * loser_tokens) + 16`` tokens, then back
    to the last sentence end ('.', '!', '?' or a newline) in the kept text's second half, if
    there is one. Returns (text, whether it was cut)."""
    limit = math.ceil(ratio * loser_tokens) + LENGTH_SLACK
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) <= limit:
        return text, False
    kept = tokenizer.decode(ids[:limit], skip_special_tokens=True)
    ends = [m.end() for m in re.finditer(r"[.!?](\s|$)|\n", kept)]
    if ends and ends[-1] > len(kept) // 2:
        kept = kept[: ends[-1]]
    return kept.rstrip(), True


def preference(rec: dict) -> tuple[int, int] | None:
    """(winner index, loser index) of a record: best against worst reward, ties to the lower
    index; None when all its rewards are equal."""
    from align.data.pairing import best_worst_pairs

    best, worst, has = best_worst_pairs(torch.tensor([rec["rewards"]], dtype=torch.float64))
    return (int(best[0]), int(worst[0])) if bool(has[0]) else None


def preference_pairs(records: Iterable[dict]) -> tuple[Iterator[tuple[dict, int, int]], int]:
    """(record, winner index, loser index) for every record with a preference, drawn lazily,
    and how many records are skipped (all rewards equal). `records` is read twice (a list or
    `ShardRecords`): now to count the skipped, then as the pairs are drawn."""
    skipped = sum(preference(rec) is None for rec in records)
    return _pairs(records), skipped


def _pairs(records: Iterable[dict]) -> Iterator[tuple[dict, int, int]]:
    for rec in records:
        choice = preference(rec)
        if choice is not None:
            yield rec, *choice


def rewrite_texts(
    backend, pairs: list[tuple[dict, int, int]], rc: RewriteConfig, tokenizer
) -> list[tuple[str, str]]:
    """(pseudo-winner text, status) per pair; status 'ok', 'shortened' or a fallback reason
    (then the text is the original winner)."""
    max_tokens = rc.backend.max_new_tokens
    requests = [
        rewrite_request(rec["prompt"], rec["responses"][w], rec["responses"][lo], max_tokens)
        for rec, w, lo in pairs
    ]
    out = []
    for (rec, w, lo), result in zip(pairs, backend.complete(requests), strict=True):
        loser = rec["responses"][lo]
        text, status = check_rewrite(result, loser, max_tokens)
        if text is None:
            out.append((rec["responses"][w], status))
            continue
        n_loser = len(tokenizer(loser, add_special_tokens=False).input_ids)
        text, cut = limit_length(text, tokenizer, n_loser, rc.max_length_ratio)
        out.append((text, "shortened" if cut else "ok"))
    return out


@torch.no_grad()
def pair_records(
    pairs: list[tuple[dict, int, int]],
    texts: list[tuple[str, str]],
    model,
    tokenizer,
    stopwords: set[int],
    cfg: PipelineConfig,
) -> list[dict]:
    """Training records (K=2: pseudo-winner, loser) with reference log-probs (summed and per
    token) and diff masks over the response token ids the trainer will see."""
    rows = []
    for (rec, w, lo), (text, status) in zip(pairs, texts, strict=True):
        finished = rec.get("finished") or [True] * len(rec["responses"])
        rewritten = status in REWRITTEN
        row = {
            **{k: v for k, v in rec.items() if k not in ("ref_logps", "n_tokens", "aux_rewards")},
            "responses": [text, rec["responses"][lo]],
            "rewards": [rec["rewards"][w], rec["rewards"][lo]],
            "finished": [True if rewritten else finished[w], finished[lo]],
            "winner": rec["responses"][w],
            "rewrite": status,
        }
        rows.append(row)
    groups = [
        encode_record(tokenizer, r, cfg.train.max_length, cfg.train.max_prompt_length) for r in rows
    ]
    for batch_rows, batch in zip(chunks(rows, 8), chunks(groups, 8), strict=True):
        per_token, mask = shared_prompt_token_logps(model, batch, tokenizer.pad_token_id)
        per_token, mask = per_token.double().cpu(), mask.cpu()
        for b, (row, (_, (chosen, rejected))) in enumerate(zip(batch_rows, batch, strict=True)):
            lp = [per_token[2 * b + j][mask[2 * b + j]].tolist() for j in range(2)]
            row["ref_token_logps"] = lp
            row["ref_logps"] = [sum(x) for x in lp]
            row["n_tokens"] = [len(chosen), len(rejected)]
            row["diff_masks"] = list(bmc_diff_masks(chosen, rejected, stopwords))
    return rows
