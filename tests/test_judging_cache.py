"""Judgment cache: keyed by judge, template version and full request; a killed run resumes
without re-sending what was paid for; torn lines and failures are never reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from align.config.judge import BackendConfig, JudgeConfig, MTBenchConfig
from align.llm.backend import ChatRequest, ChatResult
from align.llm.cache import CachedBackend, JudgmentCache
from align.llm.fake import ScriptedBackend


def req(user: str, template: str = "t@1", max_tokens: int = 16) -> ChatRequest:
    return ChatRequest.chat("sys", user, template, max_tokens)


def test_key_changes_with_judge_template_and_request() -> None:
    base = JudgmentCache.key("judge-a", req("hello"))
    assert base == JudgmentCache.key("judge-a", req("hello"))
    assert base != JudgmentCache.key("judge-b", req("hello"))
    assert base != JudgmentCache.key("judge-a", req("hello", template="t@2"))
    assert base != JudgmentCache.key("judge-a", req("hello!"))
    assert base != JudgmentCache.key("judge-a", req("hello", max_tokens=17))


def test_hits_are_not_resent_and_duplicates_go_once(tmp_path: Path) -> None:
    fake = ScriptedBackend(lambda r: f"echo {r.messages[-1][1]}")
    backend = CachedBackend(fake, JudgmentCache(tmp_path))
    out = backend.complete([req("a"), req("b"), req("a")])
    assert [r.text for r in out] == ["echo a", "echo b", "echo a"]
    assert len(fake.sent) == 2
    backend.cache.close()

    again = CachedBackend(fake, JudgmentCache(tmp_path))  # a new process reading the shards
    out = again.complete([req("b"), req("c"), req("a")])
    assert [r.text for r in out] == ["echo b", "echo c", "echo a"]
    assert [r.cached for r in out] == [True, False, True]
    assert len(fake.sent) == 3 and fake.sent[-1].messages[-1][1] == "c"
    assert again.stats()["cache_hits"] == 2 and again.stats()["cache_misses"] == 1


def test_changed_judge_never_reuses_verdicts(tmp_path: Path) -> None:
    old = ScriptedBackend(lambda r: "old verdict", judge_id="judge-v1")
    CachedBackend(old, JudgmentCache(tmp_path)).complete([req("a")])
    new = ScriptedBackend(lambda r: "new verdict", judge_id="judge-v2")
    out = CachedBackend(new, JudgmentCache(tmp_path)).complete([req("a")])
    assert out[0].text == "new verdict" and len(new.sent) == 1


def test_failures_are_not_cached(tmp_path: Path) -> None:
    flaky = iter([None, "fine"])
    fake = ScriptedBackend(lambda r: next(flaky))
    assert CachedBackend(fake, JudgmentCache(tmp_path)).complete([req("a")])[0].error
    out = CachedBackend(fake, JudgmentCache(tmp_path)).complete([req("a")])
    assert out[0].text == "fine" and len(fake.sent) == 2


class Killed(Exception):
    pass


def test_killed_run_resumes_without_paying_twice(tmp_path: Path) -> None:
    requests = [req(f"q{i}") for i in range(6)]
    sent: list[str] = []

    def dies_after_three(r: ChatRequest) -> str:
        if len(sent) == 3:
            raise Killed
        sent.append(r.messages[-1][1])
        return "ok " + r.messages[-1][1]

    with pytest.raises(Killed):
        CachedBackend(ScriptedBackend(dies_after_three), JudgmentCache(tmp_path)).complete(requests)
    # A torn line from the killed writer must be skipped, not crash the loader.
    shard = next(tmp_path.glob("shard-*.jsonl"))
    shard.write_text(shard.read_text() + '{"key": "abc", "res')
    assert len(JudgmentCache(tmp_path)) == 3

    resumed: list[str] = []
    fake = ScriptedBackend(lambda r: resumed.append(r.messages[-1][1]) or "ok")
    out = CachedBackend(fake, JudgmentCache(tmp_path)).complete(requests)
    assert resumed == ["q3", "q4", "q5"]
    assert [r.text for r in out[:3]] == ["ok q0", "ok q1", "ok q2"]


def test_shard_lines_hold_no_prompt_text(tmp_path: Path) -> None:
    CachedBackend(ScriptedBackend(lambda r: "[[5]]"), JudgmentCache(tmp_path)).complete(
        [req("a private prompt")]
    )
    line = json.loads(next(tmp_path.glob("shard-*.jsonl")).read_text())
    assert set(line) == {"key", "judge", "template", "result"}
    assert "private" not in json.dumps(line)
    assert ChatResult.from_json(line["result"]).text == "[[5]]"


# Config validation lives here too: it is what decides the judge id and hence the cache key.


def test_backend_config_rules() -> None:
    with pytest.raises(ValidationError) as info:
        BackendConfig(kind="openai", model="m", base_url="http://x/v1", api_key_env="sk-abc123")
    messages = " ".join(e["msg"] for e in info.value.errors())
    assert "NAME of an environment variable" in messages and "sk-abc123" not in messages
    with pytest.raises(ValidationError, match="not used by kind 'local'"):
        BackendConfig(kind="local", model="tiny", base_url="http://x/v1")
    with pytest.raises(ValidationError, match="needs base_url"):
        BackendConfig(kind="openai", model="gpt-4")
    with pytest.raises(ValidationError, match="Extra inputs"):
        BackendConfig(kind="local", model="tiny", temprature=0.0)
    with pytest.raises(ValidationError, match="'openai' or 'local'"):
        BackendConfig(kind="vllm", model="tiny")


def test_judge_fingerprint_matches_the_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    from align.llm.backend import judge_fingerprint
    from align.llm.http import OpenAIBackend
    from align.llm.local import LocalBackend

    monkeypatch.setenv("SOME_KEY", "k")
    http = BackendConfig(
        kind="openai", model="gpt-x", base_url="http://h:1/v1/", api_key_env="SOME_KEY"
    )
    assert judge_fingerprint(http) == OpenAIBackend(http).judge_id == "openai:http://h:1/v1#gpt-x"
    local = BackendConfig(kind="local", model="tiny", dtype="bfloat16")
    assert judge_fingerprint(local) == LocalBackend(local).judge_id == "local:tiny:bfloat16"


def test_judge_config_rules() -> None:
    with pytest.raises(ValidationError, match="needs baseline_answers"):
        MTBenchConfig(questions="q.jsonl", mode="pairwise")
    with pytest.raises(ValidationError, match="at least one of"):
        JudgeConfig(backend=BackendConfig(kind="local", model="tiny"))
    cfg = JudgeConfig.model_validate(
        {"backend": {"kind": "local", "model": "tiny"}, "mtbench": {"questions": "q.jsonl"}}
    )
    assert cfg.mtbench.mode == "single" and cfg.mtbench.max_new_tokens == 1024
    assert cfg.backend.max_new_tokens == 2048 and cfg.cache_dir is None
