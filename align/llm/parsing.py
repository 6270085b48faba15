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
