"""P1 + P4 + P5: DPO training throughput and memory, ours vs TRL's DPOTrainer.

Same model, same rows (prompt, chosen, rejected of fixed token lengths), same batch, AdamW,
same learning rate; each setting runs in its own process (a clean accelerate state and its own
peak RSS), `--warmup` untimed steps and then `--steps` timed optimizer steps. Prints tokens/s per
setting, the ratios the issue sets targets for, our achieved 6 * params * tokens FLOP/s over
this CPU's matmul peak measured in the same run (P4), and peak RSS (P5).

P4 is printed two ways. Side by side: each of our timed steps is followed at once by a peak
measurement (the best of 20 2048^2 matmuls in that precision, in the same process), and P4 is the
median over the steps of step FLOP/s / that peak, so a busy moment slows both sides of a ratio.
Against the run's best: median step FLOP/s over the best of 20 matmuls before and after all
settings (the higher), which any contention during the settings counts against us.

Our settings run as every align stage does, with glibc's freed large blocks kept on the heap
(align/runtime.py); TRL's run with glibc's defaults, plus one TRL setting with the kept heap and
one of ours without it, to show what that setting alone is worth to each.

Tokens: P1 counts the nominal batch * 2 * (prompt + response) tokens of a pair batch for every
setting (what TRL processes, so the ratios compare the same work). P4 counts the tokens a
setting actually runs through the model: with a shared prompt that is batch * (prompt +
2 * response), since each prompt goes through the model once. Exits non-zero if a
setting disagrees with TRL on the first step's chosen log-probs (a fast wrong answer never
counts).

    python -m bench.p1_train_throughput [--model embedded|tiny] [--steps 3] [--warmup 2] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from align.core.runtime import keep_freed_memory
from bench.common import banner, matmul_peak, model_path, pair_rows

SETTINGS = {  # name: (side, options); `heap`: glibc's default or align's kept heap (runtime.py)
    "TRL defaults fp32": ("trl", {"precompute": False, "bf16": False, "defaults": True}),
    "TRL precomputed ref fp32": ("trl", {"precompute": True, "bf16": False}),
    "TRL precomputed ref bf16": ("trl", {"precompute": True, "bf16": True}),
    "TRL precomputed bf16, kept heap": ("trl", {"precompute": True, "bf16": True, "heap": "kept"}),
    "ours fp32": ("ours", {"precision": "fp32", "share_prompt": False}),
    "ours fp32 + shared prompt": ("ours", {"precision": "fp32", "share_prompt": True}),
    "ours bf16 + shared prompt": ("ours", {"precision": "bf16", "share_prompt": True}),
    "ours bf16 weights + shared": ("ours", {"precision": "bf16_weights", "share_prompt": True}),
    "ours bf16 w., glibc heap": (
        "ours",
        {"precision": "bf16_weights", "share_prompt": True, "heap": "default"},
    ),
    "ours bf16 w. + matmul attn": (
        "ours",
        {"precision": "bf16_weights", "share_prompt": True, "attention": "matmul"},
    ),
}
TARGETS = [  # (label, ours, TRL, target ratio)
    ("ours fp32 vs TRL defaults fp32", "ours fp32 + shared prompt", "TRL defaults fp32", 1.5),
    ("ours fp32 vs TRL fastest fp32", "ours fp32 + shared prompt", "TRL precomputed ref fp32", 1.2),
    ("ours bf16 vs TRL fastest bf16", "ours bf16 + shared prompt", "TRL precomputed ref bf16", 1.2),
    ("our best vs TRL defaults fp32", "best", "TRL defaults fp32", 3.0),
]


def one(name: str, args: argparse.Namespace) -> dict:
    """Run one setting in this process; returns seconds/step, first logps/chosen, peak RSS."""
    side, opts = SETTINGS[name]
    opts = dict(opts)
    if opts.pop("heap", "kept" if side == "ours" else "default") == "kept":
        keep_freed_memory()  # what every align stage does first
    path = model_path(args.model)
    n_rows = args.batch * (args.warmup + args.steps)
    rows = pair_rows(path, n_rows, args.prompt_len, args.response_len)
    with tempfile.TemporaryDirectory() as tmp:
        if side == "trl":
            from bench.trl_side import trl_run

            seconds, logps = trl_run(
                path, rows, args.batch, args.steps, Path(tmp), warmup=args.warmup, **opts
            )
        else:
            times, peaks, logps = our_run(path, rows, args, Path(tmp), **opts)
            seconds = statistics.median(times)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {"seconds": seconds, "logps": logps, "peak_mb": peak_mb}
    if side == "ours":
        result.update(times=times, peaks=peaks)
    return result


def our_run(
    path: Path,
    rows: list[dict],
    args: argparse.Namespace,
    out: Path,
    *,
    precision: str,
    share_prompt: bool,
    attention: str = "sdpa",
) -> tuple[list[float], list[float], float]:
    """Seconds of each timed step, the matmul FLOP/s measured right after each, and the first
    step's mean chosen log-prob."""
    from bench.ours import our_trainer

    trainer = our_trainer(
        path,
        rows,
        args.batch,
        out,
        precision=precision,
        share_prompt=share_prompt,
        attention=attention,
        max_steps=args.warmup + args.steps,
    )

    def step() -> tuple[dict, float]:
        start = time.perf_counter()
        row = trainer.train_step()
        trainer.step += 1
        return row, time.perf_counter() - start

    first, _ = step()
    for _ in range(args.warmup - 1):
        step()
    dtype = torch.bfloat16 if "bf16" in precision else torch.float32
    times, peaks = [], []
    for _ in range(args.steps):
        times.append(step()[1])
        peaks.append(matmul_peak(dtype))  # right after the step it is compared with
    return times, peaks, first["logps/chosen"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", choices=["embedded", "tiny"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 1)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--response-len", type=int, default=192)
    parser.add_argument("--one", choices=list(SETTINGS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.one, args)), flush=True)
        return 0

    banner(
        f"P1/P4/P5 DPO train step, {args.model}, batch {args.batch}, "
        f"{args.prompt_len} + 2 x {args.response_len} tokens"
    )
    tokens = args.batch * 2 * (args.prompt_len + args.response_len)
    shared_tokens = args.batch * (args.prompt_len + 2 * args.response_len)
    peaks = _peaks()
    res: dict[str, dict] = {}
    for name in SETTINGS:
        cmd = [
            sys.executable,
            "-m",
            "bench.p1_train_throughput",
            "--one",
            name,
            *(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "one"),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            return 1
        res[name] = json.loads(line.removeprefix("RESULT "))
        r = res[name]
        print(
            f"{name:<27} {r['seconds']:7.2f} s/step {tokens / r['seconds']:7.1f} tok/s  "
            f"peak RSS {r['peak_mb']:6.0f} MB  first logps/chosen {r['logps']:.3f}",
            flush=True,
        )

    tok_s = {name: tokens / r["seconds"] for name, r in res.items()}
    tok_s["best"] = max(v for k, v in tok_s.items() if k.startswith("ours"))
    print()
    for label, ours, trl, target in TARGETS:
        ratio = tok_s[ours] / tok_s[trl]
        print(
            f"P1 {label:<33} {ratio:5.2f}x (target >= {target}) "
            f"{'met' if ratio >= target else 'NOT met'}"
        )
    for ours, trl in (
        ("ours bf16 w. + matmul attn", "TRL precomputed bf16, kept heap"),
        ("ours bf16 weights + shared", "ours bf16 w., glibc heap"),
    ):
        print(f"   context: {ours} vs {trl} {tok_s[ours] / tok_s[trl]:5.2f}x")
    # the peak again after the settings, the higher of the two: a busy moment at either end
    # would otherwise inflate P4
    after = _peaks()
    peaks = {k: max(v, after[k]) for k, v in peaks.items()}
    n_params = _n_params(model_path(args.model))
    for name, (side, opts) in SETTINGS.items():
        if side != "ours":
            continue
        processed = shared_tokens if opts["share_prompt"] else tokens
        precision = "bf16" if "bf16" in opts["precision"] else "fp32"
        flops = 6 * n_params * processed
        achieved = flops / res[name]["seconds"]
        side_by_side = statistics.median(
            flops / t / p for t, p in zip(res[name]["times"], res[name]["peaks"], strict=True)
        )
        print(
            f"P4 {name:<27} {side_by_side:5.1%} side by side (median of {args.steps} steps over "
            f"the {precision} peak measured after each: "
            f"{statistics.median(res[name]['peaks']) / 1e9:.0f} GFLOP/s); {achieved / 1e9:6.1f} "
            f"GFLOP/s = {achieved / peaks[precision]:5.1%} of the run's best "
            f"{peaks[precision] / 1e9:.0f} GFLOP/s ({processed} tokens/step; target >= 60 %)"
        )
    for ours, trl in (
        ("ours fp32 + shared prompt", "TRL precomputed ref fp32"),
        ("ours bf16 + shared prompt", "TRL precomputed ref bf16"),
        ("ours bf16 w. + matmul attn", "TRL precomputed ref bf16"),
    ):
        print(f"P5 peak RSS {ours} / {trl}: {res[ours]['peak_mb'] / res[trl]['peak_mb']:.2f}x")

    reference = res["TRL defaults fp32"]["logps"]
    wrong = [n for n, r in res.items() if not math.isclose(r["logps"], reference, rel_tol=2e-2)]
    if wrong:
        print(
            f"first-step logps/chosen disagree with TRL ({reference:.3f}): {wrong}", file=sys.stderr
        )
        return 1
    return 0


def _peaks() -> dict[str, float]:
    """Measured matmul peak FLOP/s by precision."""
    return {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}


def _n_params(path: Path) -> int:
    from align.model.loading import load_model

    return sum(p.numel() for p in load_model(path, device="cpu").parameters())


if __name__ == "__main__":
    sys.exit(main())
