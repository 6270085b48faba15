"""Verifiable reward of the quickstart task: is the final number the right answer?"""

from __future__ import annotations

import re

NUMBER = re.compile(r"-?\d+")
BARE_NUMBER = re.compile(r"\s*-?\d+\.?\s*")
FORMAT_CREDIT = 0.25  # the prompt asks for "only the number"


def exact_answer(
    prompts: list, completions: list[str], answer: list[int], **_: list
) -> list[float]:
    """1 if the last integer in the completion equals `answer`, plus 0.25 when the completion is
    nothing but that number (the format the prompt asks for)."""
    scores = []
    for text, gold in zip(completions, answer, strict=True):
        numbers = NUMBER.findall(text)
        correct = bool(numbers) and int(numbers[-1]) == int(gold)
        scores.append(
            float(correct) + (FORMAT_CREDIT if correct and BARE_NUMBER.fullmatch(text) else 0.0)
        )
    return scores
