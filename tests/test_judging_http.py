"""The OpenAI-compatible backend against a loopback chat-completions server that injects 429s
(with Retry-After), 500s, hangs past the timeout, connection resets, truncated bodies and
garbage on ~30% of attempts: every judgment completes or is reported failed by count, cached
calls are not re-sent, and the API key never reaches a file, a log line or an error."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from align.config.judge import BackendConfig, JudgeConfig
from align.core.errors import AlignError
from align.data.judge_examples import write_alpacaeval_example, write_mtbench_example
from align.judging.run import run_judge
from align.llm.backend import ChatRequest
from align.llm.cache import CachedBackend, JudgmentCache
from align.llm.http import OpenAIBackend, retry_after_s
from align.llm.rating import rate

KEY = "sk-SENTINEL-7f3a9c-do-not-leak"
ENV = "ALIGN_TEST_JUDGE_KEY"
FAULTS = ("429", "500", "hang", "reset", "truncated", "garbage")


def default_reply(user: str, body: dict) -> tuple[str, dict | None]:
    """The server's 'judge': the rating asked for by a `score=K` marker, else [[7]]."""
    marker = user.split("score=")[1][:1] if "score=" in user else "7"
    return f"Fair answer.\nRating: [[{marker}]]", None


class FaultyServer:
    """Whether an attempt fails is a deterministic function of (request text, attempt number),
    so which judgments succeed does not depend on the order concurrent requests arrive in; the
    kinds of fault take turns so that every kind occurs."""

    def __init__(self, fault_rate: float, reply: Callable = default_reply, hang_s: float = 0.6):
        self.fault_rate, self.reply, self.hang_s = fault_rate, reply, hang_s
        self.delay_s = 0.0  # every reply waits this long (to observe concurrency)
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.attempts: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self.bad_auth = 0
        self.n_faults = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                with owner.lock:
                    owner.in_flight += 1
                    owner.max_in_flight = max(owner.max_in_flight, owner.in_flight)
                try:
                    time.sleep(owner.delay_s)
                    owner.handle(self)
                finally:
                    with owner.lock:
                        owner.in_flight -= 1

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # broken pipes after injected faults are expected

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def _fault(self, user: str, attempt: int) -> str | None:
        h = int(hashlib.sha256(f"{user}#{attempt}".encode()).hexdigest()[:8], 16)
        if "POISON-500" in user:
            return "500"
        if "RETRY-AFTER-1" in user and attempt == 1:
            return "429-slow"
        if (h % 1000) / 1000 >= self.fault_rate:
            return None
        self.n_faults += 1
        return FAULTS[self.n_faults % len(FAULTS)]

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        body = json.loads(h.rfile.read(int(h.headers["Content-Length"])))
        user = body["messages"][-1]["content"]
        auth = h.headers.get("Authorization", "")
        with self.lock:
            self.attempts[user] += 1
            fault = self._fault(user, self.attempts[user])
            self.injected[fault or "none"] += 1
            self.bad_auth += auth != f"Bearer {KEY}"
        if "POISON-401" in user:  # a server that echoes the credential in its error
            return self._send(h, 401, {"error": {"message": f"Incorrect API key: {auth}"}})
        if fault in ("429", "429-slow"):
            wait = "1" if fault == "429-slow" else "0"
            return self._send(h, 429, {"error": {"message": "slow down"}}, {"Retry-After": wait})
        if fault == "500":
            return self._send(h, 500, {"error": {"message": "internal"}})
        if fault == "hang":
            time.sleep(self.hang_s)
        if fault == "reset":
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return self._drop(h)
        if fault == "truncated":
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", "400")
            h.end_headers()
            h.wfile.write(b'{"choices": [{"message": {"content": "Rat')
            h.wfile.flush()
            return self._drop(h)
        if fault == "garbage":
            return self._send_raw(h, 200, b"<html>upstream hiccup</html>")
        text, logprobs = self.reply(user, body)
        choice = {"index": 0, "message": {"role": "assistant", "content": text}}
        if body.get("logprobs") and logprobs:
            top = [{"token": t, "logprob": lp} for t, lp in logprobs.items()]
            choice["logprobs"] = {"content": [{**top[0], "top_logprobs": top}]}
        usage = {"prompt_tokens": len(user) // 4, "completion_tokens": 5}
        self._send(h, 200, {"id": "x", "object": "chat.completion", "choices": [choice],
                            "usage": usage})  # fmt: skip

    @staticmethod
    def _drop(h: BaseHTTPRequestHandler) -> None:
        h.close_connection = True
        h.rfile.close()
        h.wfile.close()
        h.connection.close()

    def _send(self, h: BaseHTTPRequestHandler, status: int, obj: dict, headers=None) -> None:
        self._send_raw(h, status, json.dumps(obj).encode(), headers)

    @staticmethod
    def _send_raw(h: BaseHTTPRequestHandler, status: int, data: bytes, headers=None) -> None:
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except OSError:
            pass  # the client gave up (timeout) before the reply

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[FaultyServer]:
    srv = FaultyServer(fault_rate=0.3)
    yield srv
    srv.close()


def backend_cfg(url: str, **extra: object) -> BackendConfig:
    return BackendConfig.model_validate(
        {
            "kind": "openai",
            "model": "judge-model",
            "base_url": url,
            "api_key_env": ENV,
            "concurrency": 8,
            "timeout_s": 0.25,
            "max_retries": 8,
            "backoff_base_s": 0.005,
            "backoff_max_s": 0.02,
            "price_per_1k_input": 0.01,
            "price_per_1k_output": 0.03,
            "max_new_tokens": 64,
            **extra,
        }
    )


def assert_no_key(root: Path, *texts: str) -> None:
    for text in texts:
        assert KEY not in text
    for path in root.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_faults_retries_accounting_and_cache(
    server: FaultyServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx and httpcore debug lines included
    monkeypatch.setenv(ENV, KEY)
    prompts = [f"Question number {i}?" for i in range(40)] + ["poison a", "poison b"]
    answers = [f"answer {i} score={i % 9 + 1}" for i in range(40)] + ["POISON-500", "POISON-401"]
    cache = tmp_path / "cache"

    backend = CachedBackend(OpenAIBackend(backend_cfg(server.url)), JudgmentCache(cache))
    ratings = rate(backend, prompts, answers, "overall", 64)
    backend.cache.close()

    # Every judgment ended as a verdict or a counted failure.
    assert [r.score for r in ratings[:40]] == [float(i % 9 + 1) for i in range(40)]
    assert [r.score for r in ratings[40:]] == [None, None]
    stats = backend.stats()
    assert stats["failed"] == 2
    assert "gave up after 9 attempts; last: HTTP 500" in ratings[40].error
    assert ratings[41].error.startswith("HTTP 401") and "***" in ratings[41].error
    # Faults of every kind were injected on ~30% of attempts and retried.
    assert all(server.injected[f] > 0 for f in FAULTS), server.injected
    faults = sum(server.injected[f] for f in FAULTS) - 9  # the poison 500s
    assert 0.15 < faults / (sum(server.injected.values()) - 10) < 0.45
    assert stats["retries"] >= faults
    assert server.bad_auth == 0
    # Token and cost accounting over the successful responses.
    ok_users = [u for u in server.attempts if "POISON" not in u]
    assert stats["input_tokens"] == sum(len(u) // 4 for u in ok_users)
    assert stats["output_tokens"] == 5 * 40
    cost = (stats["input_tokens"] * 0.01 + stats["output_tokens"] * 0.03) / 1000
    assert stats["cost_usd"] == pytest.approx(cost)

    # A second run: successes come from the cache, only the failures are retried.
    before = Counter(server.attempts)
    again = CachedBackend(OpenAIBackend(backend_cfg(server.url)), JudgmentCache(cache))
    ratings2 = rate(again, prompts, answers, "overall", 64)
    again.cache.close()
    assert [r.score for r in ratings2] == [r.score for r in ratings]
    assert again.stats()["cache_hits"] == 40 and again.stats()["cache_misses"] == 2
    grown = {u for u in server.attempts if server.attempts[u] != before[u]}
    assert len(grown) == 2 and all("POISON" in u for u in grown)

    out, err = capfd.readouterr()
    assert_no_key(tmp_path, caplog.text, out, err, *(r.error or "" for r in ratings))


def test_retry_after_is_honoured(
    server: FaultyServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, KEY)
    server.fault_rate = 0.0
    backend = OpenAIBackend(backend_cfg(server.url, timeout_s=5.0))
    started = time.monotonic()
    [result] = backend.complete([ChatRequest.chat(None, "RETRY-AFTER-1 please", "t@1", 8)])
    assert result.ok and result.text.endswith("[[7]]")
    assert time.monotonic() - started >= 1.0  # the jittered backoff alone would be < 0.02 s
    assert backend.stats()["retries"] == 1


def test_concurrency_bound_and_pacing(
    server: FaultyServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV, KEY)
    server.fault_rate, server.delay_s = 0.0, 0.05
    requests = [ChatRequest.chat(None, f"q{i}", "t@1", 8) for i in range(9)]
    backend = OpenAIBackend(backend_cfg(server.url, concurrency=3))
    assert all(r.ok for r in backend.complete(requests))
    assert server.max_in_flight == 3
    # 600 requests per minute: starts 0.1 s apart, so 5 requests span at least 0.4 s.
    paced = OpenAIBackend(backend_cfg(server.url, requests_per_minute=600))
    started = time.monotonic()
    assert all(r.ok for r in paced.complete(requests[:5]))
    assert time.monotonic() - started >= 0.4


def test_retry_after_parsing() -> None:
    assert retry_after_s(httpx.Headers({"Retry-After": "2"})) == 2.0
    assert retry_after_s(httpx.Headers({"retry-after-ms": "1500", "Retry-After": "9"})) == 1.5
    assert retry_after_s(httpx.Headers({"Retry-After": "86400"})) == 300.0
    assert retry_after_s(httpx.Headers({"Retry-After": "soon"})) is None
    assert retry_after_s(httpx.Headers({})) is None
    date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < retry_after_s(httpx.Headers({"Retry-After": date})) <= 30


def test_missing_key_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    with pytest.raises(AlignError, match=ENV):
        OpenAIBackend(backend_cfg("http://127.0.0.1:9/v1"))
    monkeypatch.setenv(ENV, "  ")
    with pytest.raises(AlignError, match="not set or empty"):
        OpenAIBackend(backend_cfg("http://127.0.0.1:9/v1"))


def test_unreachable_server_is_a_counted_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, KEY)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = OpenAIBackend(backend_cfg(f"http://127.0.0.1:{port}/v1", max_retries=2))
    [result] = backend.complete([ChatRequest.chat(None, "hello", "t@1", 8)])
    assert not result.ok and "gave up after 3 attempts; last: connection error" in result.error
    assert backend.stats()["failed"] == 1 and KEY not in result.error


def alpaca_and_rating_reply(user: str, body: dict) -> tuple[str, dict | None]:
    """Rates every answer 7; in AlpacaEval prompts prefers the GOOD output with p = 0.8."""
    if "output M" not in user:
        return default_reply(user, body)
    second_good = "GOOD" in user.split("<<< output M >>>")[1]
    p_big = 0.8 if second_good else 0.2
    return ("M" if second_good else "m"), {"M": math.log(p_big), "m": math.log(1 - p_big)}


def test_run_judge_over_http(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, KEY)
    srv = FaultyServer(fault_rate=0.3, reply=alpaca_and_rating_reply)
    try:
        mt = write_mtbench_example(tmp_path / "mt")
        ae = write_alpacaeval_example(tmp_path / "ae")
        cfg = JudgeConfig(
            backend=backend_cfg(srv.url),
            mtbench={"questions": str(mt["questions"]), "limit": 2, "max_new_tokens": 8},
            alpacaeval={"reference_outputs": str(ae["reference_outputs"]), "max_new_tokens": 8},
        )

        def policy(convs: list[list[dict]], temps: list[float], n: int) -> list[str]:
            return ["GOOD " + c[-1]["content"][:10] for c in convs]

        m = run_judge(cfg, policy, tmp_path / "out", "my/policy", tmp_path / "cache")
    finally:
        srv.close()
    assert m["mtbench/overall"] == 7.0 and m["mtbench/n_failed"] == 0
    assert m["alpacaeval/win_rate"] == pytest.approx(80.0)
    assert m["alpacaeval/n_failed"] == 0 and m["alpacaeval/lc_with_difficulty"] == 0
    assert m["judge/cache_misses"] == 4 + 6 and m["judge/failed"] == 0
    assert m["judge/cost_usd"] > 0
    assert (tmp_path / "out/mtbench/model_answer/my_policy.jsonl").is_file()
    assert (tmp_path / "out/mtbench/model_judgment/judge-model_single.jsonl").is_file()
    report = (tmp_path / "out/report.md").read_text()
    assert "## Judge" in report and "| 7.00 |" in report and "80.00" in report
    assert_no_key(tmp_path)
