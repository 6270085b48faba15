"""Judge-based rewards: UltraFeedback-style 1–10 ratings and pairwise preference probabilities.

- `rate`: one judgment per (prompt, response) with a RATING template; the score is parsed as in
  MT-Bench (`[[N]]`, then `[N]`, 1 <= N <= 10); unparseable judgments are failures with reasons.
- `prefer`: P(a > b | prompt) from two judgments with the replies swapped,
  p = (P_1(A) + 1 - P_2(A)) / 2, where P_k(A) is the soft first-token probability of the letter
  A (hard 1/0 without log-probs); with one order failed, the other alone; both failed: None.
"""

from __future__ import annotations

from dataclasses import dataclass

from align.core.io import canonical_json
from align.llm.backend import Backend, ChatRequest
from align.llm.parsing import parse_ab, parse_rating
from align.llm.prompts import PREFERENCE, RATING, render_conversation

PREFERENCE_TOKENS = 4  # room for a stray space or bracket before the letter
TOP_LOGPROBS = 5
LOW, HIGH = 1.0, 10.0


@dataclass
class Rating:
    score: float | None
    error: str | None
    raw: str | None


@dataclass
class Preference:
    p: float | None  # P(a is better than b)
    orders: tuple[float | None, float | None]  # P(a) when shown first, and when shown second
    errors: tuple[str | None, str | None]


def as_messages(prompt: list[dict] | str) -> list[dict]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def rate(
    backend: Backend,
    prompts: list[list[dict]] | list[str],
    completions: list[str],
    template: str = "overall",
    max_tokens: int = 1024,
) -> list[Rating]:
    t = RATING[template]
    requests = [
        ChatRequest.chat(
            t.system,
            t.render(conversation=render_conversation(as_messages(p)), response=c),
            t.id,
            max_tokens,
        )
        for p, c in zip(prompts, completions, strict=True)
    ]
    out = []
    for res in backend.complete(requests):
        score, error = parse_rating(res.text, LOW, HIGH) if res.ok else (None, res.error)
        out.append(Rating(score, error, res.text))
    return out


def neutral_fill(prompts: list[list[dict]] | list[str], ratings: list[Rating]) -> list[float]:
    """Scores with each failure replaced by the mean valid score of the same prompt's other
    responses (no advantage either way), or the scale midpoint when none is valid."""
    valid: dict[str, list[float]] = {}
    keys = [canonical_json(as_messages(p)) for p in prompts]
    for key, r in zip(keys, ratings, strict=True):
        if r.score is not None:
            valid.setdefault(key, []).append(r.score)
    midpoint = (LOW + HIGH) / 2
    return [
        r.score
        if r.score is not None
        else (sum(valid[key]) / len(valid[key]) if key in valid else midpoint)
        for key, r in zip(keys, ratings, strict=True)
    ]


def prefer(
    backend: Backend,
    prompts: list[list[dict]] | list[str],
    a: list[str],
    b: list[str],
    logprobs: bool = True,
) -> list[Preference]:
    requests = []
    for p, x, y in zip(prompts, a, b, strict=True):
        conv = render_conversation(as_messages(p))
        for first, second in ((x, y), (y, x)):
            text = PREFERENCE.render(conversation=conv, answer_a=first, answer_b=second)
            requests.append(
                ChatRequest.chat(
                    PREFERENCE.system,
                    text,
                    PREFERENCE.id,
                    PREFERENCE_TOKENS,
                    top_logprobs=TOP_LOGPROBS if logprobs else 0,
                )
            )
    results = backend.complete(requests)
    out = []
    for i in range(len(a)):
        parsed = [
            parse_ab(res.text, res.top_logprobs) if res.ok else (None, res.error)
            for res in results[2 * i : 2 * i + 2]
        ]
        (p1, e1), (p2, e2) = parsed
        first, second = p1, (1 - p2 if p2 is not None else None)
        got = [x for x in (first, second) if x is not None]
        out.append(Preference(sum(got) / len(got) if got else None, (first, second), (e1, e2)))
    return out
