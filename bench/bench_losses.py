"""Cost of each registered loss, forward + backward on [B, K] log-probs, measured side by side.

Prints microseconds per call and the ratio to DPO on the same rows; exits non-zero if a loss
or its gradient is not finite (a fast wrong answer never counts). The point it makes: the
K-wise losses cost about what the pairwise ones do, and all are negligible next to one model
forward (milliseconds to seconds), so K-wise training is priced by the forward passes only.

    python -m bench.bench_losses [--batch 64] [--k 4] [--repeats 200]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from align.config.losses import LOSS_MODELS, loss_config
from align.train.losses import kwise_loss


def time_once(
    name: str, policy: torch.Tensor, ref: torch.Tensor, rewards: torch.Tensor
) -> tuple[float, bool]:
    """Seconds of one forward + backward, and whether the loss and its gradient are finite."""
    params, p = loss_config(name), policy.clone().requires_grad_(True)
    start = time.perf_counter()
    out = kwise_loss(params, p, ref, rewards, n_tokens=torch.full_like(p, 20.0))
    losses, counts = out.losses, out.counts
    (losses.sum() / counts.sum().clamp_min(1)).backward()
    seconds = time.perf_counter() - start
    return seconds, bool(torch.isfinite(losses).all() and torch.isfinite(p.grad).all())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.manual_seed(0)
    policy = -50 + 5 * torch.randn(args.batch, args.k)
    ref = policy + torch.randn(args.batch, args.k)
    rewards = torch.randint(1, 11, (args.batch, args.k)).float()
    offline = [name for name, model in LOSS_MODELS.items() if model.kind in ("kwise", "pair")]
    times: dict[str, list[float]] = {name: [] for name in offline}
    finite = dict.fromkeys(offline, True)
    for _ in range(args.repeats):  # round robin: load changes hit every loss alike
        for name in offline:
            seconds, ok = time_once(name, policy, ref, rewards)
            times[name].append(seconds)
            finite[name] &= ok
    results = {name: (sorted(t)[len(t) // 2], finite[name]) for name, t in times.items()}
    base = results["dpo"][0]
    width = max(map(len, offline))
    print(f"loss forward+backward on [{args.batch}, {args.k}] (median of {args.repeats})")
    print(f"{'loss':<{width}} {'us/call':>9} {'vs dpo':>7}")
    for name, (seconds, _) in results.items():
        print(f"{name:<{width}} {seconds * 1e6:9.1f} {seconds / base:7.2f}x")
    bad = [name for name, (_, ok) in results.items() if not ok]
    if bad:
        print(f"non-finite loss or gradient: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
