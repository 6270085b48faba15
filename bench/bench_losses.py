"""Cost of each registered loss, forward + backward on [B, K] log-probs, measured side by side.

Prints microseconds per call and the ratio to DPO on the same rows; exits non-zero if a loss
or its gradient is not finite (a fast wrong answer never counts). The point it makes: the
K-wise losses cost about what the pairwise ones do, and all are negligible next to one model
forward (milliseconds to seconds), so K-wise training is priced by the forward passes only.

    python bench/bench_losses.py [--batch 64] [--k 4] [--repeats 200]
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from align.losses import LOSSES, kwise_loss


def time_loss(
    name: str, policy: torch.Tensor, ref: torch.Tensor, rewards: torch.Tensor, repeats: int
) -> tuple[float, bool]:
    """Median seconds of one forward + backward, and whether loss and gradient were finite."""
    times, finite = [], True
    for _ in range(repeats):
        p = policy.clone().requires_grad_(True)
        start = time.perf_counter()
        losses, counts = kwise_loss(name, p, ref, rewards, n_tokens=torch.full_like(p, 20.0))
        (losses.sum() / counts.sum().clamp_min(1)).backward()
        times.append(time.perf_counter() - start)
        finite &= bool(torch.isfinite(losses).all() and torch.isfinite(p.grad).all())
    times.sort()
    return times[len(times) // 2], finite


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
    results = {name: time_loss(name, policy, ref, rewards, args.repeats) for name in LOSSES}
    base = results["dpo"][0]
    print(f"loss forward+backward on [{args.batch}, {args.k}] (median of {args.repeats})")
    print(f"{'loss':<10} {'us/call':>9} {'vs dpo':>7}")
    for name, (seconds, _) in results.items():
        print(f"{name:<10} {seconds * 1e6:9.1f} {seconds / base:7.2f}x")
    bad = [name for name, (_, ok) in results.items() if not ok]
    if bad:
        print(f"non-finite loss or gradient: {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
