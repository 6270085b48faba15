"""Small MT-Bench and AlpacaEval files written by the project, in the original layouts.

The real question and answer sets are not shipped (their text is not ours); these stand in for
them in the quickstart and in tests. All text here is the project's own, and the files are
byte-for-byte reproducible (fixed timestamps), so DVC can track them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from align.core.io import atomic_write_text
from align.data.fastchat import answer_record, write_jsonl

TSTAMP = 1_700_000_000.0  # fixed, so the files are reproducible
MT_QUESTIONS = [
    {
        "question_id": 81,
        "category": "writing",
        "turns": [
            "Write a two-sentence note inviting a neighbour to a garden party.",
            "Rewrite the note so that every sentence starts with the letter G.",
        ],
    },
    {
        "question_id": 111,
        "category": "math",
        "turns": [
            "A shop sells pens at 3 for 2 dollars. How much do 12 pens cost?",
            "How many pens can you buy with 10 dollars?",
        ],
        "reference": ["8 dollars", "15 pens"],
    },
    {
        "question_id": 131,
        "category": "stem",
        "turns": [
            "Why does ice float on water? Answer in one sentence.",
            "Name one consequence of this for lakes in winter.",
        ],
    },
    {
        "question_id": 121,
        "category": "coding",
        "turns": [
            "Write a Python function that returns the largest of three numbers.",
            "Now make it accept any number of arguments.",
        ],
    },
]
MT_REFERENCES = {
    111: ["Four groups of 3 pens cost 4 x 2 = 8 dollars.", "10 dollars buy 5 groups: 15 pens."],
    121: [
        "def largest(a, b, c):\n    return max(a, b, c)",
        "def largest(*xs):\n    return max(xs)",
    ],
}
MT_BASELINE = {
    81: ["Please join us for a garden party on Saturday.", "Good food. Great company."],
    111: ["It costs 8 dollars.", "You can buy 15 pens."],
    131: ["Ice is less dense than liquid water.", "Lakes freeze from the top down."],
    121: ["def largest(a, b, c): return max(a, b, c)", "def largest(*a): return max(a)"],
}

AE_ITEMS = [
    ("List three colours of the rainbow.", "Red, orange and yellow.", "helpful_base"),
    ("Give a synonym for 'quick'.", "Fast.", "helpful_base"),
    ("Explain in one sentence what a noun is.", "A noun names a person, place or thing.", "koala"),
    ("Suggest a name for a pet goldfish.", "Bubbles.", "oasst"),
    ("What is 7 times 6?", "42.", "selfinstruct"),
    (
        "Write a haiku about rain.",
        "Soft rain on the roof / puddles hold the grey sky / the garden drinks deep",
        "vicuna",
    ),
]


def write_mtbench_example(folder: Path) -> dict[str, Path]:
    """question.jsonl, reference_answer/reference.jsonl and model_answer/baseline.jsonl."""
    folder = Path(folder)
    paths = {
        "questions": folder / "question.jsonl",
        "reference_answers": folder / "reference_answer" / "reference.jsonl",
        "baseline_answers": folder / "model_answer" / "baseline.jsonl",
    }
    write_jsonl(paths["questions"], MT_QUESTIONS)
    write_jsonl(
        paths["reference_answers"],
        [answer_record(qid, "reference", turns, TSTAMP) for qid, turns in MT_REFERENCES.items()],
    )
    write_jsonl(
        paths["baseline_answers"],
        [answer_record(qid, "baseline", turns, TSTAMP) for qid, turns in MT_BASELINE.items()],
    )
    return paths


def write_alpacaeval_example(folder: Path) -> dict[str, Path]:
    """eval_set.json (instructions), reference_outputs.json and instruction_difficulty.csv."""
    folder = Path(folder)
    paths = {
        "instructions": folder / "eval_set.json",
        "reference_outputs": folder / "reference_outputs.json",
        "difficulty": folder / "instruction_difficulty.csv",
    }
    atomic_write_text(
        paths["instructions"],
        json.dumps([{"instruction": i, "dataset": d} for i, _, d in AE_ITEMS], indent=1),
    )
    atomic_write_text(
        paths["reference_outputs"],
        json.dumps(
            [
                {"instruction": i, "output": o, "generator": "reference", "dataset": d}
                for i, o, d in AE_ITEMS
            ],
            indent=1,
        ),
    )
    paths["difficulty"].parent.mkdir(parents=True, exist_ok=True)
    with open(paths["difficulty"], "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["", "instruction_difficulty"])
        for i in range(len(AE_ITEMS)):
            writer.writerow([i, round(-1.0 + 0.4 * i, 2)])
    return paths
