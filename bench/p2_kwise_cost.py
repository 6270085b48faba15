"""P2: the cost of K-wise training. One NCA step over K=4 responses per prompt against one TRL
DPO step over the 3 best-vs-rest pairs of the same prompts (the usual way to feed K responses
to a pairwise trainer). Target: our time <= 0.6 x TRL's. Each side runs in its own process.

    python -m bench.p2_kwise_cost [--model embedded|tiny] [--prompts 2] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import banner, model_path, words_text

K = 4


def rows(path: Path, n: int, prompt_len: int, response_len: int) -> list[dict]:
    """n prompts with K responses each; reward = response index reversed (0 is best)."""
    from align.model.loading import load_tokenizer

    tok, rng = load_tokenizer(path), random.Random(0)
    return [
        {
            "prompt": words_text(tok, prompt_len, rng),
            "responses": [words_text(tok, response_len - 1, rng) for _ in range(K)],
        }
        for _ in range(n)
    ]


def run_ours(path: Path, data: list[dict], args: argparse.Namespace, out: Path) -> float:
    from align.model.loading import load_tokenizer
    from bench.ours import encode_like_trl, our_trainer

    tok = load_tokenizer(path)
    groups = []
    for r in data:  # tokenise every response exactly as for the pairs
        prompt, _ = encode_like_trl(tok, {"prompt": r["prompt"], "chosen": "", "rejected": ""})
        groups.append(
            (
                prompt,
                [
                    encode_like_trl(tok, {"prompt": r["prompt"], "chosen": y, "rejected": y})[1][0]
                    for y in r["responses"]
                ],
            )
        )
    rewards = [[float(K - i) for i in range(K)] for _ in data]
    trainer = our_trainer(
        path,
        [],
        args.prompts,
        out,
        precision="fp32",
        share_prompt=True,
        max_steps=args.steps + 1,
        loss={"name": "nca", "beta": 0.1},
        groups=groups,
        rewards=rewards,
    )
    trainer.train_step()
    trainer.step += 1
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - start)
        trainer.step += 1
    return sorted(times)[len(times) // 2]


def run_trl(path: Path, data: list[dict], args: argparse.Namespace, out: Path) -> float:
    from bench.trl_side import trl_run

    pairs = [
        {"prompt": r["prompt"], "chosen": r["responses"][0], "rejected": y}
        for r in data
        for y in r["responses"][1:]
    ]
    seconds, _ = trl_run(
        path,
        pairs * (args.steps + 1),
        (K - 1) * args.prompts,
        args.steps,
        out,
        precompute=True,
        bf16=False,
    )
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", choices=["embedded", "tiny"])
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--response-len", type=int, default=192)
    parser.add_argument("--one", choices=["ours", "trl"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    path = model_path(args.model)
    if args.one:
        data = rows(path, args.prompts, args.prompt_len, args.response_len)
        with tempfile.TemporaryDirectory() as tmp:
            fn = run_ours if args.one == "ours" else run_trl
            print("RESULT " + json.dumps(fn(path, data, args, Path(tmp))), flush=True)
        return 0
    banner(
        f"P2 NCA over K={K} vs TRL DPO over {K - 1} pairs, {args.model}, "
        f"{args.prompts} prompts/step, fp32, precomputed reference"
    )
    seconds = {}
    for side in ("trl", "ours"):
        cmd = [
            sys.executable,
            "-m",
            "bench.p2_kwise_cost",
            "--one",
            side,
            *(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "one"),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            print(f"{side}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        seconds[side] = json.loads(line.removeprefix("RESULT "))
        print(f"{side:<5} {seconds[side]:7.2f} s/step", flush=True)
    ratio = seconds["ours"] / seconds["trl"]
    print(
        f"P2 NCA K={K} step / TRL DPO {K - 1}-pair step: {ratio:.2f}x (target <= 0.6) "
        f"{'met' if ratio <= 0.6 else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
