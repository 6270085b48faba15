"""The listwise losses (plackett_luce, lipo): hand values, the K=2 reduction to DPO, ties,
ragged K, and the entry point's row counting.

Notation: z = beta * (policy - ref); sigma(ln 3) = 3/4, sigma(-ln 3) = 1/4.
"""

from __future__ import annotations

import math

import pytest
import torch

from align.config.losses import loss_config
from align.train.losses import dpo_loss, kwise_loss, lipo_loss, plackett_luce_loss

LN2, LN3 = math.log(2.0), math.log(3.0)
LISTWISE = [plackett_luce_loss, lipo_loss]


def f64(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


def close(actual: torch.Tensor, expected: list[float] | torch.Tensor, tol: float = 1e-9) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=tol, rtol=tol)


def test_plackett_luce_hand_value() -> None:
    # rewards rank response 0 > 1 > 2; z = [ln 3, 0, ln 2].
    # position 1: e^z0 / (e^z0 + e^z1 + e^z2) = 3 / 6;  position 2: e^z1 / (e^z1 + e^z2) = 1 / 3
    policy = f64([LN3, 0.0, LN2])
    loss = plackett_luce_loss(policy, torch.zeros_like(policy), f64([3.0, 2.0, 1.0]), beta=1.0)
    close(loss, [-math.log(3 / 6) - math.log(1 / 3)])


def test_plackett_luce_ties_are_unordered() -> None:
    # rewards [2, 2, 1]: responses 0 and 1 each beat response 2 only, not each other:
    # -log(3 / (3 + 2)) - log(1 / (1 + 2)) with z = [ln 3, 0, ln 2]
    policy = f64([LN3, 0.0, LN2], [LN3, 0.0, LN2])
    rewards = f64([2.0, 2.0, 1.0], [5.0, 5.0, 5.0])
    loss = plackett_luce_loss(policy, torch.zeros_like(policy), rewards, beta=1.0)
    close(loss, [-math.log(3 / 5) - math.log(1 / 3), 0.0])


def test_lipo_hand_value() -> None:
    # rewards [2, 1, 0]; z = [0, ln 3, 0]: ranks by z are 1 -> response 1, then the z tie of
    # responses 0 and 2 broken by reward: 0 -> rank 2, 2 -> rank 3. 1/log2(1 + rank):
    d = {0: 1 / math.log2(3), 1: 1.0, 2: 1 / math.log2(4)}
    g = {0: 2.0**2, 1: 2.0**1, 2: 2.0**0}  # 2^r (the -1 of the gain cancels in differences)
    pairs = {(0, 1): -LN3, (0, 2): 0.0, (1, 2): LN3}  # z_i - z_j
    delta = {p: abs(g[p[0]] - g[p[1]]) * abs(d[p[0]] - d[p[1]]) for p in pairs}
    terms = {p: -math.log(1 / (1 + math.exp(-pairs[p]))) for p in pairs}
    raw = sum(delta[p] * terms[p] for p in pairs)
    policy = f64([0.0, LN3, 0.0])
    ref, rewards = torch.zeros_like(policy), f64([2.0, 1.0, 0.0])
    close(lipo_loss(policy, ref, rewards, beta=1.0, normalize=False), [raw])
    normalized = raw / sum(delta.values())
    close(lipo_loss(policy, ref, rewards, beta=1.0), [normalized])


def test_lipo_normalized_weights_ignore_the_reward_scale_and_shift() -> None:
    policy = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = torch.zeros_like(policy)
    rewards = torch.rand(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    base = lipo_loss(policy, ref, rewards, beta=0.5)
    close(lipo_loss(policy, ref, rewards + 1000.0, beta=0.5), base)
    raw = lipo_loss(policy, ref, rewards, beta=0.5, normalize=False)
    close(lipo_loss(policy, ref, rewards + 3.0, beta=0.5, normalize=False), raw * 8)


@pytest.mark.parametrize("fn", LISTWISE)
def test_k2_is_dpo(fn) -> None:
    gen = torch.Generator().manual_seed(2)
    policy = torch.randn(6, 2, dtype=torch.float64, generator=gen) * 5
    ref = torch.randn(6, 2, dtype=torch.float64, generator=gen) * 5
    rewards = f64(*[[1.0, 0.0]] * 3, *[[0.0, 3.0]] * 3)
    loss = fn(policy, ref, rewards, beta=0.3)
    win = rewards.argmax(-1, keepdim=True)
    pick = lambda t, i: t.gather(-1, i).squeeze(-1)  # noqa: E731
    expected = dpo_loss(
        pick(policy, win), pick(policy, 1 - win), pick(ref, win), pick(ref, 1 - win), beta=0.3
    )
    close(loss, expected)


@pytest.mark.parametrize("fn", LISTWISE)
def test_permuting_responses_changes_nothing(fn) -> None:
    gen = torch.Generator().manual_seed(3)
    policy = torch.randn(4, 5, dtype=torch.float64, generator=gen)
    ref = torch.randn(4, 5, dtype=torch.float64, generator=gen)
    rewards = torch.randint(0, 4, (4, 5), generator=gen).double()  # ties on purpose
    perm = torch.randperm(5, generator=gen)
    close(
        fn(policy[:, perm], ref[:, perm], rewards[:, perm], beta=0.2),
        fn(policy, ref, rewards, beta=0.2),
    )


@pytest.mark.parametrize("fn", LISTWISE)
def test_ragged_k_equals_unpadded_rows(fn) -> None:
    gen = torch.Generator().manual_seed(4)
    policy = torch.randn(3, 4, dtype=torch.float64, generator=gen)
    ref = torch.randn(3, 4, dtype=torch.float64, generator=gen)
    rewards = f64([3.0, 1.0, 4.0, 1.5], [2.0, 7.0, 1.0, 0.0], [5.0, 9.0, 0.0, 0.0])
    lengths = [4, 3, 2]
    mask = torch.arange(4)[None, :] < torch.tensor(lengths)[:, None]
    pad = ~mask
    policy_padded = policy.masked_fill(pad, float("nan")).requires_grad_(True)
    loss = fn(
        policy_padded,
        ref.masked_fill(pad, -1e4),
        rewards.masked_fill(pad, 1e6),
        beta=0.1,
        mask=mask,
    )
    for row, k in enumerate(lengths):
        sl = slice(row, row + 1), slice(0, k)
        close(loss[row : row + 1], fn(policy[sl], ref[sl], rewards[sl], beta=0.1))
    loss.sum().backward()
    assert torch.isfinite(policy_padded.grad).all()
    assert (policy_padded.grad[pad] == 0).all()


@pytest.mark.parametrize("fn", LISTWISE)
def test_gradient_raises_the_best_and_lowers_the_worst(fn) -> None:
    policy = torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)
    fn(
        policy, torch.zeros(1, 4, dtype=torch.float64), f64([1.0, 4.0, 2.0, 3.0]), beta=0.1
    ).sum().backward()
    grad = policy.grad[0]
    assert grad[1] < 0 < grad[0]  # descent raises the best response, lowers the worst
    close(grad.sum(), torch.tensor(0.0, dtype=torch.float64), tol=1e-12)  # shift invariant


@pytest.mark.parametrize("fn", LISTWISE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extremes_are_finite(fn, dtype) -> None:
    policy = torch.tensor([[1e4, -1e4, 0.0, 3.0], [-1e4, 1e4, 1e4, -1e4]], dtype=dtype)
    policy.requires_grad_(True)
    rewards = torch.tensor([[1e3, -1e3, 0.0, 1e3], [-1e3, 1e3, -1e3, 1e3]], dtype=dtype)
    loss = fn(policy, torch.zeros_like(policy), rewards, beta=1.0)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(policy.grad).all()


@pytest.mark.parametrize("name", ["plackett_luce", "lipo"])
def test_entry_point_counts_only_rows_with_an_order(name: str) -> None:
    policy = torch.zeros(3, 3, dtype=torch.float64)
    rewards = f64([1.0, 2.0, 3.0], [2.0, 2.0, 2.0], [4.0, 1.0, 0.0])
    mask = torch.tensor([[True, True, True], [True, True, True], [True, False, False]])
    out = kwise_loss(loss_config(name), policy, policy.clone(), rewards, mask)
    assert out.counts.tolist() == [True, False, False]
    assert out.losses[1] == 0 and out.losses[2] == 0
    close(out.losses[:1], [LN2 + LN3] if name == "plackett_luce" else [LN2])
