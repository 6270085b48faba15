"""align.data loaders on files written into tmp_path; align.quickstart_data; the arithmetic reward.

Record errors must be AlignError with a message that names the file and the record.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from align.config import DatasetConfig
from align.core.errors import AlignError
from align.data.datasets import load_records
from align.data.quickstart import INSTRUCTION, problems, write_quickstart_data
from align.rewards.arithmetic import exact_answer


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def load(path: Path, system_prompt: str | None = None, **ds: Any) -> list[dict[str, Any]]:
    return load_records(DatasetConfig(path=str(path), **ds), system_prompt, "data.train")


def load_error(path: Path, **ds: Any) -> str:
    with pytest.raises(AlignError) as info:
        load(path, **ds)
    message = str(info.value)
    assert "\n" not in message
    return message


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def chat(question: str, reply: str) -> list[dict[str, str]]:
    return [user(question), {"role": "assistant", "content": reply}]


def ultrafeedback_rows() -> list[dict[str, Any]]:
    """Two rows in the NCA reward-data layout: prompt, A0..A3 as chat lists, A{i}_score."""
    rows = []
    for i, question in enumerate(["What is 2 plus 2?", "Name a colour."]):
        row: dict[str, Any] = {"prompt": question, "prompt_id": f"q{i}"}
        for k in range(4):
            row[f"A{k}"] = chat(question, f"reply {i}.{k}")
            row[f"A{k}_score"] = 8.0 - 2 * k + i
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# prompts


def test_plain_string_prompts_become_one_user_message(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "What is 2 plus 3?"}, {"prompt": "Hi"}])
    assert load(path) == [
        {"id": "000000", "prompt": [user("What is 2 plus 3?")]},
        {"id": "000001", "prompt": [user("Hi")]},
    ]


def test_conversational_prompts_pass_through(tmp_path: Path) -> None:
    messages = [{"role": "system", "content": "Be terse."}, user("Add 4 and 5.")]
    path = write_jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": messages}])
    assert load(path) == [{"id": "a", "prompt": messages}]


def test_extra_columns_are_kept(tmp_path: Path) -> None:
    rows = [{"id": "a", "prompt": "What is 6 times 7?", "answer": 42, "topic": "times"}]
    [record] = load(write_jsonl(tmp_path / "p.jsonl", rows))
    assert record == {
        "id": "a",
        "prompt": [user("What is 6 times 7?")],
        "answer": 42,
        "topic": "times",
    }


def test_fields_mapping_renames_columns(tmp_path: Path) -> None:
    rows = [{"qid": 7, "question": "What is 9 minus 4?", "gold": 5, "note": "x"}]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    [record] = load(path, fields={"id": "qid", "prompt": "question", "answer": "gold"})
    assert record == {
        "id": "7",  # ids are strings whatever the column type
        "prompt": [user("What is 9 minus 4?")],
        "answer": 5,
        "note": "x",
    }


def test_missing_prompt_column_points_to_fields(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"text": "hello"}])
    assert load_error(path) == (
        f"data.train: {path} record 0: no column 'prompt' (format 'prompts' needs prompt); "
        "columns: text; rename it in the file or map it with data.*.fields.prompt"
    )


def test_pairs_file_without_chosen_names_the_column(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "2+2?", "rejected": "5"}])
    assert load_error(path, format="pairs") == (
        f"data.train: {path} record 0: no column 'chosen' (format 'pairs' needs prompt, chosen, "
        "rejected); columns: prompt, rejected; rename it in the file or map it with "
        "data.*.fields.chosen"
    )


def test_kwise_file_declared_as_pairs_suggests_the_format(tmp_path: Path) -> None:
    rows = [{"prompt": "2+2?", "responses": ["4", "5"], "rewards": [1.0, 0.0]}]
    message = load_error(write_jsonl(tmp_path / "k.jsonl", rows), format="pairs")
    assert "no column 'chosen'" in message
    assert message.endswith("the file looks like format 'kwise': set data.*.format: kwise")


def test_system_prompt_is_prepended(tmp_path: Path) -> None:
    rows = [
        {"id": "s", "prompt": "Hi"},
        {"id": "c", "prompt": [user("Hello")]},
        {"id": "own", "prompt": [{"role": "system", "content": "Mine."}, user("Yo")]},
    ]
    records = load(write_jsonl(tmp_path / "p.jsonl", rows), system_prompt="Be brief.")
    system = {"role": "system", "content": "Be brief."}
    assert [r["prompt"] for r in records] == [
        [system, user("Hi")],
        [system, user("Hello")],
        [{"role": "system", "content": "Mine."}, user("Yo")],  # its own system message stays
    ]


def test_limit_keeps_the_first_records(tmp_path: Path) -> None:
    rows = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(5)]
    records = load(write_jsonl(tmp_path / "p.jsonl", rows), limit=2)
    assert [r["id"] for r in records] == ["r0", "r1"]


def test_json_array_file(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"id": "j", "prompt": "Hi", "answer": 1}]))
    assert load(path) == [{"id": "j", "prompt": [user("Hi")], "answer": 1}]


# ---------------------------------------------------------------------------------------------
# responses with rewards


def test_kwise_rewards_become_floats(tmp_path: Path) -> None:
    rows = [{"id": "k", "prompt": "Q", "responses": ["a", "b", "c"], "rewards": [3, 1, 2]}]
    assert load(write_jsonl(tmp_path / "k.jsonl", rows), format="kwise") == [
        {"id": "k", "prompt": [user("Q")], "responses": ["a", "b", "c"], "rewards": [3.0, 1.0, 2.0]}
    ]


def expected_ultrafeedback() -> list[dict[str, Any]]:
    return [
        {
            "id": "q0",
            "prompt": [user("What is 2 plus 2?")],
            "responses": ["reply 0.0", "reply 0.1", "reply 0.2", "reply 0.3"],
            "rewards": [8.0, 6.0, 4.0, 2.0],
        },
        {
            "id": "q1",
            "prompt": [user("Name a colour.")],
            "responses": ["reply 1.0", "reply 1.1", "reply 1.2", "reply 1.3"],
            "rewards": [9.0, 7.0, 5.0, 3.0],
        },
    ]


def test_ultrafeedback_layout_from_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "uf.jsonl", ultrafeedback_rows())
    records = load(path, format="ultrafeedback", fields={"id": "prompt_id"})
    assert records == expected_ultrafeedback()


def test_ultrafeedback_layout_from_parquet(tmp_path: Path) -> None:
    path = tmp_path / "uf.parquet"
    pq.write_table(pa.Table.from_pylist(ultrafeedback_rows()), path)
    records = load(path, format="ultrafeedback", fields={"id": "prompt_id"})
    assert records == expected_ultrafeedback()


def test_ultrafeedback_plain_string_responses(tmp_path: Path) -> None:
    row = {"prompt": "Q", "A0": "first", "A0_score": 2, "A1": "second", "A1_score": 1}
    records = load(write_jsonl(tmp_path / "uf.jsonl", [row]), format="ultrafeedback")
    assert records[0]["responses"] == ["first", "second"]
    assert records[0]["rewards"] == [2.0, 1.0]


def test_pairs_give_k_of_two_with_rewards_one_and_zero(tmp_path: Path) -> None:
    rows = [
        {"id": "p", "prompt": "Q", "chosen": "good", "rejected": "bad"},
        {
            "id": "c",
            "prompt": [user("Q2")],
            "chosen": [{"role": "assistant", "content": "fine"}],
            "rejected": [{"role": "assistant", "content": "poor"}],
        },
    ]
    records = load(write_jsonl(tmp_path / "pairs.jsonl", rows), format="pairs")
    assert [(r["id"], r["responses"], r["rewards"]) for r in records] == [
        ("p", ["good", "bad"], [1.0, 0.0]),
        ("c", ["fine", "poor"], [1.0, 0.0]),
    ]


# ---------------------------------------------------------------------------------------------
# errors


def kwise_rows(bad: dict[str, Any]) -> list[dict[str, Any]]:
    """A good record 'a', then record 'b' with `bad` merged in."""
    good = {"id": "a", "prompt": "Q", "responses": ["x", "y"], "rewards": [1.0, 0.0]}
    return [good, {**good, "id": "b", **bad}]


def test_nan_reward(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "k.jsonl", kwise_rows({"rewards": [1.0, float("nan")]}))
    assert load_error(path, format="kwise") == (
        f"data.train: {path} record 1 (id b) reward 1: reward is nan; "
        "rewards must be finite numbers"
    )


def test_missing_reward_in_kwise(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "k.jsonl", kwise_rows({"rewards": [None, 0.0]}))
    assert load_error(path, format="kwise") == (
        f"data.train: {path} record 1 (id b) reward 0: reward must be a number, got None"
    )


def test_missing_score_column_in_ultrafeedback(tmp_path: Path) -> None:
    row = {"prompt": "Q", "prompt_id": "u", "A0": "x", "A0_score": 1.0, "A1": "y"}
    path = write_jsonl(tmp_path / "uf.jsonl", [row])
    message = load_error(path, format="ultrafeedback", fields={"id": "prompt_id"})
    assert (
        message == f"data.train: {path} record 0 (id u) reward 1: reward must be a number, got None"
    )


def test_bool_reward(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "k.jsonl", kwise_rows({"rewards": [True, False]}))
    assert load_error(path, format="kwise").endswith(
        "record 1 (id b) reward 0: reward must be a number, got True"
    )


def test_k_mismatch_in_kwise(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "k.jsonl", kwise_rows({"responses": ["x", "y", "z"]}))
    assert load_error(path, format="kwise") == (
        f"data.train: {path} record 1 (id b): 3 responses but 2 rewards; K must match"
    )


@pytest.mark.parametrize("empty", ["", "   ", None])
def test_empty_response(tmp_path: Path, empty: str | None) -> None:
    path = write_jsonl(tmp_path / "k.jsonl", kwise_rows({"responses": ["x", empty]}))
    assert load_error(path, format="kwise") == (
        f"data.train: {path} record 1 (id b) response 1: empty or missing response; "
        "drop the record or fill it in"
    )


def test_chat_response_without_an_assistant_turn(tmp_path: Path) -> None:
    row = {"prompt": "Q", "A0": [user("Q")], "A0_score": 1.0, "A1": chat("Q", "y"), "A1_score": 0}
    path = write_jsonl(tmp_path / "uf.jsonl", [row])
    assert load_error(path, format="ultrafeedback").endswith(
        "record 0 (id 000000) response 0: empty or missing response; drop the record or fill it in"
    )


def test_empty_prompt(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, {"prompt": "  "}])
    assert load_error(path) == f"data.train: {path} record 1: empty prompt"


def test_duplicate_ids(tmp_path: Path) -> None:
    rows = [
        {"id": "same", "prompt": "A"},
        {"id": "other", "prompt": "B"},
        {"id": "same", "prompt": "C"},
    ]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    assert load_error(path) == (f"data.train: {path}: duplicate id 'same'; ids must be unique")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.jsonl"
    assert load_error(path) == f"data path '{path}' does not exist; run `make data` or fix it"


def test_unsupported_suffix(tmp_path: Path) -> None:
    path = tmp_path / "prompts.csv"
    path.write_text("prompt\nHi\n")
    assert load_error(path) == (
        f"data path '{path}': unsupported suffix; use one of .jsonl, .json, .parquet"
    )


def test_empty_file_is_an_align_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    assert str(path) in load_error(path)


@pytest.mark.parametrize(("name", "text"), [("empty.jsonl", ""), ("empty.json", "[]")])
def test_empty_file_says_it_holds_no_records(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    assert load_error(path) == f"data.train: {path} holds no records"


def test_ultrafeedback_gap_in_columns_names_the_record(tmp_path: Path) -> None:
    row = {"prompt": "Q", "A0": "x", "A0_score": 1.0, "A2": "z", "A2_score": 0.0}
    path = write_jsonl(tmp_path / "uf.jsonl", [row])
    message = load_error(path, format="ultrafeedback")
    assert str(path) in message and "record 0" in message


# ---------------------------------------------------------------------------------------------
# quickstart data


def test_quickstart_files_are_byte_identical_when_rewritten(tmp_path: Path) -> None:
    first = write_quickstart_data(tmp_path / "a")
    snapshot = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in first}
    second = write_quickstart_data(tmp_path / "a")
    assert second == first
    assert {p.relative_to(tmp_path / "a"): p.read_bytes() for p in second} == snapshot
    other = write_quickstart_data(tmp_path / "b")
    assert {p.relative_to(tmp_path / "b"): p.read_bytes() for p in other} == snapshot
    assert sorted(str(k) for k in snapshot) == [
        "alpacaeval/eval_set.json",
        "alpacaeval/instruction_difficulty.csv",
        "alpacaeval/reference_outputs.json",
        "mtbench/model_answer/baseline.jsonl",
        "mtbench/question.jsonl",
        "mtbench/reference_answer/reference.jsonl",
        "quickstart/heldout.jsonl",
        "quickstart/train.jsonl",
        "smoke/ultrafeedback_reward.jsonl",
    ]
    lines = {
        str(k): v.decode().count("\n")
        for k, v in snapshot.items()
        if "quick" in str(k) or "smoke" in str(k)
    }
    assert lines == {
        "quickstart/heldout.jsonl": 48,
        "quickstart/train.jsonl": 192,
        "smoke/ultrafeedback_reward.jsonl": 6,
    }


def test_problems_are_deterministic_and_splits_differ() -> None:
    train, heldout = problems("train"), problems("heldout")
    assert problems("train") == train
    assert len(train) == 192 and len(heldout) == 48
    assert train[0]["id"] == "train-0000" and heldout[-1]["id"] == "heldout-0047"
    assert len({p["id"] for p in train}) == 192
    questions = {p["prompt"][0]["content"] for p in train}
    assert questions != {p["prompt"][0]["content"] for p in heldout}


# One pattern per phrasing: (regex with the two operands, the arithmetic it asks for).
PHRASINGS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"has (\d+) \w+ and gets (\d+) more\."), "+"),
    (re.compile(r"had (\d+) \w+ and gave away (\d+)\."), "-"),
    (re.compile(r"There are (\d+) \w+ in a box and (\d+) in a bag\."), "+"),
    (re.compile(r"buys (\d+) bags with (\d+) \w+ in each bag\."), "*"),
    (re.compile(r"What is (\d+) plus (\d+)\?"), "+"),
    (re.compile(r"What is (\d+) minus (\d+)\?"), "-"),
    (re.compile(r"What is (\d+) times (\d+)\?"), "*"),
]


def solve(question: str) -> int:
    hits = [(m, op) for pattern, op in PHRASINGS if (m := pattern.search(question))]
    assert len(hits) == 1, question
    match, op = hits[0]
    a, b = int(match.group(1)), int(match.group(2))
    return {"+": a + b, "-": a - b, "*": a * b}[op]


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_answers_match_the_questions(split: str) -> None:
    for problem in problems(split):
        [message] = problem["prompt"]
        assert message["role"] == "user"
        assert message["content"].endswith(f" {INSTRUCTION}")
        assert problem["answer"] == solve(message["content"]), problem
        assert problem["answer"] >= 0  # 'minus' and 'gave away' never go below zero


def test_solve_parses_hand_written_questions() -> None:
    # The parser above is itself checked on questions with known answers.
    assert solve("Tom has 3 apples and gets 4 more. How many apples does Tom have now?") == 7
    assert solve("Ana had 10 coins and gave away 4. How many coins are left?") == 6
    assert solve("Li buys 3 bags with 5 eggs in each bag. How many eggs is that?") == 15
    assert solve("What is 9 times 8?") == 72


def test_quickstart_files_load_through_the_loaders(tmp_path: Path) -> None:
    write_quickstart_data(tmp_path)
    train = load(tmp_path / "quickstart" / "train.jsonl")
    assert [r["id"] for r in train[:2]] == ["train-0000", "train-0001"]
    assert train[0]["answer"] == problems("train")[0]["answer"]
    uf = load(
        tmp_path / "smoke" / "ultrafeedback_reward.jsonl",
        format="ultrafeedback",
        fields={"id": "prompt_id"},
    )
    assert [r["id"] for r in uf] == [f"uf-{i:04d}" for i in range(6)]
    for record in uf:
        assert record["rewards"] == [9.0, 8.5, 3.0, 1.5]
        answer = int(record["responses"][1])
        assert record["responses"][0] == f"The answer is {answer}."
        assert record["responses"][2] == f"I think it is {answer + 1}."
        assert answer == solve(record["prompt"][0]["content"])


# ---------------------------------------------------------------------------------------------
# the arithmetic reward


@pytest.mark.parametrize(
    ("completion", "answer", "score"),
    [
        ("42", 42, 1.25),
        (" 42\n", 42, 1.25),
        ("42.", 42, 1.25),
        ("The answer is 42.", 42, 1.0),
        ("41", 42, 0.0),
        ("The answer is 41.", 42, 0.0),
        ("I am not sure.", 42, 0.0),
        ("", 42, 0.0),
        ("3 plus 4 is 7", 7, 1.0),  # the last number wins
        ("7, or maybe 8", 7, 0.0),
        ("-5", -5, 1.25),
        ("It is -5", -5, 1.0),
        ("5", -5, 0.0),
        ("-5", 5, 0.0),
    ],
)
def test_exact_answer(completion: str, answer: int, score: float) -> None:
    assert exact_answer([[user("Q")]], [completion], answer=[answer]) == [score]


def test_exact_answer_scores_a_batch_in_order() -> None:
    prompts = [[user("Q")]] * 3
    scores = exact_answer(prompts, ["12", "It is 30.", "2"], answer=[12, 30, 3], id=["a", "b", "c"])
    assert scores == [1.25, 1.0, 0.0]


def test_exact_answer_needs_aligned_lengths() -> None:
    with pytest.raises(ValueError):
        exact_answer([[user("Q")]] * 2, ["1", "2"], answer=[1])
