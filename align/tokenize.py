"""Turn a prompt (messages) and its responses into token ids the way training and scoring see them.

Prompt: the chat template with the generation prompt, cut from the left to keep its end (the
NCA recipe's `keep_end`). Response: its text tokens plus the end-of-turn token, cut to fit.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase


def prompt_text(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_prompt(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict], max_len: int
) -> list[int]:
    ids = tokenizer(prompt_text(tokenizer, messages), add_special_tokens=False).input_ids
    return ids[-max_len:]


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
