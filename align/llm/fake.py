"""A backend whose replies come from a Python function: for tests and pipeline dry runs.

`reply(request) -> str | (str, top_logprobs) | None` (None: a failed call with a reason).
"""

from __future__ import annotations

from collections.abc import Callable

from align.llm.backend import ChatRequest, ChatResult, OnResult

Reply = str | tuple[str, dict[str, float]] | None


class ScriptedBackend:
    def __init__(self, reply: Callable[[ChatRequest], Reply], judge_id: str = "scripted"):
        self.reply = reply
        self.judge_id = judge_id
        self.sent: list[ChatRequest] = []

    def complete(
        self, requests: list[ChatRequest], on_result: OnResult | None = None
    ) -> list[ChatResult]:
        out = []
        for i, request in enumerate(requests):
            self.sent.append(request)
            answer = self.reply(request)
            if answer is None:
                result = ChatResult(error="scripted failure")
            elif isinstance(answer, tuple):
                result = ChatResult(text=answer[0], top_logprobs=answer[1])
            else:
                result = ChatResult(text=answer)
            if on_result is not None:
                on_result(i, result)
            out.append(result)
        return out

    def stats(self) -> dict[str, float]:
        return {"requests": len(self.sent)}
