"""Turning judge text (and first-token log-probs) into numbers.

Every parser returns (value, None) or (None, reason): an unparseable judgment is a recorded,
counted failure with its raw text kept by the caller, never a crash and never a made-up value.
"""

from __future__ import annotations

import math
import re

# FastChat's two patterns, tried in this order; the first match wins (re.search).
RATING = re.compile(r"\[\[(\d+\.?\d*)\]\]")
RATING_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
VERDICTS = (("[[A]]", "A"), ("[[B]]", "B"), ("[[C]]", "tie"))
SINGLE_LETTER = re.compile(r"\W*(\w)\W*")


def parse_rating(text: str, low: float = 1, high: float = 10) -> tuple[float | None, str | None]:
    """FastChat's rule: the first `[[N]]`, else the first `[N]`. Our addition: N outside
    [low, high] is invalid (FastChat would average it in)."""
    match = RATING.search(text) or RATING_BACKUP.search(text)
    if match is None:
        return None, "no [[rating]] in the judgment"
    value = float(match.group(1))
    if not low <= value <= high:
        return None, f"rating {value:g} outside {low:g}-{high:g}"
    return value, None


def parse_verdict(text: str) -> tuple[str | None, str | None]:
    """'A', 'B' or 'tie' from `[[A]]`, `[[B]]`, `[[C]]`. Unlike FastChat (which takes A first
    when several appear), a judgment naming two different verdicts is a failure: resolving it
    by a fixed preference would inject a position bias."""
    found = [verdict for tag, verdict in VERDICTS if tag in text]
    if not found:
        return None, "no [[A]]/[[B]]/[[C]] verdict in the judgment"
    if len(found) > 1:
        return None, f"conflicting verdicts {found}"
    return found[0], None


def label_mass(top_logprobs: dict[str, float] | None, label: str) -> float:
    """Probability of the first token being `label` (tokens compared after stripping spaces)."""
    return sum(math.exp(lp) for tok, lp in (top_logprobs or {}).items() if tok.strip() == label)


def single_label(text: str, labels: tuple[str, str]) -> str | None:
    match = SINGLE_LETTER.fullmatch(text.strip())
    return match.group(1) if match and match.group(1) in labels else None


def parse_ab(text: str, top_logprobs: dict[str, float] | None) -> tuple[float | None, str | None]:
    """P(reply A is better): P(A) / (P(A) + P(B)) from first-token log-probs when either letter
    is among them, else 1 or 0 from a reply that is just `A`/`B` (or one `[[A]]`/`[[B]]`)."""
    p_a, p_b = label_mass(top_logprobs, "A"), label_mass(top_logprobs, "B")
    if p_a + p_b > 0:
        return p_a / (p_a + p_b), None
    label = single_label(text, ("A", "B"))
    if label is None:
        verdict, _ = parse_verdict(text)
        label = verdict if verdict in ("A", "B") else None
    if label is None:
        return None, "reply is not the letter A or B"
    return (1.0 if label == "A" else 0.0), None


# Expected rating (`judge.mtbench.rating: expected`): the judge's probability of each rating
RATINGS = tuple(range(1, 11))
FORCED_RATING = "\n\nRating: [["  # appended when a judgment states no [[rating]]


def rating_prefix(text: str) -> tuple[str, bool]:
    """(the judgment up to and including the `[[` that opens its first [[N]] rating, False),
    or (the whole judgment + FORCED_RATING, True) when it states none: the context whose
    next tokens the rating distribution is read from."""
    match = RATING.search(text)
    if match is not None:
        return text[: match.start() + 2], False
    return text.rstrip() + FORCED_RATING, True


def expected_rating(probs: dict[int, float]) -> float | None:
    """E[rating] = sum_k k p_k / sum_k p_k over k = 1..10; None when no mass is on a rating."""
    total = sum(probs.get(k, 0.0) for k in RATINGS)
    if total <= 0:
        return None
    return sum(k * probs.get(k, 0.0) for k in RATINGS) / total


def rating_token_probs(
    tokens: list[str], alternatives: list[dict[str, float]]
) -> dict[int, float] | None:
    """P(rating = k) from per-token top log-probs of a generated judgment (an OpenAI-style
    `logprobs.content`): the alternatives of the token that starts right after the `[[` of its
    first [[N]]; a token '10' counts as 10, '1' as 1 (a tokenizer that splits 10 into '1','0'
    puts 10's mass on 1). None when the judgment states no rating or none of the
    alternatives is one."""
    text = "".join(tokens)
    match = RATING.search(text)
    if match is None:
        return None
    start, offset = match.start() + 2, 0
    for token, alts in zip(tokens, alternatives, strict=True):
        if offset < start < offset + len(token):
            return None  # '[[' and the digit share a token: no distribution over digits alone
        if offset == start:
            probs: dict[int, float] = {}
            for alt, lp in alts.items():
                if alt.strip().isdigit() and int(alt.strip()) in RATINGS:
                    k = int(alt.strip())
                    probs[k] = probs.get(k, 0.0) + math.exp(lp)
            return probs or None
        offset += len(token)
    return None
