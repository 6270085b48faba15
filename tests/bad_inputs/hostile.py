"""A hostile OpenAI-compatible judge server on the loopback, for the bad-input corpus: it echoes
the API key back in the encodings a real server might use, or trickles its answer a byte at a
time. Runs in a daemon thread of the test process while the CLI under test talks to it.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KEY_ENV = "ALIGN_CORPUS_JUDGE_KEY"
KEY = "sk-corpus/Hostile+Key_7c1f9e2b4a6d8f00"  # '/' and '+' exercise every encoding


def echoed(mode: str, key: str) -> tuple[int, bytes]:
    """(status, body) of an answer that reflects `key` in the way `mode` names."""
    if mode == "json-escaped":  # JSON with '/' escaped as '\/', as PHP and some proxies write
        text = json.dumps({"error": {"message": f"Incorrect API key provided: {key}"}})
        return 401, text.replace("/", "\\/").encode()
    if mode == "unicode-escaped":
        escaped = "".join(f"\\u{ord(c):04X}" for c in key)
        return 401, ('{"error": {"message": "bad key ' + escaped + '"}}').encode()
    if mode == "url-encoded":
        return 403, f"forbidden: /v1/chat?api_key={urllib.parse.quote(key, safe='')}".encode()
    if mode == "base64":  # an Authorization: Basic header echoed back
        basic = base64.b64encode(f"user:{key}".encode()).decode()
        return 401, json.dumps({"error": f"rejected credentials Basic {basic}"}).encode()
    if mode == "partial":
        return 401, json.dumps({"error": f"key {key[:16]}... has been revoked"}).encode()
    if mode == "in-answer":  # a 200 whose answer repeats the key: it would land in the cache
        reply = {"choices": [{"message": {"content": f"I cannot rate this. Your key: {key}"}}]}
        return 200, json.dumps(reply).encode()
    raise ValueError(mode)


class HostileServer:
    """Serves `mode` on http://127.0.0.1:<port>/v1 until `close`."""

    def __init__(self, mode: str, trickle_s: float = 0.7):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                key = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
                if mode == "trickle":
                    outer._trickle(self, trickle_s)
                    return
                status, body = echoed(mode, key)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def _trickle(h: BaseHTTPRequestHandler, every_s: float) -> None:
        """A valid answer, one byte every `every_s` seconds: each read is quick, the whole
        answer takes minutes."""
        body = json.dumps({"choices": [{"message": {"content": "Rating: [[5]]" + " " * 400}}]})
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        try:
            for byte in body.encode():
                h.wfile.write(bytes([byte]))
                h.wfile.flush()
                time.sleep(every_s)
        except OSError:
            pass  # the client gave up, as it should

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def leaked_forms(key: str = KEY) -> list[str]:
    """Spellings of `key` (and of a part of it) that must appear in no output and no file."""
    return [
        key,
        key.replace("/", "\\/"),
        urllib.parse.quote(key, safe=""),
        base64.b64encode(f"user:{key}".encode()).decode()[8:-4],
        key[:16],
        key[-16:],
        "".join(f"\\u{ord(c):04X}" for c in key[:8]),
    ]
