"""UPO against plain DPO on the same data and steps: held-out auxiliary reward and win rate.

Reads two `evaluate` folders (answers-trained.jsonl + metrics.json of each run) and prints
(and writes as JSON with --out) the mean auxiliary reward of each policy's greedy held-out
answers, and the preference win rate of UPO over DPO: per prompt, the answer with the higher
preference reward (the task's reward, the one that labelled the training pairs) wins, ties
count 1/2. The auxiliary rewards are recomputed per answer from the pipeline's
`train.aux_rewards` (they must reproduce each run's metrics.json), so the UPO - DPO difference
gets a paired standard error. Standard errors treat prompts as independent.

Given several (UPO, DPO) pairs, one per training seed (`--set train.seed=S` on both runs), it
also prints each figure's mean over the pairs with its standard error across seeds, the noise
that matters when one run decides the comparison.

    python -m bench.upo_vs_dpo UPO_EVAL DPO_EVAL [UPO_EVAL DPO_EVAL ...] [--pipeline P]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from align.config import load_pipeline
from align.rewards.aux import combined_aux_rewards
from align.stages.evaluate import pairwise_wins


def _answers(folder: Path) -> dict[str, dict]:
    lines = (folder / "answers-trained.jsonl").read_text().splitlines()
    return {row["id"]: row for row in map(json.loads, lines)}


def _mean_se(xs: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean."""
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / max(len(xs) - 1, 1) / len(xs))


def compare(upo: Path, dpo: Path, pipeline: Path) -> dict:
    a, b = _answers(upo), _answers(dpo)
    ids = sorted(a.keys() & b.keys())
    specs = load_pipeline(pipeline).train.aux_rewards
    aux_a, _ = combined_aux_rewards(specs, [a[i]["response"] for i in ids])
    aux_b, _ = combined_aux_rewards(specs, [b[i]["response"] for i in ids])
    diff, diff_se = _mean_se([x - y for x, y in zip(aux_a, aux_b, strict=True)])
    wins = pairwise_wins([a[i]["reward"] for i in ids], [b[i]["reward"] for i in ids])
    rate, rate_se = _mean_se(wins)
    mu, md = (json.loads((f / "metrics.json").read_text()) for f in (upo, dpo))
    for aux, m, name in ((aux_a, mu, "upo"), (aux_b, md, "dpo")):
        if len(ids) != m["n_prompts"] or abs(sum(aux) / len(aux) - m["aux_reward/trained"]) > 1e-9:
            raise SystemExit(f"{name}: recomputed aux rewards do not match its metrics.json")
    return {
        "prompts": len(ids),
        "aux_reward/upo": mu["aux_reward/trained"],
        "aux_reward/dpo": md["aux_reward/trained"],
        "aux_reward/initial": md["aux_reward/initial"],
        "aux_reward/upo_minus_dpo": diff,
        "aux_reward/upo_minus_dpo_stderr": diff_se,
        "pref_reward/upo": mu["reward/trained"],
        "pref_reward/dpo": md["reward/trained"],
        "win_rate/upo_vs_dpo": rate,
        "win_rate/stderr": rate_se,
        "ties": sum(w == 0.5 for w in wins),
    }


def across_seeds(runs: list[dict]) -> dict:
    """Mean over the pairs and standard error across them of each per-pair figure."""
    keys = (
        "aux_reward/upo",
        "aux_reward/dpo",
        "aux_reward/upo_minus_dpo",
        "pref_reward/upo",
        "pref_reward/dpo",
        "win_rate/upo_vs_dpo",
    )
    out: dict = {"seeds": len(runs)}
    for key in keys:
        out[key], out[f"{key}_stderr"] = _mean_se([r[key] for r in runs])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "folders", type=Path, nargs="+", help="evaluate folders: UPO, DPO (then more pairs)"
    )
    parser.add_argument(
        "--pipeline",
        type=Path,
        default=Path("pipelines/upo-quickstart.yaml"),
        help="the pipeline whose train.aux_rewards both runs used",
    )
    parser.add_argument("--out", type=Path, help="also write the figures here (JSON)")
    args = parser.parse_args()
    if len(args.folders) % 2:
        parser.error("give evaluate folders in (UPO, DPO) pairs")
    pairs = list(zip(args.folders[::2], args.folders[1::2], strict=True))
    runs = [compare(upo, dpo, args.pipeline) for upo, dpo in pairs]
    result = runs[0] if len(runs) == 1 else {"pairs": runs, "across_seeds": across_seeds(runs)}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
