"""align.train.upo: expectile and actor terms by hand, the value head fit, the gradient paths."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from align.config.losses import UPOParams
from align.train.upo import ValueHead, expectile_loss, last_prompt_hidden, upo_aux_loss, upo_loss


def numpy_expectile(x: np.ndarray, tau: float) -> float:
    """The m solving tau * E[(x - m)+] = (1 - tau) * E[(m - x)+], by bisection."""
    lo, hi = float(x.min()), float(x.max())
    for _ in range(100):
        m = (lo + hi) / 2
        excess = tau * np.clip(x - m, 0, None).mean() - (1 - tau) * np.clip(m - x, 0, None).mean()
        lo, hi = (m, hi) if excess > 0 else (lo, m)
    return (lo + hi) / 2


def fit_value_head(head: ValueHead, inputs: torch.Tensor, rewards: torch.Tensor) -> None:
    # 300 tiny steps: one thread, since thread hand-offs cost more than the maths and a busy
    # machine turns them into seconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        optimiser = torch.optim.Adam(head.parameters(), lr=1e-2)
        for _ in range(300):
            loss = expectile_loss(rewards - head(inputs), tau=0.7).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    finally:
        torch.set_num_threads(threads)
    head.eval()


# ------------------------------------------------------------------------------- hand values


def test_expectile_loss_by_hand() -> None:
    # tau 0.7: u = 2 -> 0.7 * 4 = 2.8;  u = -2 -> 0.3 * 4 = 1.2;  u = 0 -> 0
    u = torch.tensor([2.0, -2.0, 0.0])
    torch.testing.assert_close(expectile_loss(u, tau=0.7), torch.tensor([2.8, 1.2, 0.0]))
    # tau 0.5 is half the squared error
    torch.testing.assert_close(expectile_loss(u, tau=0.5), 0.5 * u**2)
    with pytest.raises(ValueError, match="tau"):
        expectile_loss(u, tau=1.0)


def test_numpy_expectile_matches_bernoulli_closed_form() -> None:
    # Bernoulli(p): tau p (1 - m) = (1 - tau)(1 - p) m -> m = tau p / (tau p + (1 - tau)(1 - p));
    # p = 0.3, tau = 0.7 -> 0.21 / (0.21 + 0.21) = 0.5
    sample = np.array([1.0] * 3 + [0.0] * 7)
    assert abs(numpy_expectile(sample, 0.7) - 0.5) < 1e-9


def test_aux_loss_by_hand() -> None:
    # lam 1, R = [1, 0], V = [1, 1] -> weights [e^0, e^-1] = [1, 0.36787944]
    # mean log-probs [-2, -3] -> -w * l = [2, 3 e^-1] = [2, 1.10363832]
    loss = upo_aux_loss(
        torch.tensor([-2.0, -3.0]), torch.tensor([1.0, 0.0]), torch.ones(2), lam=1.0
    )
    torch.testing.assert_close(loss, torch.tensor([2.0, 3 * math.exp(-1)]))
    # lam 5, A = 1 -> e^5 = 148.41 clipped to 20 by max_weight
    args = torch.tensor([-0.5]), torch.tensor([1.0]), torch.tensor([0.0])
    torch.testing.assert_close(upo_aux_loss(*args, lam=5.0), torch.tensor([0.5 * math.exp(5)]))
    clipped = upo_aux_loss(*args, lam=5.0, max_weight=20.0)
    torch.testing.assert_close(clipped, torch.tensor([10.0]))


def test_upo_loss_warmup_and_total() -> None:
    # pref 0.4 (mean of [0.2, 0.6]); R = [1, 0], V = [0.5, 0.5], mean log-probs [-1, -2], lam 2.
    # actor  = mean(-e^{2*0.5} * -1, -e^{2*-0.5} * -2) = (e + 2/e) / 2
    # value  = mean(0.7 * 0.25, 0.3 * 0.25) = 0.125
    pref = torch.tensor([0.2, 0.6])
    mean_logps, rewards, values = (
        torch.tensor([-1.0, -2.0]),
        torch.tensor([1.0, 0.0]),
        torch.full((2,), 0.5),
    )
    actor = (math.e + 2 / math.e) / 2
    kw = {**upo_settings(), "lam": 2.0, "gamma": 0.5, "value_coef": 0.1, "aux_warmup_steps": 100}
    early = upo_loss(pref, mean_logps, rewards, values, step=99, **kw)
    assert not early.actor_on
    torch.testing.assert_close(early.total, torch.tensor(0.4 + 0.1 * 0.125))
    torch.testing.assert_close(early.actor, torch.tensor(actor))  # still reported for logging
    late = upo_loss(pref, mean_logps, rewards, values, step=100, **kw)
    assert late.actor_on
    torch.testing.assert_close(late.total, torch.tensor(0.4 + 0.1 * 0.125 + 0.5 * actor))
    torch.testing.assert_close(late.value, torch.tensor(0.125))


def upo_settings() -> dict:
    """upo_loss's settings from the config's defaults, as the trainer passes them."""
    p = UPOParams()
    return {
        "gamma": p.gamma,
        "lam": p.lambda_,
        "value_coef": p.value_coef,
        "expectile": p.expectile,
        "aux_warmup_steps": p.aux_warmup_steps,
        "max_weight": p.max_weight or None,
    }


def test_upo_defaults() -> None:
    # written once, in the config: gamma, lambda and value_coef from the paper
    p = UPOParams()
    assert (p.gamma, p.lambda_, p.value_coef) == (0.5, 5.0, 0.1)
    assert (p.expectile, p.aux_warmup_steps, p.max_weight) == (0.7, 100, 0.0)


# ------------------------------------------------------------------------------- value head


def test_value_head_shape_and_architecture() -> None:
    head = ValueHead(16)
    linears = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    dropouts = [m for m in head.modules() if isinstance(m, torch.nn.Dropout)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 16), (16, 16), (16, 1)]
    assert all(d.p == 0.1 for d in dropouts) and len(dropouts) == 2
    hidden = torch.randn(3, 7, 16, dtype=torch.bfloat16)
    picked = last_prompt_hidden(hidden, torch.tensor([0, 4, 6]))
    torch.testing.assert_close(picked[1], hidden[1, 4])
    assert head(picked).shape == (3,)


def test_value_head_learns_the_expectile() -> None:
    # Two "prompts" with known reward distributions: Bernoulli(0.3) and Beta(2, 5).
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    draws = [(rng.random(256) < 0.3).astype(np.float64), rng.beta(2.0, 5.0, size=256)]
    targets = [numpy_expectile(d, 0.7) for d in draws]
    hidden = torch.eye(8)[:2]  # one fixed hidden state per prompt
    inputs = hidden.repeat_interleave(256, dim=0)
    rewards = torch.tensor(np.concatenate(draws), dtype=torch.float32)
    head = ValueHead(8, dropout=0.0)  # dropout off: the fit must be exact
    fit_value_head(head, inputs, rewards)
    with torch.no_grad():
        values = head(hidden)
    for value, target, draw in zip(values.tolist(), targets, draws, strict=True):
        assert abs(value - target) < 0.01
        assert value - draw.mean() > 0.04  # the 0.7-expectile, not the mean


def test_value_head_with_default_dropout_learns_the_expectile_not_the_mean() -> None:
    # Bernoulli(0.3): mean 0.3, 0.7-expectile 0.5. Dropout biases the eval-mode value by a few
    # hundredths, far less than the gap to the mean.
    rng = np.random.default_rng(3)
    torch.manual_seed(3)
    draw = (rng.random(500) < 0.3).astype(np.float64)
    target = numpy_expectile(draw, 0.7)
    hidden = torch.eye(8)[:1]
    head = ValueHead(8)
    fit_value_head(head, hidden.expand(500, 8), torch.tensor(draw, dtype=torch.float32))
    with torch.no_grad():
        value = head(hidden).item()
    assert abs(value - target) < 0.05
    assert value - draw.mean() > 0.15


# ------------------------------------------------------------------------------- gradient paths


def test_actor_term_reaches_only_the_policy() -> None:
    torch.manual_seed(0)
    head = ValueHead(4)
    hidden = torch.randn(3, 4, requires_grad=True)  # stands in for the LM's hidden states
    values = head(hidden)
    rewards = torch.rand(3, requires_grad=True)
    mean_logps = -torch.rand(3, requires_grad=True)
    actor = upo_aux_loss(mean_logps, rewards, values, lam=5.0).sum()
    g_logps, g_values, g_rewards = torch.autograd.grad(
        actor, [mean_logps, values, rewards], allow_unused=True
    )
    assert g_values is None and g_rewards is None
    # d/dl of -w * l is -w, w = exp(5 (R - V))
    torch.testing.assert_close(g_logps, -torch.exp(5.0 * (rewards - values)).detach())
    actor = upo_aux_loss(mean_logps, rewards, head(hidden), lam=5.0).sum()
    actor.backward()
    assert all(p.grad is None for p in head.parameters())
    assert hidden.grad is None


def test_value_loss_trains_the_head_but_not_the_language_model() -> None:
    torch.manual_seed(0)
    head = ValueHead(4)
    hidden = torch.randn(3, 4, requires_grad=True)
    rewards = torch.rand(3, requires_grad=True)
    terms = upo_loss(
        torch.tensor(0.0), -torch.rand(3), rewards, head(hidden), step=0, **upo_settings()
    )
    terms.total.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())
    assert hidden.grad is None  # the head detaches its input
    assert rewards.grad is None  # rewards are data
