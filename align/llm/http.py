"""OpenAI-compatible chat-completions client (OpenAI, vLLM, Ollama, llama.cpp server, ...).

Each request gets up to 1 + max_retries attempts, each with its own `timeout_s`: a deadline for
the whole attempt (connect, send, every byte of the answer), not per read, so a server that
trickles a byte at a time cannot hold a request open.
- Retried: HTTP 408/409/425/429 and 5xx, timeouts, connection errors (refused, reset, closed
  mid-body), and 2xx bodies that are not JSON or have no `choices[0].message`.
- Wait before retry k (0-based): the server's Retry-After (or retry-after-ms) when sent, else
  full jitter U(0, min(backoff_max_s, backoff_base_s * 2^k)). Other 4xx fail at once.
- At most `concurrency` requests in flight; attempt starts paced to `requests_per_minute`.
The API key is read from the environment variable named in the config, sent only in the
Authorization header, and scrubbed (align/llm/redact.py, in every encoding a server may echo it)
from every error text and every answer this module returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import logging
import math
import os
import random
import time
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx

from align.config.judge import BackendConfig
from align.core.errors import AlignError
from align.llm.backend import ChatRequest, ChatResult, OnResult, judge_fingerprint
from align.llm.parsing import rating_token_probs
from align.llm.redact import Redactor

log = logging.getLogger("align.judging.http")
RETRY_STATUS = frozenset({408, 409, 425, 429})
RATING_TOP_LOGPROBS = 20  # alternatives per token with rating_probs (OpenAI's maximum)
MAX_RETRY_AFTER_S = 300.0  # a server asking for longer is treated as asking for this
T = TypeVar("T")


class _Secret:
    """Holds the key; its repr and str never show it."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<secret>"

    __str__ = __repr__


class _Retry(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


class _Fatal(Exception):
    pass


def read_api_key(env_name: str | None) -> _Secret | None:
    """The key from the named variable; None when no variable is configured (local servers)."""
    if env_name is None:
        return None
    value = os.environ.get(env_name, "")
    if not value.strip():
        raise AlignError(
            f"judge backend: api_key_env names the environment variable {env_name}, which is not "
            f"set or empty; export the API key in {env_name} (keys never go in YAML)"
        )
    return _Secret(value.strip())


def retry_after_s(headers: httpx.Headers) -> float | None:
    """Seconds the server asked us to wait: retry-after-ms, Retry-After seconds or HTTP date."""
    try:
        if ms := headers.get("retry-after-ms"):
            return min(MAX_RETRY_AFTER_S, max(0.0, float(ms) / 1000))
    except ValueError:
        pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = (when - datetime.now(UTC)).total_seconds()
    if not math.isfinite(seconds):
        return None
    return min(MAX_RETRY_AFTER_S, max(0.0, seconds))


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion, also from code that already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


class _Pacer:
    """At most `rpm` attempt starts per minute, evenly spaced."""

    def __init__(self, rpm: float | None):
        self.interval = 60.0 / rpm if rpm else 0.0
        self.next = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self.lock:
            now = time.monotonic()
            start = max(now, self.next)
            self.next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)


def _first_token_logprobs(choice: dict) -> dict[str, float] | None:
    content = (choice.get("logprobs") or {}).get("content") or []
    if not content or not isinstance(content[0], dict):
        return None
    first = content[0]
    out: dict[str, float] = {}
    for alt in [first, *(first.get("top_logprobs") or [])]:
        if isinstance(alt, dict) and isinstance(alt.get("token"), str):
            lp = float(alt.get("logprob", -math.inf))
            out[alt["token"]] = max(lp, out.get(alt["token"], -math.inf))
    return out or None


def _rating_probs(choice: dict) -> dict[int, float] | None:
    """P(rating = k) at the judgment's [[rating]], from every output token's top log-probs."""
    content = (choice.get("logprobs") or {}).get("content") or []
    tokens, alternatives = [], []
    for entry in content:
        if not isinstance(entry, dict) or not isinstance(entry.get("token"), str):
            return None
        alts = {
            a["token"]: float(a.get("logprob", -math.inf))
            for a in [entry, *(entry.get("top_logprobs") or [])]
            if isinstance(a, dict) and isinstance(a.get("token"), str)
        }
        tokens.append(entry["token"])
        alternatives.append(alts)
    return rating_token_probs(tokens, alternatives)


class OpenAIBackend:
    """POST {base_url}/chat/completions for each request, concurrently, with retries."""

    def __init__(self, cfg: BackendConfig):
        assert cfg.base_url is not None  # the config validator guarantees it
        self.cfg = cfg
        self._key = read_api_key(cfg.api_key_env)
        self._redactor = Redactor(self._key.reveal()) if self._key is not None else None
        self._url = cfg.base_url.rstrip("/") + "/chat/completions"
        self.judge_id = judge_fingerprint(cfg)
        self._rng = random.Random()
        self._stats: dict[str, float] = dict.fromkeys(
            ("requests", "retries", "failed", "input_tokens", "output_tokens", "cost_usd"), 0
        )

    def stats(self) -> dict[str, float]:
        return dict(self._stats)

    def redact(self, text: str) -> str:
        return self._redactor(text) if self._redactor is not None else text

    def complete(
        self, requests: list[ChatRequest], on_result: OnResult | None = None
    ) -> list[ChatResult]:
        if not requests:
            return []
        return run_sync(self._run(requests, on_result))

    async def _run(self, requests: list[ChatRequest], on_result: OnResult | None) -> list:
        headers = {"Content-Type": "application/json"}
        if self._key is not None:
            headers["Authorization"] = f"Bearer {self._key.reveal()}"
        n = self.cfg.concurrency
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        sem, pacer = asyncio.Semaphore(n), _Pacer(self.cfg.requests_per_minute)
        async with httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(self.cfg.timeout_s), limits=limits
        ) as client:

            async def one(i: int, request: ChatRequest) -> ChatResult:
                result = await self._with_retries(client, sem, pacer, request)
                if on_result is not None:
                    on_result(i, result)
                return result

            return await asyncio.gather(*(one(i, r) for i, r in enumerate(requests)))

    def _body(self, request: ChatRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.cfg.model,
            "messages": request.message_dicts(),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        if request.top_logprobs or request.rating_probs:
            body["logprobs"] = True
            top = max(request.top_logprobs, RATING_TOP_LOGPROBS if request.rating_probs else 0)
            body["top_logprobs"] = top
        return body

    async def _with_retries(
        self, client: httpx.AsyncClient, sem: asyncio.Semaphore, pacer: _Pacer, req: ChatRequest
    ) -> ChatResult:
        body, started, reason = self._body(req), time.monotonic(), ""
        attempts = self.cfg.max_retries + 1
        for attempt in range(attempts):
            wait: float | None = None
            async with sem:
                await pacer.wait()
                self._stats["requests"] += 1
                try:
                    async with asyncio.timeout(self.cfg.timeout_s):  # the whole attempt
                        response = await client.post(self._url, json=body)
                    result = self._parse(response, req)
                except (httpx.TimeoutException, TimeoutError):
                    reason = f"timeout after {self.cfg.timeout_s:g}s"
                except httpx.TransportError as exc:
                    reason = f"connection error ({type(exc).__name__})"
                except _Retry as exc:
                    reason, wait = exc.reason, exc.retry_after
                except _Fatal as exc:
                    self._stats["failed"] += 1
                    return ChatResult(
                        error=self.redact(str(exc)), seconds=time.monotonic() - started
                    )
                else:
                    result.seconds = time.monotonic() - started
                    self._account(result)
                    return result
            if attempt + 1 == attempts:
                break
            self._stats["retries"] += 1
            cap = min(self.cfg.backoff_max_s, self.cfg.backoff_base_s * 2**attempt)
            delay = wait if wait is not None else self._rng.uniform(0, cap)
            log.debug(
                "judge request: %s; retry %d in %.2fs", self.redact(reason), attempt + 1, delay
            )
            await asyncio.sleep(delay)
        self._stats["failed"] += 1
        message = self.redact(f"gave up after {attempts} attempts; last: {reason}")
        log.warning("judge request failed: %s", message)
        return ChatResult(error=message, seconds=time.monotonic() - started)

    def _parse(self, resp: httpx.Response, request: ChatRequest) -> ChatResult:
        status = resp.status_code
        if status in RETRY_STATUS or status >= 500:
            raise _Retry(f"HTTP {status}", retry_after_s(resp.headers))
        if status >= 400:
            # redact before cutting: a cut could leave a fragment of the key unmatched
            snippet = " ".join(self.redact(resp.text).split())[:200]
            raise _Fatal(f"HTTP {status}: {snippet}")
        try:
            data = resp.json()
            choice = data["choices"][0]
            content = choice["message"].get("content")
            if content is not None and not isinstance(content, str):
                raise TypeError("content is not text")
            usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}
            return ChatResult(
                text=self.redact(content or ""),
                top_logprobs=_first_token_logprobs(choice),
                rating_probs=_rating_probs(choice) if request.rating_probs else None,
                input_tokens=int(usage.get("prompt_tokens") or 0),
                output_tokens=int(usage.get("completion_tokens") or 0),
            )
        except Exception:  # anything but the chat-completions shape is a garbled body
            raise _Retry("malformed response body (not chat-completions JSON)") from None

    def _account(self, result: ChatResult) -> None:
        self._stats["input_tokens"] += result.input_tokens
        self._stats["output_tokens"] += result.output_tokens
        p_in, p_out = self.cfg.price_per_1k_input, self.cfg.price_per_1k_output
        if p_in is not None or p_out is not None:
            result.cost_usd = (
                result.input_tokens * (p_in or 0.0) + result.output_tokens * (p_out or 0.0)
            ) / 1000
            self._stats["cost_usd"] += result.cost_usd
