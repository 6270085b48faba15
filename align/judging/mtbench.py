"""MT-Bench (FastChat `llm_judge`): answer generation, single-answer grading
and pairwise comparison against a baseline.

- Answers: turn k sees the user's turns 1..k and the model's own answers 1..k-1; temperature by
  category (TEMPERATURE); written in FastChat's model-answer format.
- Single grading: one judgment per (question, turn) for turns 1 and 2; reference-guided prompts
  for NEED_REF_CATS when a reference exists; turn 2 uses the multi-turn prompt and grades only
  the second reply. Unparseable ratings are kept with their raw text, score -1, excluded from
  the means and counted. Scores: mean per turn, per category, and overall (all valid).
- Pairwise: each (question, turn) is judged twice with the answers swapped (g1: model as A,
  g2: baseline as A). A winner counts only if both orders name it; a tie or a disagreement is
  a tie; a failed order excludes the pair (counted). win_rate_adjusted = (wins + ties/2) / n.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from align.config.judge import MTBenchConfig
from align.core.errors import AlignError
from align.data.fastchat import (
    Question,
    QuestionId,
    answer_record,
    read_answers,
    read_questions,
    write_jsonl,
)
from align.judging.policy import GenerateFn
from align.judging.prompts import MTBENCH
from align.judging.report import Outcome
from align.llm.backend import Backend, ChatRequest, ChatResult
from align.llm.parsing import expected_rating, parse_rating, parse_verdict

log = logging.getLogger("align.judging.mtbench")
NEED_REF_CATS = frozenset({"math", "reasoning", "coding", "arena-hard-200"})
TEMPERATURE = {
    "writing": 0.7,
    "roleplay": 0.7,
    "extraction": 0.0,
    "math": 0.0,
    "coding": 0.0,
    "reasoning": 0.0,
    "stem": 0.1,
    "humanities": 0.1,
}
DEFAULT_TEMPERATURE = 0.7  # FastChat's value for any other category
Answers = dict[QuestionId, tuple[str, ...]]


def safe_name(name: str) -> str:
    """A model or judge id as the one name used for both its file and its records ('org/m' ->
    'org_m'): FastChat names a model by its answer file's stem."""
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "model"


def generate_answers(
    questions: list[Question], generate_fn: GenerateFn, max_new_tokens: int
) -> Answers:
    """All questions' answers, one generate_fn call per turn index."""
    convs: dict[QuestionId, list[dict]] = {q.question_id: [] for q in questions}
    out: dict[QuestionId, list[str]] = {q.question_id: [] for q in questions}
    for k in range(max((len(q.turns) for q in questions), default=0)):
        active = [q for q in questions if len(q.turns) > k]
        for q in active:
            convs[q.question_id].append({"role": "user", "content": q.turns[k]})
        temps = [TEMPERATURE.get(q.category, DEFAULT_TEMPERATURE) for q in active]
        texts = generate_fn([list(convs[q.question_id]) for q in active], temps, max_new_tokens)
        if len(texts) != len(active):
            raise AlignError(f"generate_fn returned {len(texts)} texts for {len(active)} prompts")
        for q, text in zip(active, texts, strict=True):
            out[q.question_id].append(text)
            convs[q.question_id].append({"role": "assistant", "content": text})
    return {qid: tuple(turns) for qid, turns in out.items()}


def _reference(q: Question, refs: Answers, turn: int) -> tuple[str, ...] | None:
    ref = refs.get(q.question_id) or q.reference
    return ref if ref is not None and len(ref) >= turn else None


def _turns(q: Question) -> tuple[int, ...]:
    return (1, 2) if len(q.turns) >= 2 else (1,)


def single_request(
    q: Question,
    answer: tuple[str, ...],
    ref: tuple[str, ...] | None,
    turn: int,
    max_tokens: int,
    expected: bool = False,
) -> ChatRequest:
    """The judge call grading `answer[turn - 1]` (reference-guided when `ref` is given)."""
    name = "mtbench-single" + ("-ref" if ref else "") + ("-multi" if turn == 2 else "")
    t = MTBENCH[name]
    if turn == 1:
        fields = {"question": q.turns[0], "answer": answer[0]}
    else:
        fields = {
            "question_1": q.turns[0],
            "answer_1": answer[0],
            "question_2": q.turns[1],
            "answer_2": answer[1],
        }
    if ref:
        fields.update(ref_1=ref[0], **({"ref_2": ref[1]} if turn == 2 else {}))
    return ChatRequest.chat(t.system, t.render(**fields), t.id, max_tokens, rating_probs=expected)


def single_score(result: ChatResult, expected: bool) -> tuple[float | None, str | None]:
    """(score, error) of one judgment: the expected rating when asked for and the backend gave
    its probabilities, else the judgment's parsed [[N]]."""
    if not result.ok:
        return None, result.error
    if expected and result.rating_probs:
        score = expected_rating(result.rating_probs)
        if score is not None:
            return score, None
    return parse_rating(result.text or "")


def pair_request(
    q: Question,
    a: tuple[str, ...],
    b: tuple[str, ...],
    ref: tuple[str, ...] | None,
    turn: int,
    max_tokens: int,
) -> ChatRequest:
    """The judge call comparing assistant A's and B's reply at `turn`."""
    name = "mtbench-pair" + ("-ref" if ref else "") + ("-multi" if turn == 2 else "")
    t = MTBENCH[name]
    if turn == 1:
        fields = {"question": q.turns[0], "answer_a": a[0], "answer_b": b[0]}
    else:
        fields = {"question_1": q.turns[0], "question_2": q.turns[1]}
        fields.update(answer_a_1=a[0], answer_a_2=a[1], answer_b_1=b[0], answer_b_2=b[1])
    if ref:
        fields.update(ref_1=ref[0], **({"ref_2": ref[1]} if turn == 2 else {}))
    return ChatRequest.chat(t.system, t.render(**fields), t.id, max_tokens)


def grade_single(
    questions: list[Question],
    answers: Answers,
    refs: Answers,
    backend: Backend,
    model_id: str,
    judge_name: str,
    max_tokens: int,
    expected: bool = False,
) -> list[dict]:
    """FastChat single-judgment records (plus `category`, `error`, `reference_missing`, and
    with `expected` the `rating_probs` the score was taken from)."""
    jobs, requests = [], []
    for q in questions:
        for turn in _turns(q):
            ref = _reference(q, refs, turn) if q.category in NEED_REF_CATS else None
            missing = q.category in NEED_REF_CATS and ref is None
            jobs.append((q, turn, missing))
            requests.append(
                single_request(q, answers[q.question_id], ref, turn, max_tokens, expected)
            )
    records = []
    for (q, turn, missing), req, res in zip(
        jobs, requests, backend.complete(requests), strict=True
    ):
        score, error = single_score(res, expected)
        records.append(
            {
                "question_id": q.question_id,
                "model": model_id,
                "judge": [judge_name, req.template],
                "user_prompt": req.messages[-1][1],
                "judgment": res.text,
                "score": score if score is not None else -1,
                "turn": turn,
                "tstamp": time.time(),
                "category": q.category,
                "error": error,
                "reference_missing": missing,
                **({"rating_probs": res.rating_probs} if expected else {}),
            }
        )
    return records


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def single_scores(records: list[dict]) -> dict[str, float | int | None]:
    """Means over valid judgments (score != -1): per turn, per category and overall."""
    valid = [r for r in records if r["error"] is None]
    metrics: dict[str, float | int | None] = {
        "mtbench/overall": _mean([r["score"] for r in valid]),
        "mtbench/turn1": _mean([r["score"] for r in valid if r["turn"] == 1]),
        "mtbench/turn2": _mean([r["score"] for r in valid if r["turn"] == 2]),
    }
    for cat in sorted({r["category"] for r in records}):
        metrics[f"mtbench/category/{cat}"] = _mean(
            [r["score"] for r in valid if r["category"] == cat]
        )
    metrics["mtbench/n_judgments"] = len(records)
    metrics["mtbench/n_failed"] = len(records) - len(valid)
    metrics["mtbench/n_reference_missing"] = sum(r["reference_missing"] for r in records)
    return metrics


def grade_pairwise(
    questions: list[Question],
    answers: Answers,
    baseline: Answers,
    refs: Answers,
    backend: Backend,
    names: tuple[str, str, str],
    max_tokens: int,
) -> list[dict]:
    """FastChat pair records; `names` = (model_id, baseline_id, judge_name)."""
    model_id, baseline_id, judge_name = names
    jobs, requests = [], []
    for q in questions:
        a, b = answers[q.question_id], baseline[q.question_id]
        for turn in _turns(q):
            if len(b) < turn:
                raise AlignError(f"baseline answer of question {q.question_id!r} lacks turn {turn}")
            ref = _reference(q, refs, turn) if q.category in NEED_REF_CATS else None
            jobs.append((q, turn))
            requests.append(pair_request(q, a, b, ref, turn, max_tokens))
            requests.append(pair_request(q, b, a, ref, turn, max_tokens))
    results = backend.complete(requests)
    records = []
    for n, (q, turn) in enumerate(jobs):
        winners, texts = [], []
        for req, res, mapping in (
            (requests[2 * n], results[2 * n], {"A": "model_1", "B": "model_2"}),
            (requests[2 * n + 1], results[2 * n + 1], {"A": "model_2", "B": "model_1"}),
        ):
            verdict, error = parse_verdict(res.text) if res.ok else (None, res.error)
            winners.append(
                ("error", error) if verdict is None else (mapping.get(verdict, "tie"), None)
            )
            texts.append((req.messages[-1][1], res.text))
        (g1, e1), (g2, e2) = winners
        combined = "error" if "error" in (g1, g2) else g1 if g1 == g2 else "tie"
        records.append(
            {
                "question_id": q.question_id,
                "model_1": model_id,
                "model_2": baseline_id,
                "g1_winner": g1,
                "g2_winner": g2,
                "winner": combined,
                "judge": [judge_name, requests[2 * n].template],
                "g1_user_prompt": texts[0][0],
                "g1_judgment": texts[0][1],
                "g2_user_prompt": texts[1][0],
                "g2_judgment": texts[1][1],
                "turn": turn,
                "tstamp": time.time(),
                "category": q.category,
                "error": "; ".join(e for e in (e1, e2) if e) or None,
            }
        )
    return records


def pairwise_scores(records: list[dict]) -> dict[str, float | int | None]:
    """Win/loss/tie counts of model_1 over valid pairs and FastChat's adjusted win rate."""
    valid = [r for r in records if r["winner"] != "error"]
    wins = sum(r["winner"] == "model_1" for r in valid)
    losses = sum(r["winner"] == "model_2" for r in valid)
    ties, n = len(valid) - wins - losses, len(valid)
    return {
        "mtbench/win_rate": wins / n if n else None,
        "mtbench/loss_rate": losses / n if n else None,
        "mtbench/win_rate_adjusted": (wins + 0.5 * ties) / n if n else None,
        "mtbench/n_wins": wins,
        "mtbench/n_losses": losses,
        "mtbench/n_ties": ties,
        "mtbench/n_judgments": len(records),
        "mtbench/n_failed": len(records) - n,
    }


def _load_or_generate(
    questions: list[Question], path: Path, generate_fn: GenerateFn, cfg: MTBenchConfig
) -> Answers:
    """Answers from an earlier, interrupted run of the same stage when complete, else fresh."""
    if path.is_file():
        _, old = read_answers(path)
        if all(len(old.get(q.question_id, ())) == len(q.turns) for q in questions):
            log.info("mtbench: reusing answers in %s", path)
            return {q.question_id: old[q.question_id] for q in questions}
    return generate_answers(questions, generate_fn, cfg.max_new_tokens)


def run_mtbench(
    cfg: MTBenchConfig,
    backend: Backend,
    generate_fn: GenerateFn,
    out_dir: Path,
    model_id: str,
    judge_name: str,
    judge_max_tokens: int,
) -> Outcome:
    """Answer, judge and score; writes model_answer/<model>.jsonl and
    model_judgment/<judge>_{single,pair}.jsonl under `out_dir`."""
    # one name per id: the answer file's stem, its model_id and the judgment records agree
    model_id, judge_name = safe_name(model_id), safe_name(judge_name)
    questions = read_questions(Path(cfg.questions))[: cfg.limit]
    refs: Answers = read_answers(Path(cfg.reference_answers))[1] if cfg.reference_answers else {}
    answer_path = out_dir / "model_answer" / f"{model_id}.jsonl"
    answers = _load_or_generate(questions, answer_path, generate_fn, cfg)
    write_jsonl(
        answer_path,
        (answer_record(q.question_id, model_id, list(answers[q.question_id])) for q in questions),
    )
    judged = out_dir / "model_judgment"
    if cfg.mode == "single":
        records = grade_single(
            questions,
            answers,
            refs,
            backend,
            model_id,
            judge_name,
            judge_max_tokens,
            cfg.rating == "expected",
        )
        write_jsonl(judged / f"{judge_name}_single.jsonl", records)
        return Outcome(single_scores(records), [r["error"] for r in records if r["error"]])
    assert cfg.baseline_answers is not None
    baseline_id, baseline = read_answers(Path(cfg.baseline_answers))
    missing = [q.question_id for q in questions if q.question_id not in baseline]
    if missing:
        raise AlignError(
            f"{cfg.baseline_answers}: no baseline answer for question_id(s) {missing[:5]}"
        )
    records = grade_pairwise(
        questions,
        answers,
        baseline,
        refs,
        backend,
        (model_id, baseline_id or "baseline", judge_name),
        judge_max_tokens,
    )
    write_jsonl(judged / f"{judge_name}_pair.jsonl", records)
    return Outcome(pairwise_scores(records), [r["error"] for r in records if r["error"]])
