"""The local HF backend end to end with the tiny random model as both policy and judge: two
MT-Bench-format questions and three AlpacaEval items. A random judge cannot produce a rating,
so every judgment must end as a counted failure with its raw text kept, never a crash; a rerun
is answered from the cache without loading the judge."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from align.config import JudgeConfig
from align.config.judge import BackendConfig
from align.data.judge_examples import write_alpacaeval_example, write_mtbench_example
from align.judging.policy import hf_generate_fn
from align.judging.run import run_judge
from align.llm.backend import ChatRequest
from align.llm.local import LocalBackend
from align.model.loading import resolve_model


@pytest.fixture(scope="module")
def tiny_policy():
    return hf_generate_fn(resolve_model("tiny"), batch_size=4)


def test_tiny_judge_failures_are_counted(tmp_path: Path, tiny_policy) -> None:
    mt = write_mtbench_example(tmp_path / "mt")
    ae = write_alpacaeval_example(tmp_path / "ae")
    cfg = JudgeConfig.model_validate(
        {
            "backend": {"kind": "local", "model": "tiny", "max_new_tokens": 6, "batch_size": 4},
            "mtbench": {
                "questions": str(mt["questions"]),
                "reference_answers": str(mt["reference_answers"]),
                "max_new_tokens": 6,
                "limit": 2,
            },
            "alpacaeval": {
                "reference_outputs": str(ae["reference_outputs"]),
                "difficulty": str(ae["difficulty"]),
                "max_new_tokens": 6,
                "limit": 3,
            },
        }
    )
    m = run_judge(cfg, tiny_policy, tmp_path / "out", "tiny-policy", tmp_path / "cache")
    assert (m["mtbench/n_judgments"], m["mtbench/n_failed"]) == (4, 4)
    assert m["mtbench/overall"] is None and m["mtbench/turn1"] is None
    assert (m["alpacaeval/n_total"], m["alpacaeval/n_failed"]) == (0, 3)
    assert m["alpacaeval/win_rate"] is None and m["alpacaeval/lc_win_rate"] is None
    assert m["judge/failed"] == 7 and m["judge/cache_misses"] == 7

    answers = (tmp_path / "out/mtbench/model_answer/tiny-policy.jsonl").read_text().splitlines()
    assert [len(json.loads(a)["choices"][0]["turns"]) for a in answers] == [2, 2]
    judged = (tmp_path / "out/mtbench/model_judgment/tiny_single.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in judged]
    assert all(r["score"] == -1 and isinstance(r["judgment"], str) for r in records)
    assert {r["judge"][1] for r in records if r["category"] == "math"} == {
        "mtbench-single-ref@1",
        "mtbench-single-ref-multi@1",
    }
    report = (tmp_path / "out/report.md").read_text()
    assert "Smoke-level judge" in report and "7 failed judgments" in report
    assert json.loads((tmp_path / "out/scores.json").read_text()) == m

    # Rerun: the same answers (reused) and judgments (cached); unparseable texts were paid for
    # and are cached too, so nothing is generated again.
    again = run_judge(
        cfg,
        lambda *a: pytest.fail("answers regenerated"),
        tmp_path / "out",
        "tiny-policy",
        tmp_path / "cache",
    )
    assert again["judge/cache_hits"] == 7 and again["judge/cache_misses"] == 0
    assert again["judge/requests"] == 0


def test_local_backend_logprobs_and_context_limit() -> None:
    backend = LocalBackend(BackendConfig(kind="local", model="tiny", batch_size=2))
    short = ChatRequest.chat("sys", "Pick m or M.", "t@1", 3, top_logprobs=5)
    huge = ChatRequest.chat(None, "word " * 3000, "t@1", 3)
    out = backend.complete([short, huge, short])
    assert out[0].ok and out[0].output_tokens >= 1 and out[0].input_tokens > 0
    assert len(out[0].top_logprobs) == 5
    assert math.isclose(max(out[0].top_logprobs.values()), max(out[2].top_logprobs.values()))
    assert sum(math.exp(v) for v in out[0].top_logprobs.values()) <= 1.0 + 1e-6
    assert out[1].error is not None and "context is 1024" in out[1].error
    assert out[0].text == out[2].text  # greedy
