"""The key scrubber (align/llm/redact.py) and the judge client's total deadline per attempt."""

from __future__ import annotations

import base64
import html
import json
import time
import urllib.parse

import pytest

from align.llm.backend import ChatRequest
from align.llm.http import OpenAIBackend
from align.llm.redact import MASK, Redactor
from tests.bad_inputs.hostile import KEY, KEY_ENV, HostileServer, leaked_forms
from tests.test_judging_http import backend_cfg

ECHOES = {
    "plain": f"Incorrect API key provided: {KEY}.",
    "json": json.dumps({"error": f"bad key {KEY}"}).replace("/", "\\/"),
    "json-twice": json.dumps(json.dumps({"key": KEY})),
    "unicode": "".join(f"\\u{ord(c):04X}" for c in KEY),
    "unicode-lower-mixed": "".join(f"\\u{ord(c):04x}" if i % 2 else c for i, c in enumerate(KEY)),
    "url": "api_key=" + urllib.parse.quote(KEY, safe=""),
    "url-plus": "api_key=" + urllib.parse.quote_plus(KEY),
    "html": html.escape(KEY) + " " + "".join(f"&#x{ord(c):X};" for c in KEY),
    "base64": base64.b64encode(KEY.encode()).decode(),
    "base64-basic": "Basic " + base64.b64encode(f"user:{KEY}".encode()).decode(),
    "base64-url": base64.urlsafe_b64encode(f"ab{KEY}".encode()).decode(),
    "prefix": f"key {KEY[:12]}... revoked",
    "suffix": f"key ...{KEY[-9:]} revoked",
}


@pytest.mark.parametrize("name", ECHOES)
def test_every_echoed_form_of_the_key_is_masked(name: str) -> None:
    out = Redactor(KEY)(ECHOES[name])
    assert MASK in out
    for form in [*leaked_forms(KEY), *(KEY[i : i + 8] for i in range(len(KEY) - 7))]:
        assert form not in out, (form, out)
    if name == "base64":
        assert base64.b64encode(KEY.encode()).decode()[:-4] not in out


def test_text_without_the_key_is_unchanged_and_large_text_is_fast() -> None:
    text = "Rating: [[7]] sk-corp is a prefix, not a key; %2F \\u0041 &#47; " * 20_000
    started = time.perf_counter()
    assert Redactor(KEY)(text) == text
    assert time.perf_counter() - started < 5.0  # ~1.3 MB


def test_a_trickling_server_is_cut_at_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """One byte every 0.2 s: every read is quick, the answer would take 80 s; timeout_s: 1."""
    monkeypatch.setenv(KEY_ENV, KEY)
    server = HostileServer("trickle", trickle_s=0.2)
    try:
        cfg = backend_cfg(server.url, api_key_env=KEY_ENV, timeout_s=1.0, max_retries=1)
        started = time.monotonic()
        [result] = OpenAIBackend(cfg).complete([ChatRequest.chat(None, "hi", "t@1", 8)])
        seconds = time.monotonic() - started
    finally:
        server.close()
    assert not result.ok and "gave up after 2 attempts; last: timeout after 1s" in result.error
    assert seconds < 4, seconds
