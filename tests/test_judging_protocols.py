"""Protocol arithmetic with a scripted judge: MT-Bench means per turn/category with failures
excluded but counted, the both-orders rule, AlpacaEval's order swap restored, ratings and
order-averaged preferences."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from align.config.judge import AlpacaEvalConfig, JudgeRewardConfig, MTBenchConfig
from align.core.errors import AlignError
from align.data.judge_examples import write_alpacaeval_example, write_mtbench_example
from align.judging.alpacaeval import is_switched, run_alpacaeval, win_rate_metrics
from align.judging.mtbench import run_mtbench
from align.llm.backend import ChatRequest
from align.llm.fake import ScriptedBackend
from align.llm.rating import neutral_fill, prefer, rate
from align.rewards.judge import RewardJudge


def policy(convs: list[list[dict]], temps: list[float], max_new: int) -> list[str]:
    """Marks its replies GOOD so a scripted judge can recognise them."""
    return [f"GOOD reply to: {c[-1]['content'][:20]}" for c in convs]


def user_text(request: ChatRequest) -> str:
    return request.messages[-1][1]


def test_mtbench_single_scores(tmp_path: Path) -> None:
    paths = write_mtbench_example(tmp_path / "data")
    cfg = MTBenchConfig(
        questions=str(paths["questions"]), reference_answers=str(paths["reference_answers"])
    )

    def judge(r: ChatRequest) -> str | None:
        text = user_text(r)
        if "garden party" in text and r.template.startswith("mtbench-single-multi"):
            return "I cannot decide."  # writing turn 2: unparseable
        if "ice float" in text and r.template.startswith("mtbench-single-multi"):
            return None  # stem turn 2: the call failed
        return "Rating: [[9]]" if r.template.startswith("mtbench-single-ref") else "Rating: [[6]]"

    backend = ScriptedBackend(judge)
    outcome = run_mtbench(cfg, backend, policy, tmp_path / "out", "pol", "judge-x", 512)
    m = outcome.metrics
    # turn 1: writing 6, math 9 (ref), stem 6, coding 9 (ref); turn 2: math 9, coding 9.
    assert m["mtbench/turn1"] == pytest.approx(7.5)
    assert m["mtbench/turn2"] == pytest.approx(9.0)
    assert m["mtbench/overall"] == pytest.approx(48 / 6)
    assert m["mtbench/category/writing"] == 6.0 and m["mtbench/category/math"] == 9.0
    assert (m["mtbench/n_judgments"], m["mtbench/n_failed"]) == (8, 2)
    assert m["mtbench/n_reference_missing"] == 0
    assert sorted(outcome.errors) == ["no [[rating]] in the judgment", "scripted failure"]
    templates = sorted({r.template for r in backend.sent})
    assert templates == [
        "mtbench-single-multi@1",
        "mtbench-single-ref-multi@1",
        "mtbench-single-ref@1",
        "mtbench-single@1",
    ]
    assert all(r.max_tokens == 512 and r.temperature == 0 for r in backend.sent)
    ref_turn2 = next(r for r in backend.sent if r.template == "mtbench-single-ref-multi@1")
    assert "15 pens" in user_text(ref_turn2) and "GOOD reply to: How many pens can y" in (
        user_text(ref_turn2)
    )
    lines = (tmp_path / "out/model_judgment/judge-x_single.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    bad = next(r for r in records if r["judgment"] == "I cannot decide.")
    assert (
        bad["score"] == -1
        and bad["turn"] == 2
        and bad["judge"]
        == [
            "judge-x",
            "mtbench-single-multi@1",
        ]
    )


def test_mtbench_reference_missing_falls_back_and_is_counted(tmp_path: Path) -> None:
    paths = write_mtbench_example(tmp_path / "data")
    cfg = MTBenchConfig(questions=str(paths["questions"]), limit=2)  # no reference file
    backend = ScriptedBackend(lambda r: "[[5]]")
    m = run_mtbench(cfg, backend, policy, tmp_path / "out", "pol", "j", 64).metrics
    # math question 111 carries an inline reference; nothing is missing.
    assert m["mtbench/n_reference_missing"] == 0
    cfg = MTBenchConfig(questions=str(paths["questions"]))
    m = run_mtbench(cfg, backend, policy, tmp_path / "out2", "pol", "j", 64).metrics
    assert m["mtbench/n_reference_missing"] == 2  # coding 121, both turns


def pairwise(tmp_path: Path, judge) -> dict:
    paths = write_mtbench_example(tmp_path / "data")
    cfg = MTBenchConfig(
        questions=str(paths["questions"]),
        mode="pairwise",
        baseline_answers=str(paths["baseline_answers"]),
        limit=2,
    )
    backend = ScriptedBackend(judge)
    outcome = run_mtbench(cfg, backend, policy, tmp_path / "out", "pol", "j", 64)
    assert len(backend.sent) == 8  # 2 questions x 2 turns x 2 orders
    return outcome.metrics


def _answer_a(request: ChatRequest) -> str:
    """The block holding assistant A's reply (single- or multi-turn prompt)."""
    text = user_text(request)
    for title in ("<<< response of assistant A >>>", "<<< conversation with assistant A >>>"):
        if title in text:
            return text.split(title)[1].split("<<< end")[0]
    raise AssertionError("no assistant A block")


def test_pairwise_consistent_judge_wins(tmp_path: Path) -> None:
    m = pairwise(tmp_path, lambda r: "[[A]]" if "GOOD" in _answer_a(r) else "[[B]]")
    assert (m["mtbench/n_wins"], m["mtbench/n_losses"], m["mtbench/n_ties"]) == (4, 0, 0)
    assert m["mtbench/win_rate_adjusted"] == 1.0


def test_pairwise_position_biased_judge_is_all_ties(tmp_path: Path) -> None:
    m = pairwise(tmp_path, lambda r: "Clearly [[A]]")
    assert (m["mtbench/n_wins"], m["mtbench/n_ties"]) == (0, 4)
    assert m["mtbench/win_rate"] == 0.0 and m["mtbench/win_rate_adjusted"] == 0.5


def test_pairwise_failed_order_excludes_the_pair(tmp_path: Path) -> None:
    calls = iter(range(100))

    def judge(r: ChatRequest) -> str:
        n = next(calls)
        if n == 0:
            return "no verdict here"
        return "[[A]]" if "GOOD" in _answer_a(r) else "[[B]]"

    m = pairwise(tmp_path, judge)
    assert (m["mtbench/n_wins"], m["mtbench/n_failed"]) == (3, 1)
    assert m["mtbench/win_rate_adjusted"] == 1.0


def test_pairwise_needs_every_baseline_answer(tmp_path: Path) -> None:
    paths = write_mtbench_example(tmp_path / "data")
    text = paths["baseline_answers"].read_text().splitlines()
    paths["baseline_answers"].write_text(text[0] + "\n")
    cfg = MTBenchConfig(
        questions=str(paths["questions"]),
        mode="pairwise",
        baseline_answers=str(paths["baseline_answers"]),
    )
    with pytest.raises(AlignError, match="no baseline answer"):
        run_mtbench(cfg, ScriptedBackend(lambda r: "[[A]]"), policy, tmp_path / "o", "p", "j", 8)


def _alpaca(tmp_path: Path, judge) -> tuple[dict, list[dict]]:
    paths = write_alpacaeval_example(tmp_path / "data")
    cfg = AlpacaEvalConfig(
        reference_outputs=str(paths["reference_outputs"]), difficulty=str(paths["difficulty"])
    )
    backend = ScriptedBackend(judge)
    outcome = run_alpacaeval(cfg, backend, policy, tmp_path / "out", "pol", "j", True)
    assert all(r.max_tokens == 1 and r.top_logprobs == 5 for r in backend.sent)
    return outcome.metrics, json.loads((tmp_path / "out/annotations.json").read_text())


def test_alpacaeval_swap_is_restored(tmp_path: Path) -> None:
    def judge(r: ChatRequest):
        second_is_good = "GOOD" in user_text(r).split("output M")[1]
        p_big = 0.8 if second_is_good else 0.2  # prefers the policy with probability 0.8
        return ("M" if second_is_good else "m", {"M": math.log(p_big), "m": math.log(1 - p_big)})

    m, rows = _alpaca(tmp_path, judge)
    assert 0 < sum(r["is_switched"] for r in rows) < len(rows)  # both orders occur
    assert all(r["preference"] == pytest.approx(1.8) for r in rows)
    assert m["alpacaeval/win_rate"] == pytest.approx(80.0)
    assert m["alpacaeval/standard_error"] == pytest.approx(0.0, abs=1e-9)
    assert (m["alpacaeval/n_wins"], m["alpacaeval/n_wins_base"], m["alpacaeval/n_total"]) == (
        6,
        0,
        6,
    )
    assert m["alpacaeval/lc_with_difficulty"] == 1 and m["alpacaeval/lc_win_rate"] is not None


def test_alpacaeval_position_bias_shows_as_the_swap_rate(tmp_path: Path) -> None:
    m, rows = _alpaca(tmp_path, lambda r: "m")  # hard verdicts, always the first shown
    switched = [r["is_switched"] for r in rows]
    assert [r["preference"] for r in rows] == [2.0 if s else 1.0 for s in switched]
    assert m["alpacaeval/win_rate"] == pytest.approx(100 * sum(switched) / len(switched))
    assert rows[0]["preference_kind"] == "hard"


def test_swap_is_seeded_on_the_instruction() -> None:
    flips = [is_switched(f"instruction {i}", 0) for i in range(200)]
    assert flips == [is_switched(f"instruction {i}", 0) for i in range(200)]
    assert 80 < sum(flips) < 120
    assert flips != [is_switched(f"instruction {i}", 1) for i in range(200)]


def test_win_rate_counts_and_standard_error() -> None:
    rows = [
        {"preference": p, "output_2": "x" * n}
        for p, n in [(2.0, 10), (1.0, 20), (1.5, 30), (0, 40), (None, 50), (1.75, 60)]
    ]
    m = win_rate_metrics(rows)
    q = [1.0, 0.0, 0.5, 0.5, 0.75]
    mean = sum(q) / 5
    sem = math.sqrt(sum((x - mean) ** 2 for x in q) / 4 / 5)
    assert m["alpacaeval/win_rate"] == pytest.approx(100 * mean)
    assert m["alpacaeval/standard_error"] == pytest.approx(100 * sem)
    assert (m["alpacaeval/n_wins"], m["alpacaeval/n_wins_base"], m["alpacaeval/n_draws"]) == (
        2,
        1,
        2,
    )
    assert m["alpacaeval/discrete_win_rate"] == pytest.approx(100 * 3 / 5)
    assert (m["alpacaeval/n_total"], m["alpacaeval/n_failed"]) == (5, 1)
    assert m["alpacaeval/avg_length"] == 35


def test_ratings_and_neutral_fill() -> None:
    replies = iter(["Good. Rating: [[8]]", "Rating: [[4]]", "no idea", "[[12]]"])
    backend = ScriptedBackend(lambda r: next(replies))
    prompts = ["p1", "p1", "p1", "p2"]
    ratings = rate(backend, prompts, ["a", "b", "c", "d"], "helpfulness", 64)
    assert [r.score for r in ratings] == [8.0, 4.0, None, None]
    assert backend.sent[0].template == "rating-helpfulness@1"
    assert "User: p1" in user_text(backend.sent[0])
    # The failure of p1 takes p1's mean; p2 has no valid rating: the scale midpoint.
    assert neutral_fill(prompts, ratings) == [8.0, 4.0, 6.0, 5.5]


def test_preferences_average_both_orders() -> None:
    def judge(r: ChatRequest):
        a_is_x = "x-reply" in user_text(r).split("reply A")[1].split("reply B")[0]
        return ("A", {"A": math.log(0.9 if a_is_x else 0.3), "B": math.log(0.1 if a_is_x else 0.7)})

    prefs = prefer(ScriptedBackend(judge), ["q"], ["x-reply"], ["y-reply"])
    # order 1: P(A = x) = 0.9; order 2: P(A = y) = 0.3, so P(x) = 0.7; mean 0.8
    assert prefs[0].orders == pytest.approx((0.9, 0.7))
    assert prefs[0].p == pytest.approx(0.8)
    biased = prefer(ScriptedBackend(lambda r: "A"), ["q", "q"], ["a", "b"], ["c", "d"], False)
    assert [p.p for p in biased] == [0.5, 0.5]


def test_reward_judge_failure_policy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    replies = {"good": "[[7]]", "bad": "??"}
    fake = ScriptedBackend(lambda r: replies["bad" if "bad" in user_text(r) else "good"])
    monkeypatch.setattr("align.llm.open.make_backend", lambda cfg, device: fake)
    base = {"backend": {"kind": "local", "model": "tiny"}}
    strict = RewardJudge(JudgeRewardConfig.model_validate(base), tmp_path / "c1")
    with pytest.raises(AlignError, match="1 of 2 ratings failed"):
        strict.rewards(["p", "p"], ["good one", "bad one"])
    lenient = RewardJudge(
        JudgeRewardConfig.model_validate({**base, "on_failure": "neutral"}), tmp_path / "c2"
    )
    assert lenient.rewards(["p", "p"], ["good one", "bad one"]) == [7.0, 7.0]
    assert lenient.preferences(["p"], ["x"], ["y"]) == [0.5]  # '[[7]]' names no letter
