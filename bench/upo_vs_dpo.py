"""UPO against plain DPO on the same data and steps: held-out auxiliary reward and win rate.

Reads two `evaluate` folders (answers-trained.jsonl + metrics.json of each run) and prints
(and writes as JSON with --out) the mean auxiliary reward of each policy's greedy held-out
answers, and the preference win rate of UPO over DPO: per prompt, the answer with the higher
preference reward (the task's reward, the one that labelled the training pairs) wins, ties
count 1/2. The standard error treats prompts as independent.

    python -m bench.upo_vs_dpo runs/compare/upo runs/compare/dpo
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def _answers(folder: Path) -> dict[str, dict]:
    lines = (folder / "answers-trained.jsonl").read_text().splitlines()
    return {row["id"]: row for row in map(json.loads, lines)}


def compare(upo: Path, dpo: Path) -> dict:
    a, b = _answers(upo), _answers(dpo)
    ids = sorted(a.keys() & b.keys())
    wins = [
        1.0 if a[i]["reward"] > b[i]["reward"] else 0.5 if a[i]["reward"] == b[i]["reward"] else 0.0
        for i in ids
    ]
    rate = sum(wins) / len(wins)
    sd = math.sqrt(sum((w - rate) ** 2 for w in wins) / max(len(wins) - 1, 1))
    mu, md = (json.loads((f / "metrics.json").read_text()) for f in (upo, dpo))
    return {
        "prompts": len(ids),
        "aux_reward/upo": mu["aux_reward/trained"],
        "aux_reward/dpo": md["aux_reward/trained"],
        "aux_reward/initial": md["aux_reward/initial"],
        "pref_reward/upo": mu["reward/trained"],
        "pref_reward/dpo": md["reward/trained"],
        "win_rate/upo_vs_dpo": rate,
        "win_rate/stderr": sd / math.sqrt(len(wins)),
        "ties": sum(w == 0.5 for w in wins),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("upo", type=Path, help="evaluate folder of the UPO run")
    parser.add_argument("dpo", type=Path, help="evaluate folder of the DPO run")
    parser.add_argument("--out", type=Path, help="also write the figures here (JSON)")
    args = parser.parse_args()
    result = compare(args.upo, args.dpo)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
