"""Turn a prompt (messages) and its responses into token ids the way training and scoring see them.

Prompt: the chat template with the generation prompt. A prompt over `train.max_prompt_length`
is refused before any work (`check_prompt_lengths`), unless `train.prompt_overflow` is
'keep_end': then it is cut from the left to keep its end (the NCA recipe). Response: its text
tokens plus the end-of-turn token, cut to fit `train.max_length`.
"""

from __future__ import annotations

from collections.abc import Iterable

from transformers import PreTrainedTokenizerBase

from align.core.errors import AlignError
from align.data.records import batched


def prompt_text(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict], max_len: int | None = None
) -> list[int]:
    """The chat-templated prompt's ids (no second BOS), keeping its last `max_len` if given."""
    ids = tokenizer(prompt_text(tokenizer, messages), add_special_tokens=False).input_ids
    return ids if max_len is None else ids[-max_len:]


def encode_response(
    tokenizer: PreTrainedTokenizerBase, text: str, max_len: int, finished: bool = True
) -> list[int]:
    """Response ids; the end-of-turn token is added only to responses that ended on their own."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if finished:
        ids = [*ids, tokenizer.eos_token_id]
    return ids[:max_len]


def encode_record(
    tokenizer: PreTrainedTokenizerBase, record: dict, max_length: int, max_prompt_length: int
) -> tuple[list[int], list[list[int]]]:
    """(prompt ids, [response ids] * K) for one K-wise record within the length budget."""
    prompt = encode_prompt(tokenizer, record["prompt"], max_prompt_length)
    budget = max_length - len(prompt)
    finished = record.get("finished") or [True] * len(record["responses"])
    responses = [
        encode_response(tokenizer, text, budget, done)
        for text, done in zip(record["responses"], finished, strict=True)
    ]
    return prompt, responses


def check_prompt_lengths(
    tokenizer: PreTrainedTokenizerBase, records: Iterable[dict], max_prompt_length: int, where: str
) -> None:
    """Refuse the first record whose templated prompt is longer than `max_prompt_length` tokens
    (`where` names the data source, e.g. 'data.train: data/x.jsonl'); a batch at a time."""
    start = 0
    for batch in batched(records, 512):
        texts = [prompt_text(tokenizer, r["prompt"]) for r in batch]
        lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False).input_ids]
        for i, (rec, n) in enumerate(zip(batch, lengths, strict=True), start):
            if n > max_prompt_length:
                raise AlignError(
                    f"{where} record {i} (id {rec['id']}): the prompt is {n} tokens, over "
                    f"train.max_prompt_length {max_prompt_length}; raise train.max_prompt_length "
                    "(and train.max_length), shorten or drop the record, or set "
                    "train.prompt_overflow: keep_end to cut long prompts from the left"
                )
        start += len(batch)
