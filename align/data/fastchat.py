"""MT-Bench files in FastChat's `llm_judge` layout.

- questions: one JSON object a line, `{question_id, category, turns: [str, ...][, reference]}`;
- answers (model and reference): `{question_id, answer_id, model_id, choices: [{index, turns}],
  tstamp}`; the text of turn k is `choices[0]["turns"][k]`.
Extra keys are ignored on reading; errors name the file, the line and the field.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from align.core.errors import AlignError
from align.core.io import atomic_write_text, canonical_json, sha256_text

QuestionId = int | str


@dataclass(frozen=True)
class Question:
    question_id: QuestionId
    category: str
    turns: tuple[str, ...]
    reference: tuple[str, ...] | None = None


def read_jsonl(path: Path, what: str, hint: str = "") -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line."""
    path = Path(path)
    if not path.is_file():
        raise AlignError(f"{path}: no such file{hint}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise AlignError(
                    f"{path}:{lineno}: not valid JSON ({exc}); one {what} a line"
                ) from None
            if not isinstance(obj, dict):
                raise AlignError(
                    f"{path}:{lineno}: expected a JSON object ({what}), got {obj!r:.40}"
                )
            rows.append((lineno, obj))
    return rows


def _texts(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(t, str) for t in value)


def _check_id(where: str, qid: Any) -> QuestionId:
    if isinstance(qid, bool) or not isinstance(qid, int | str):
        raise AlignError(f"{where}: question_id must be an integer or a string, got {qid!r:.40}")
    return qid


def read_questions(path: Path) -> list[Question]:
    rows = read_jsonl(
        path,
        "question",
        " (MT-Bench questions are not shipped: point to FastChat's question.jsonl)",
    )
    questions, seen = [], set()
    for lineno, obj in rows:
        where = f"{path}:{lineno}"
        qid = _check_id(where, obj.get("question_id"))
        if qid in seen:
            raise AlignError(f"{where}: question_id {qid!r} appears twice")
        seen.add(qid)
        if not isinstance(obj.get("category"), str):
            raise AlignError(f"{where}: category must be a string")
        if not _texts(obj.get("turns")):
            raise AlignError(f"{where}: turns must be a non-empty list of strings")
        ref = obj.get("reference")
        if ref is not None and not _texts(ref):
            raise AlignError(f"{where}: reference must be a list of strings when present")
        questions.append(
            Question(qid, obj["category"], tuple(obj["turns"]), tuple(ref) if ref else None)
        )
    return questions


def read_answers(path: Path) -> tuple[str | None, dict[QuestionId, tuple[str, ...]]]:
    """(model_id of the first line, {question_id: turn texts}) from an answer file."""
    model_id, answers = None, {}
    for lineno, obj in read_jsonl(path, "answer"):
        where = f"{path}:{lineno}"
        qid = _check_id(where, obj.get("question_id"))
        choices = obj.get("choices")
        if not (isinstance(choices, list) and choices and isinstance(choices[0], dict)):
            raise AlignError(f"{where}: choices must be a non-empty list of {{index, turns}}")
        if not _texts(choices[0].get("turns")):
            raise AlignError(f"{where}: choices[0].turns must be a non-empty list of strings")
        answers[qid] = tuple(choices[0]["turns"])
        if model_id is None and isinstance(obj.get("model_id"), str):
            model_id = obj["model_id"]
    return model_id, answers


def answer_record(
    question_id: QuestionId, model_id: str, turns: list[str], tstamp: float | None = None
) -> dict:
    """One line of a FastChat model-answer file (answer_id: a content hash, not a random id;
    tstamp: now unless given, e.g. fixed for byte-reproducible files)."""
    answer_id = sha256_text(canonical_json([model_id, question_id, turns]))[:22]
    return {
        "question_id": question_id,
        "answer_id": answer_id,
        "model_id": model_id,
        "choices": [{"index": 0, "turns": list(turns)}],
        "tstamp": time.time() if tstamp is None else tstamp,
    }


def write_jsonl(path: Path, rows: Iterable[dict]) -> None:
    """One JSON object a line, ASCII only (non-ASCII as \\u escapes): FastChat's readers open
    these files in the platform's default encoding, which is not UTF-8 everywhere."""
    atomic_write_text(Path(path), "".join(json.dumps(r, ensure_ascii=True) + "\n" for r in rows))
