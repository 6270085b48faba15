"""The quickstart task: seeded arithmetic word problems with exact answers.

`write_quickstart_data(root)` reproduces byte for byte the files that `data.dvc` records, so a
fresh clone without a DVC remote gets the data offline (`dvc status` verifies it).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

from align.core.io import atomic_write_text
from align.data.judge_examples import write_alpacaeval_example, write_mtbench_example

INSTRUCTION = "Answer with only the number."
NAMES = ["Tom", "Ana", "Li", "Sara", "Omar", "Mia", "Ravi", "Eva", "Ken", "Zoe", "Ben", "Ida"]
ITEMS = ["apples", "books", "coins", "pencils", "stickers", "marbles", "cards", "eggs", "shells"]
# (template, operation): each template reads naturally with any name and item.
TEMPLATES = [
    ("{n} has {a} {item} and gets {b} more. How many {item} does {n} have now?", "+"),
    ("{n} had {a} {item} and gave away {b}. How many {item} are left?", "-"),
    ("There are {a} {item} in a box and {b} in a bag. How many {item} are there in all?", "+"),
    ("{n} buys {a} bags with {b} {item} in each bag. How many {item} is that?", "*"),
    ("What is {a} plus {b}?", "+"),
    ("What is {a} minus {b}?", "-"),
    ("What is {a} times {b}?", "*"),
]
SPLITS = {"train": (0, 192), "heldout": (1, 48)}  # split -> (seed, number of problems)


def _problem(rng: random.Random, index: int, split: str) -> dict:
    template, op = rng.choice(TEMPLATES)
    if op == "*":
        a, b = rng.randint(2, 9), rng.randint(2, 9)
    else:
        a, b = rng.randint(2, 30), rng.randint(2, 30)
    if op == "-" and b > a:
        a, b = b, a
    answer = {"+": a + b, "-": a - b, "*": a * b}[op]
    question = template.format(n=rng.choice(NAMES), item=rng.choice(ITEMS), a=a, b=b)
    return {
        "id": f"{split}-{index:04d}",
        "prompt": [{"role": "user", "content": f"{question} {INSTRUCTION}"}],
        "answer": answer,
    }


def problems(split: str) -> list[dict]:
    """The seeded problems of one split, in TRL's conversational prompt format."""
    seed, n = SPLITS[split]
    rng = random.Random(seed)
    return [_problem(rng, i, split) for i in range(n)]


def ultrafeedback_like(n: int = 6) -> list[dict]:
    """A few records in the column layout of the NCA reward data (prompt, A0..A3 as chat lists,
    A{i}_score), for `--smoke` runs of the flagship recipe. A0 is the top-scored response."""
    rng = random.Random(2)
    rows = []
    for i in range(n):
        p = _problem(rng, i, "uf")
        question, answer = p["prompt"][0]["content"], p["answer"]
        replies = [
            (f"The answer is {answer}.", 9.0),
            (f"{answer}", 8.5),
            (f"I think it is {answer + 1}.", 3.0),
            ("I am not sure.", 1.5),
        ]
        row: dict = {"prompt": question, "prompt_id": f"uf-{i:04d}"}
        for k, (text, score) in enumerate(replies):
            row[f"A{k}"] = [
                {"role": "user", "content": question},
                {"role": "assistant", "content": text},
            ]
            row[f"A{k}_score"] = score
        rows.append(row)
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    if not path.exists() or path.read_text() != text:
        atomic_write_text(path, text)
    return path


def write_quickstart_data(root: Path) -> list[Path]:
    """Write everything under `root` that data.dvc records (deterministic bytes): the
    quickstart splits, the UltraFeedback-layout smoke file and small MT-Bench / AlpacaEval
    files in their original layouts (our own text). Returns the paths."""
    paths = [
        _write_jsonl(root / "quickstart" / f"{split}.jsonl", problems(split)) for split in SPLITS
    ]
    paths.append(_write_jsonl(root / "smoke" / "ultrafeedback_reward.jsonl", ultrafeedback_like()))
    paths += write_mtbench_example(root / "mtbench").values()
    paths += write_alpacaeval_example(root / "alpacaeval").values()
    return paths


def corpus_lines() -> Iterator[str]:
    """Text the tiny test tokenizer is trained on: every template, name, item and digit."""
    for template, _ in TEMPLATES:
        for name in NAMES:
            yield template.format(n=name, item=" ".join(ITEMS), a=123, b=4567) + " " + INSTRUCTION
    yield "0 1 2 3 4 5 6 7 8 9 10 The answer is user assistant system"


def main() -> None:
    for path in write_quickstart_data(Path("data")):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
