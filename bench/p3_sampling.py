"""P3: sampling K=4 responses per prompt. Our sampler (prompts batched, each encoded once and
expanded K-fold inside `generate`) against a naive loop of single-sequence `generate` calls, on
the same prompts with the same settings, side by side. Target: >= 3x the naive tokens/s.
Checks that both produce K non-empty-or-ended responses per prompt.

    python -m bench.p3_sampling [--model embedded|tiny] [--prompts 8] [--max-new-tokens 32]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from align.data.quickstart import problems
from align.generate.hf import generate
from align.model.loading import load_model, load_tokenizer
from bench.common import banner, model_path

K = 4


def count_tokens(tokenizer, texts: list[list[str]]) -> int:
    return sum(
        len(tokenizer(t, add_special_tokens=False).input_ids) + 1 for ts in texts for t in ts
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", choices=["embedded", "tiny"])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--batch-prompts", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    banner(
        f"P3 sampling K={K}, {args.model}, {args.prompts} prompts, "
        f"{args.max_new_tokens} new tokens, {args.dtype}"
    )
    path = model_path(args.model)
    model, tok = load_model(path, args.dtype, device="cpu"), load_tokenizer(path)
    prompts = [p["prompt"] for p in problems("heldout")[: args.prompts]]
    kw = {"max_new_tokens": args.max_new_tokens, "temperature": 0.7}

    start = time.perf_counter()
    ours = []
    for i in range(0, len(prompts), args.batch_prompts):
        texts, _ = generate(model, tok, prompts[i : i + args.batch_prompts], k=K, seed=i, **kw)
        ours.extend(texts)
    t_ours = time.perf_counter() - start

    start = time.perf_counter()
    naive = []
    for i, prompt in enumerate(prompts):
        naive.append(
            [generate(model, tok, [prompt], k=1, seed=i * K + j, **kw)[0][0][0] for j in range(K)]
        )
    t_naive = time.perf_counter() - start

    if any(len(t) != K for t in ours + naive):
        print("a prompt did not get K responses", file=sys.stderr)
        return 1
    r_ours, r_naive = count_tokens(tok, ours) / t_ours, count_tokens(tok, naive) / t_naive
    print(f"ours  (batched, K-fold shared prompt) {t_ours:7.2f} s {r_ours:7.1f} tok/s")
    print(f"naive (one sequence per generate)     {t_naive:7.2f} s {r_naive:7.1f} tok/s")
    print(
        f"P3 ratio {r_ours / r_naive:.2f}x (target >= 3) "
        f"{'met' if r_ours / r_naive >= 3 else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
    sys.exit(main())
