"""Judgment cache on disk: a re-run or a resumed run never pays twice for the same verdict.

Key = sha256 of (judge id, prompt-template name@version, sha256 of the full request payload:
messages, max_tokens, temperature, top_logprobs). A changed judge model, template version or
prompt text is a different key, so stale verdicts are never reused.

Layout: `<folder>/shard-<time>-<pid>-<rand>.jsonl`, one shard per writer, append-only, one
line per successful result, flushed and fsynced as each result arrives. A killed writer can
leave at most one torn last line, which loading skips. Failures are not cached: a re-run retries
them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import threading
import time
from pathlib import Path
from typing import IO

from align.core.io import canonical_json, sha256_text
from align.llm.backend import Backend, ChatRequest, ChatResult, OnResult


class JudgmentCache:
    """Successful judge results by key; loaded once, appended to as results arrive."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self._entries: dict[str, dict] = {}
        self._handle: IO[str] | None = None
        self._lock = threading.Lock()
        for path in sorted(self.folder.glob("shard-*.jsonl")):
            self._load(path)

    def _load(self, path: Path) -> None:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:  # the torn last line of a killed writer
                    continue
                if isinstance(record, dict) and isinstance(record.get("result"), dict):
                    self._entries[record["key"]] = record["result"]

    @staticmethod
    def key(judge_id: str, request: ChatRequest) -> str:
        return sha256_text(
            canonical_json(
                {
                    "judge": judge_id,
                    "template": request.template,
                    "request": sha256_text(request.canonical()),
                }
            )
        )

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> ChatResult | None:
        data = self._entries.get(key)
        return ChatResult.from_json(data) if data is not None else None

    def put(self, key: str, judge_id: str, request: ChatRequest, result: ChatResult) -> None:
        if not result.ok:
            return
        line = json.dumps(
            {
                "key": key,
                "judge": judge_id,
                "template": request.template,
                "result": result.to_json(),
            }
        )
        with self._lock:
            if self._handle is None:
                self.folder.mkdir(parents=True, exist_ok=True)
                name = f"shard-{time.time_ns()}-{os.getpid()}-{secrets.token_hex(4)}.jsonl"
                self._handle = open(self.folder / name, "a", encoding="utf-8")  # noqa: SIM115
            self._handle.write(line + "\n")
            self._handle.flush()
            os.fsync(self._handle.fileno())
            self._entries[key] = result.to_json()

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None


class CachedBackend:
    """A backend behind the cache: hits are answered from disk, identical misses in one call
    are sent once, and each fresh success is stored the moment it arrives."""

    def __init__(self, backend: Backend, cache: JudgmentCache):
        self.backend = backend
        self.cache = cache
        self.judge_id = backend.judge_id
        self.hits = 0
        self.misses = 0

    def complete(
        self, requests: list[ChatRequest], on_result: OnResult | None = None
    ) -> list[ChatResult]:
        keys = [self.cache.key(self.judge_id, r) for r in requests]
        results: list[ChatResult | None] = [None] * len(requests)
        pending: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            hit = self.cache.get(key)
            if hit is not None:
                results[i] = hit
                self.hits += 1
                if on_result is not None:
                    on_result(i, hit)
            else:
                pending.setdefault(key, []).append(i)
        order = list(pending)
        self.misses += len(order)

        stored: set[int] = set()

        def store(j: int, result: ChatResult) -> None:
            stored.add(j)
            first = pending[order[j]][0]
            self.cache.put(order[j], self.judge_id, requests[first], result)
            for i in pending[order[j]]:
                results[i] = dataclasses.replace(result)
                if on_result is not None:
                    on_result(i, results[i])

        fresh = self.backend.complete([requests[pending[k][0]] for k in order], on_result=store)
        for j, result in enumerate(fresh):
            if j not in stored:  # a backend that did not report as it went
                store(j, result)
        return [r if r is not None else ChatResult(error="no result") for r in results]

    def stats(self) -> dict[str, float]:
        return {**self.backend.stats(), "cache_hits": self.hits, "cache_misses": self.misses}
