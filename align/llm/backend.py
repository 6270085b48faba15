"""One interface for every judge: `complete(requests) -> results`, same length, same order.

A result is either a completion (text, plus the first token's top log-probs when asked for and
available) or a failure with its reason; a backend never raises for one bad request, so every
requested judgment ends as a verdict or as a counted failure. `on_result(i, result)` is called as
each result arrives, which lets the cache keep what was paid for even if the run is killed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from align.config.judge import BackendConfig
from align.core.io import canonical_json

OnResult = Callable[[int, "ChatResult"], None]


@dataclass(frozen=True)
class ChatRequest:
    """One judge call. `template` (name@version) keys the cache together with the judge id."""

    messages: tuple[tuple[str, str], ...]  # (role, content) pairs, hashable and ordered
    template: str
    max_tokens: int
    temperature: float = 0.0
    top_logprobs: int = 0  # >0: return that many alternatives for the first output token
    # also return P(rating = k), k = 1..10, where the judgment states its [[rating]]
    # (align/llm/parsing.py: expected_rating); backends without token probabilities ignore it
    rating_probs: bool = False

    @classmethod
    def chat(
        cls,
        system: str | None,
        user: str,
        template: str,
        max_tokens: int,
        temperature: float = 0.0,
        top_logprobs: int = 0,
        rating_probs: bool = False,
    ) -> ChatRequest:
        messages = ((("system", system),) if system else ()) + (("user", user),)
        return cls(messages, template, max_tokens, temperature, top_logprobs, rating_probs)

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]

    def payload(self) -> dict[str, Any]:
        """Everything that determines the judge's answer (hashed for the cache key); a key
        appears only when set, so older cache entries keep their keys."""
        out = {
            "messages": self.message_dicts(),
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_logprobs": self.top_logprobs,
        }
        return {**out, "rating_probs": True} if self.rating_probs else out

    def canonical(self) -> str:
        return canonical_json(self.payload())


@dataclass
class ChatResult:
    """A completion, or a failure (`error` set, `text` None) with its reason."""

    text: str | None = None
    top_logprobs: dict[str, float] | None = None  # first output token: token -> log-prob
    rating_probs: dict[int, float] | None = None  # P(rating = k), when asked for and available
    error: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    seconds: float = 0.0
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None

    def to_json(self) -> dict[str, Any]:
        return {
            "text": self.text,
            # a token of log-prob -inf has probability 0, as one left out; JSON has no -inf
            "top_logprobs": self.top_logprobs
            and {t: lp for t, lp in self.top_logprobs.items() if math.isfinite(lp)},
            "rating_probs": self.rating_probs,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": self.cost_usd,
            "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], cached: bool = True) -> ChatResult:
        return cls(
            text=data["text"],
            top_logprobs=data.get("top_logprobs"),
            rating_probs=(
                {int(k): float(v) for k, v in data["rating_probs"].items()}
                if data.get("rating_probs")
                else None
            ),
            input_tokens=int(data.get("input_tokens") or 0),
            output_tokens=int(data.get("output_tokens") or 0),
            cost_usd=data.get("cost_usd"),
            seconds=float(data.get("seconds") or 0.0),
            cached=cached,
        )


class Backend(Protocol):
    """What every judge backend offers."""

    judge_id: str  # identity for the cache: a changed judge never reuses old verdicts

    def complete(
        self, requests: list[ChatRequest], on_result: OnResult | None = None
    ) -> list[ChatResult]: ...

    def stats(self) -> dict[str, float]: ...


def judge_fingerprint(cfg: BackendConfig) -> str:
    """The judge's identity, as the cache keys it (no key, no model loading): the endpoint and
    model name for HTTP; the model's content fingerprint and dtype for a local judge. Stage
    hashes can use it as the judge's input fingerprint."""
    if cfg.kind == "openai":
        assert cfg.base_url is not None
        return f"openai:{cfg.base_url.rstrip('/')}#{cfg.model}"
    from align.model.loading import source_fingerprint

    return f"local:{source_fingerprint(cfg.model)}:{cfg.dtype}"
