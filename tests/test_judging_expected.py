"""Judging numbers that mean something: the expected rating from token probabilities (local
backend and OpenAI-style logprobs), LC without the difficulty file under its own name, answer
files FastChat reads on any platform, one name per model id."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from align.config.judge import AlpacaEvalConfig, BackendConfig, MTBenchConfig
from align.data.judge_examples import write_alpacaeval_example, write_mtbench_example
from align.judging.alpacaeval import run_alpacaeval
from align.judging.mtbench import run_mtbench
from align.judging.policy import hf_generate_fn
from align.judging.prompts import MTBENCH
from align.llm.backend import ChatRequest, ChatResult
from align.llm.fake import ScriptedBackend
from align.llm.http import OpenAIBackend, _rating_probs
from align.llm.local import LocalBackend
from align.llm.parsing import (
    FORCED_RATING,
    expected_rating,
    rating_prefix,
    rating_token_probs,
)
from align.model.logprobs import model_sequence_logps
from align.model.tokenize import prompt_text


def test_rating_prefix_stops_at_the_rating_or_asks_for_one() -> None:
    assert rating_prefix("Fine answer. Rating: [[7]] ok") == ("Fine answer. Rating: [[", False)
    assert rating_prefix("no verdict here  ") == ("no verdict here" + FORCED_RATING, True)


def test_expected_rating_is_the_probability_weighted_mean() -> None:
    assert expected_rating({8: 0.6, 7: 0.3}) == pytest.approx((8 * 0.6 + 7 * 0.3) / 0.9)
    assert expected_rating({10: 1.0}) == 10.0
    assert expected_rating({}) is None


def test_openai_logprobs_at_the_rating_token() -> None:
    tokens = ["Good", ". Rating: ", "[[", "8", "]]"]
    top = {"8": math.log(0.6), "7": math.log(0.3), "x": math.log(0.1)}
    alts = [{t: 0.0} for t in tokens]
    alts[3] = top
    probs = rating_token_probs(tokens, alts)
    assert probs == pytest.approx({8: 0.6, 7: 0.3})
    assert rating_token_probs(["Rating: ", "[[8", "]]"], [{}, {}, {}]) is None  # shared token
    assert rating_token_probs(["no rating"], [{}]) is None
    choice = {
        "logprobs": {
            "content": [
                {"token": t, "logprob": 0.0, "top_logprobs": [{"token": k, "logprob": v}]}
                for t in tokens[:3]
                for k, v in [(t, 0.0)]
            ]
            + [
                {
                    "token": "8",
                    "logprob": top["8"],
                    "top_logprobs": [{"token": k, "logprob": v} for k, v in top.items()],
                },
                {"token": "]]", "logprob": 0.0, "top_logprobs": []},
            ]
        }
    }
    assert _rating_probs(choice) == pytest.approx({8: 0.6, 7: 0.3})


def test_openai_request_asks_for_every_token_logprobs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUDGE_KEY", "k")
    cfg = BackendConfig(
        kind="openai", model="m", base_url="http://127.0.0.1:9/v1", api_key_env="JUDGE_KEY"
    )
    request = ChatRequest.chat(None, "rate", "t@1", 64, rating_probs=True)
    body = OpenAIBackend(cfg)._body(request)
    assert body["logprobs"] is True and body["top_logprobs"] == 20
    plain = ChatRequest.chat(None, "rate", "t@1", 64)
    assert "logprobs" not in OpenAIBackend(cfg)._body(plain)
    assert "rating_probs" not in plain.payload()  # older cache keys unchanged


@pytest.fixture(scope="module")
def tiny_policy():
    from align.model.loading import resolve_model

    return hf_generate_fn(resolve_model("tiny"), batch_size=4)


def _mtbench(tmp_path: Path, rating: str, backend, policy, model_id: str = "tiny-policy"):
    paths = write_mtbench_example(tmp_path / "data")
    cfg = MTBenchConfig(
        questions=str(paths["questions"]),
        reference_answers=str(paths["reference_answers"]),
        max_new_tokens=6,
        limit=2,
        rating=rating,
    )
    return run_mtbench(cfg, backend, policy, tmp_path / rating, model_id, "tiny", 6)


def test_local_expected_rating_rates_every_answer(tmp_path: Path, tiny_policy) -> None:
    """The random tiny judge never writes [[N]]: parsed, nothing is rated; expected, every
    answer is, from probabilities that match a direct teacher-forced forward pass."""
    backend = LocalBackend(BackendConfig(kind="local", model="tiny", max_new_tokens=6))
    parsed = _mtbench(tmp_path, "parsed", backend, tiny_policy).metrics
    assert (parsed["mtbench/n_judgments"], parsed["mtbench/n_failed"]) == (4, 4)
    expected = _mtbench(tmp_path, "expected", backend, tiny_policy).metrics
    assert (expected["mtbench/n_judgments"], expected["mtbench/n_failed"]) == (4, 0)
    assert 1 <= expected["mtbench/overall"] <= 10

    path = tmp_path / "expected/model_judgment/tiny_single.jsonl"
    record = json.loads(path.read_text().splitlines()[0])
    probs = {int(k): v for k, v in record["rating_probs"].items()}
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert record["score"] == pytest.approx(expected_rating(probs))
    # the same distribution from scratch: log P("k]]" | prompt + judgment + "Rating: [[")
    tok, model = backend._tokenizer, backend._model
    messages = [*judge_system(record), {"role": "user", "content": record["user_prompt"]}]
    text = prompt_text(tok, messages) + rating_prefix(record["judgment"])[0]
    ids = tok(text, add_special_tokens=False).input_ids
    pairs = [(ids, tok(f"{k}]]", add_special_tokens=False).input_ids) for k in range(1, 11)]
    logps, _ = model_sequence_logps(model, pairs, tok.pad_token_id)
    direct = torch.softmax(logps.float(), -1).tolist()
    assert [probs[k] for k in range(1, 11)] == pytest.approx(direct, abs=1e-4)


def judge_system(record: dict) -> list[dict]:
    """The system message of the judge prompt a record names (`judge`: [judge, name@version])."""
    name = record["judge"][1].split("@")[0]
    system = MTBENCH[name].system
    return [{"role": "system", "content": system}] if system else []


def test_one_name_per_model_id_and_ascii_files(tmp_path: Path) -> None:
    """FastChat names a model by its answer file's stem and opens files in the platform's
    encoding: the stem, the answers' model_id and the judgments' model are one name, and the
    files are ASCII."""

    def policy(convs, temps, n):
        return ["Café ☕ — naïve" for _ in convs]

    backend = ScriptedBackend(lambda r: "Rating: [[6]]")
    _mtbench(tmp_path, "parsed", backend, policy, model_id="org/policy")
    answers = list((tmp_path / "parsed/model_answer").iterdir())
    assert [a.name for a in answers] == ["org_policy.jsonl"]
    judged = tmp_path / "parsed/model_judgment/tiny_single.jsonl"
    for path in (answers[0], judged):
        raw = path.read_bytes()
        assert raw.isascii()
        with open(path, encoding="ascii") as f:  # what FastChat's open() meets on any platform
            rows = [json.loads(line) for line in f]
    assert {json.loads(x)["model_id"] for x in answers[0].read_text().splitlines()} == {
        "org_policy"
    }
    assert {r["model"] for r in rows} == {"org_policy"}
    text = json.loads(answers[0].read_text().splitlines()[0])["choices"][0]["turns"][0]
    assert text == "Café ☕ — naïve"


def test_lc_without_difficulty_has_its_own_name_and_a_warning(tmp_path: Path) -> None:
    paths = write_alpacaeval_example(tmp_path / "data")

    def policy(convs, temps, n):
        return ["GOOD " * (1 + i % 3) for i, _ in enumerate(convs)]

    def judge(r: ChatRequest):
        return ("m", {"m": math.log(0.7), "M": math.log(0.3)})

    for difficulty in (None, str(paths["difficulty"])):
        cfg = AlpacaEvalConfig(reference_outputs=str(paths["reference_outputs"]))
        cfg = cfg.model_copy(update={"difficulty": difficulty})
        out = tmp_path / ("with" if difficulty else "without")
        outcome = run_alpacaeval(cfg, ScriptedBackend(judge), policy, out, "p", "j", True)
        m = outcome.metrics
        if difficulty is None:
            assert "alpacaeval/lc_win_rate" not in m
            assert m["alpacaeval/lc_win_rate_no_difficulty"] is not None
            assert "alpacaeval/lc_standard_error_no_difficulty" in m
            assert any("lc_win_rate_no_difficulty" in w for w in outcome.warnings)
        else:
            assert "alpacaeval/lc_win_rate_no_difficulty" not in m
            assert m["alpacaeval/lc_win_rate"] is not None
            assert not any("difficulty" in w for w in outcome.warnings)


def test_cached_results_keep_their_rating_probabilities() -> None:
    result = ChatResult(text="x", rating_probs={3: 0.25, 4: 0.75})
    again = ChatResult.from_json(json.loads(json.dumps(result.to_json())))
    assert again.rating_probs == {3: 0.25, 4: 0.75}
