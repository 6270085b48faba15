"""FastChat and AlpacaEval file layouts: project-written files round-trip, extra keys are
tolerated, bad lines fail with the file, line and field named; answer generation keeps turn 1
in the turn-2 conversation and uses FastChat's per-category temperatures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align.config.judge import AlpacaEvalConfig
from align.core.errors import AlignError
from align.data.fastchat import answer_record, read_answers, read_questions, write_jsonl
from align.data.judge_examples import MT_QUESTIONS, write_alpacaeval_example, write_mtbench_example
from align.judging.alpacaeval import read_difficulty, read_outputs, run_alpacaeval
from align.judging.mtbench import generate_answers
from align.llm.fake import ScriptedBackend


def test_questions_round_trip_with_extra_keys(tmp_path: Path) -> None:
    rows = [{**q, "tags": ["x"], "source": "ours"} for q in MT_QUESTIONS]
    write_jsonl(tmp_path / "q.jsonl", rows)
    (tmp_path / "q.jsonl").write_text((tmp_path / "q.jsonl").read_text() + "\n\n")  # blanks ok
    questions = read_questions(tmp_path / "q.jsonl")
    assert [q.question_id for q in questions] == [81, 111, 131, 121]
    assert [q.category for q in questions] == ["writing", "math", "stem", "coding"]
    assert questions[1].turns == tuple(MT_QUESTIONS[1]["turns"])
    assert questions[1].reference == ("8 dollars", "15 pens")
    assert questions[0].reference is None


def test_answers_round_trip(tmp_path: Path) -> None:
    rows = [answer_record(81, "my-model", ["first", "second"])]
    rows[0]["extra"] = {"anything": 1}
    rows.append({**answer_record("q-2", "my-model", ["only"]), "choices": [{"turns": ["only"]}]})
    write_jsonl(tmp_path / "a.jsonl", rows)
    model_id, answers = read_answers(tmp_path / "a.jsonl")
    assert model_id == "my-model"
    assert answers == {81: ("first", "second"), "q-2": ("only",)}
    line = json.loads((tmp_path / "a.jsonl").read_text().splitlines()[0])
    assert set(line) >= {"question_id", "answer_id", "model_id", "choices", "tstamp"}
    assert line["choices"] == [{"index": 0, "turns": ["first", "second"]}]


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("{not json", ":2: not valid JSON"),
        ('{"question_id": 5, "category": "math"}', ":2: turns must be"),
        ('{"question_id": 5, "category": 3, "turns": ["a"]}', ":2: category must be"),
        ('{"question_id": [1], "category": "math", "turns": ["a"]}', ":2: question_id must"),
        ('{"question_id": 1, "category": "math", "turns": ["a"]}', "appears twice"),
        ('{"question_id": 5, "category": "math", "turns": ["a"], "reference": 7}', "reference"),
    ],
)
def test_bad_question_lines_name_the_line(tmp_path: Path, line: str, fragment: str) -> None:
    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 1, "category": "math", "turns": ["a"]}\n' + line + "\n")
    with pytest.raises(AlignError, match=r"q\.jsonl") as info:
        read_questions(path)
    assert fragment in str(info.value)


def test_missing_question_file_says_it_is_not_shipped(tmp_path: Path) -> None:
    with pytest.raises(AlignError, match="not shipped"):
        read_questions(tmp_path / "question.jsonl")


def test_generation_keeps_turn_one_and_category_temperatures(tmp_path: Path) -> None:
    seen: list[tuple[list[list[dict]], list[float], int]] = []

    def generate_fn(convs: list[list[dict]], temps: list[float], max_new: int) -> list[str]:
        seen.append(([list(c) for c in convs], temps, max_new))
        return [f"reply {len(c)} to {c[-1]['content'][:5]}" for c in convs]

    questions = read_questions(write_mtbench_example(tmp_path)["questions"])
    answers = generate_answers(questions, generate_fn, 17)
    assert len(seen) == 2 and seen[0][2] == 17
    assert seen[0][1] == [0.7, 0.0, 0.1, 0.0]  # writing, math, stem, coding
    turn2 = seen[1][0][0]
    assert [m["role"] for m in turn2] == ["user", "assistant", "user"]
    assert turn2[1]["content"] == answers[81][0] == "reply 1 to Write"
    assert answers[81][1] == "reply 3 to Rewri"


def test_alpacaeval_files_round_trip(tmp_path: Path) -> None:
    paths = write_alpacaeval_example(tmp_path / "ae")
    refs = json.loads(paths["reference_outputs"].read_text())
    refs[0]["unexpected"] = "tolerated"
    paths["reference_outputs"].write_text(json.dumps(refs))
    cfg = AlpacaEvalConfig(
        reference_outputs=str(paths["reference_outputs"]),
        instructions=str(paths["instructions"]),
        difficulty=str(paths["difficulty"]),
    )
    backend = ScriptedBackend(lambda r: "M")

    def generate_fn(convs: list[list[dict]], temps: list[float], max_new: int) -> list[str]:
        return [f"out: {c[0]['content']}" for c in convs]

    run_alpacaeval(cfg, backend, generate_fn, tmp_path / "run", "pol", "judge", True)
    written = read_outputs(tmp_path / "run" / "model_outputs.json", need_output=True)
    assert [w["instruction"] for w in written] == [r["instruction"] for r in refs]
    assert all(set(w) == {"instruction", "output", "generator", "dataset"} for w in written)
    assert written[2] == {
        "instruction": refs[2]["instruction"],
        "output": f"out: {refs[2]['instruction']}",
        "generator": "pol",
        "dataset": "koala",
    }
    annotations = json.loads((tmp_path / "run" / "annotations.json").read_text())
    assert annotations[0]["generator_1"] == "reference" and annotations[0]["generator_2"] == "pol"
    # A rerun finds the complete outputs and does not call the policy again.
    run_alpacaeval(
        cfg, backend, lambda *a: pytest.fail("regenerated"), tmp_path / "run", "pol", "judge", True
    )


def test_alpacaeval_reader_errors(tmp_path: Path) -> None:
    path = tmp_path / "o.json"
    path.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c"}]))
    with pytest.raises(AlignError, match=r"item 1: 'output' must be a string"):
        read_outputs(path, need_output=True)
    assert len(read_outputs(path, need_output=False)) == 2
    path.write_text(json.dumps({"instruction": "a"}))
    with pytest.raises(AlignError, match="JSON list"):
        read_outputs(path, need_output=False)


def test_difficulty_files(tmp_path: Path) -> None:
    by_text, by_pos = read_difficulty(write_alpacaeval_example(tmp_path)["difficulty"])
    assert by_text == {} and by_pos[0] == -1.0 and by_pos[5] == pytest.approx(1.0)
    (tmp_path / "d.csv").write_text("instruction,difficulty\nhello,0.5\n")
    assert read_difficulty(tmp_path / "d.csv") == ({"hello": 0.5}, {})
    (tmp_path / "d.json").write_text(json.dumps([{"instruction": "hi", "difficulty": -2}]))
    assert read_difficulty(tmp_path / "d.json") == ({"hi": -2.0}, {})
    (tmp_path / "bad.csv").write_text("instruction,score\nhello,0.5\n")
    with pytest.raises(AlignError, match="instruction_difficulty"):
        read_difficulty(tmp_path / "bad.csv")


def test_mtbench_example_files_are_readable(tmp_path: Path) -> None:
    paths = write_mtbench_example(tmp_path)
    assert len(read_questions(paths["questions"])) == 4
    assert read_answers(paths["reference_answers"])[1][111][0].startswith("Four groups")
    baseline_id, baseline = read_answers(paths["baseline_answers"])
    assert baseline_id == "baseline" and set(baseline) == {81, 111, 131, 121}


def test_example_files_are_byte_reproducible(tmp_path: Path) -> None:
    def digest(root: Path) -> dict[str, bytes]:
        return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*.*")}

    for name in ("a", "b"):
        write_mtbench_example(tmp_path / name / "mt")
        write_alpacaeval_example(tmp_path / name / "ae")
    first, second = digest(tmp_path / "a"), digest(tmp_path / "b")
    assert len(first) == 6 and first == second
