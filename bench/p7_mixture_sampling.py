"""P7: geometric-mixture sampling (policy and reference, beta on the reference). Our sampler,
which keeps a KV cache per model and feeds one new token through each per step, against a
cache-less mixture wrapper (both models re-read the whole prefix every step, as TRL's
`GeometricMixtureWrapper` does), on the same prompts, seeds and settings, side by side.
Target: >= 5x the cache-less tokens/s at 128 new tokens. The end-of-turn token is ignored so
every row runs the full length; in fp32 the two must draw identical tokens (bf16 rounds the
two forwards differently, so the bench prints how long the draws agree).

    python -m bench.p7_mixture_sampling [--model embedded|tiny] [--prompts 4] [--max-new-tokens 128]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from align.data.quickstart import problems
from align.generate.mixture import sample_mixture
from align.model.loading import load_model, load_tokenizer
from align.model.tokenize import encode_prompt
from bench.common import banner, model_path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", choices=["embedded", "tiny"])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--beta", type=float, default=0.125)
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    args = parser.parse_args()
    banner(
        f"P7 mixture sampling beta={args.beta}, {args.model}, {args.prompts} prompts, "
        f"{args.max_new_tokens} new tokens, {args.dtype}"
    )
    path = model_path(args.model)
    tok = load_tokenizer(path)
    # two distinct models, as in training: the reference and a perturbed "policy"
    ref, policy = (
        load_model(path, args.dtype, device="cpu"),
        load_model(path, args.dtype, device="cpu"),
    )
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01 * torch.randn_like(p) * p.abs().mean())
    prompts = [encode_prompt(tok, p["prompt"], 512) for p in problems("heldout")[: args.prompts]]

    def run(use_cache: bool) -> tuple[float, list[list[int]]]:
        start = time.perf_counter()
        out = sample_mixture(
            policy,
            ref,
            prompts,
            beta=args.beta,
            max_new_tokens=args.max_new_tokens,
            eos_id=-1,  # never ends: every row samples max_new_tokens
            pad_id=tok.pad_token_id,
            generators=[torch.Generator().manual_seed(i) for i in range(len(prompts))],
            temperature=0.7,
            use_cache=use_cache,
        )
        return time.perf_counter() - start, out.tokens

    run(True)  # warm-up
    t_ours, ours = run(True)
    t_plain, plain = run(False)
    n = sum(len(t) for t in ours)
    if ours != plain:
        # bf16 rounds the cached and the full-prefix forward differently, so a draw can flip
        # after many tokens; fp32 must agree exactly.
        same = [
            next((i for i, (a, b) in enumerate(zip(x, y, strict=False)) if a != b), len(x))
            for x, y in zip(ours, plain, strict=True)
        ]
        print(f"tokens agree for the first {min(same)}-{max(same)} of {args.max_new_tokens}")
        if args.dtype == "float32":
            print("cached and cache-less fp32 sampling drew different tokens", file=sys.stderr)
            return 1
    r_ours, r_plain = n / t_ours, n / t_plain
    print(f"ours      (KV cache per model)         {t_ours:7.2f} s {r_ours:8.1f} tok/s")
    print(f"cache-less mixture wrapper             {t_plain:7.2f} s {r_plain:8.1f} tok/s")
    ratio = r_ours / r_plain
    print(f"P7 ratio {ratio:.2f}x (target >= 5) {'met' if ratio >= 5 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    torch.set_num_threads(len(__import__("os").sched_getaffinity(0)))
    sys.exit(main())
