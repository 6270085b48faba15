"""Judge-output parsing on realistic replies: valid, malformed, several ratings, out of range."""

from __future__ import annotations

import math

import pytest

from align.judging.alpacaeval import parse_alpaca
from align.llm.parsing import parse_ab, parse_rating, parse_verdict

RATINGS = [
    # (judge output, expected score or None, expected reason fragment)
    ("The answer is correct and concise.\n\nRating: [[8]]", 8.0, None),
    ("Mostly right but shallow. Rating: [[6.5]]", 6.5, None),
    ("Rating: [[10]]", 10.0, None),
    ("Rating: [[1]]", 1.0, None),
    ("It misses the point. Rating: [3]", 3.0, None),  # FastChat's backup pattern
    ("Turn 1 deserves [[4]]; overall I would say [[7]]", 4.0, None),  # first [[N]] wins
    ("See [2] for details. Final: [[9]]", 9.0, None),  # [[N]] is tried before [N]
    ("I would rate this a 7 out of 10.", None, "no [[rating]]"),
    ("Rating: [[seven]]", None, "no [[rating]]"),
    ("Rating: [[ 7 ]]", None, "no [[rating]]"),  # FastChat's pattern allows no spaces
    ("", None, "no [[rating]]"),
    ("Rating: [[11]]", None, "outside 1-10"),
    ("Rating: [[0]]", None, "outside 1-10"),
    ("Rating: [[85]] / 100", None, "outside 1-10"),
    ("Rating: [[7.]]", 7.0, None),
]


@pytest.mark.parametrize(("text", "score", "reason"), RATINGS)
def test_parse_rating(text: str, score: float | None, reason: str | None) -> None:
    got, error = parse_rating(text)
    assert got == score
    if reason is None:
        assert error is None
    else:
        assert error is not None and reason in error


VERDICTS = [
    ("Assistant A follows the instruction; B does not. [[A]]", "A", None),
    ("Both are fine but B is more complete.\n\n[[B]]", "B", None),
    ("They are equally good. [[C]]", "tie", None),
    ("Final verdict: [[A]]. Yes, [[A]].", "A", None),  # the same verdict twice is fine
    ("At first [[A]] seemed better, but on reflection [[B]]", None, "conflicting"),
    ("Assistant A is better.", None, "no [[A]]"),
    ("[A]", None, "no [[A]]"),
    ("[[D]]", None, "no [[A]]"),
]


@pytest.mark.parametrize(("text", "verdict", "reason"), VERDICTS)
def test_parse_verdict(text: str, verdict: str | None, reason: str | None) -> None:
    got, error = parse_verdict(text)
    assert got == verdict
    assert (error is None) if reason is None else (reason in error)


def test_alpaca_soft_preference_from_logprobs() -> None:
    # P(m) = 0.2, P(M) = 0.6 (+0.2 on " M" with a leading space): pref = 2 - 0.2 / 1.0 = 1.8
    top = {"m": math.log(0.2), "M": math.log(0.6), " M": math.log(0.2), "The": math.log(0.01)}
    pref, error, kind = parse_alpaca("M", top)
    assert pref == pytest.approx(1.8) and error is None and kind == "soft"


@pytest.mark.parametrize(
    ("text", "pref", "kind"),
    [("m", 1.0, "hard"), ("M", 2.0, "hard"), (" M\n", 2.0, "hard"), ("(m)", 1.0, "hard")],
)
def test_alpaca_hard_preference_without_logprobs(text: str, pref: float, kind: str) -> None:
    assert parse_alpaca(text, None) == (pref, None, kind)


@pytest.mark.parametrize("text", ["Output (m) is better", "mM", "Model", "", "x"])
def test_alpaca_unparseable(text: str) -> None:
    pref, error, kind = parse_alpaca(text, {"The": -0.1, "Output": -2.0})
    assert pref is None and kind == "none" and "m or M" in error


def test_ab_probability() -> None:
    assert parse_ab("A", {"A": math.log(0.75), "B": math.log(0.25)}) == (
        pytest.approx(0.75),
        None,
    )
    assert parse_ab("B", None) == (0.0, None)
    assert parse_ab("Verdict: [[A]]", None) == (1.0, None)
    p, error = parse_ab("Both replies are good", None)
    assert p is None and "A or B" in error
