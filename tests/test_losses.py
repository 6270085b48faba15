"""align.train.losses: hand-computed values, the identities between the losses (K=2 limits,
soft labels), the registry and the entry point with its logged rewards.

Notation in comments: s = policy - ref, z = beta * s, h = s_chosen - s_rejected,
sigma(ln 3) = 3/4, sigma(-ln 3) = 1/4, sigma(0) = 1/2.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from align.config.losses import LOSS_MODELS, loss_config
from align.data.pairing import best_worst_pairs
from align.train.losses import (
    LOSSES,
    dpo_loss,
    infonca_loss,
    ipo_loss,
    kwise_loss,
    nca_loss,
    nca_pair_loss,
    reward_labels,
    slic_loss,
)

LN2, LN3 = math.log(2.0), math.log(3.0)
T = torch.tensor


def f64(*rows: list[float]) -> torch.Tensor:
    """A [B, K] float64 tensor, one argument per row."""
    return torch.tensor(rows, dtype=torch.float64)


def v64(*values: float) -> torch.Tensor:
    """A [B] float64 tensor."""
    return torch.tensor(values, dtype=torch.float64)


def close(actual: torch.Tensor, expected: list[float] | torch.Tensor, tol: float = 1e-6) -> None:
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected, atol=tol, rtol=tol)


# ------------------------------------------------------------------------------- hand values


def test_infonca_hand_values() -> None:
    # Row 0: r = [ln2, 0, 0], alpha 1 -> w = [2, 1, 1] / 4. z = [ln2, 0, 0] -> softmax(z) is the
    #   same [1/2, 1/4, 1/4], so the loss is its entropy: 1/2 ln 2 + 2 * 1/4 ln 4 = 1.5 ln 2.
    # Row 1: r = [1, 1, 1] -> w = 1/3 each; same z:
    #   -(1/3)(ln 1/2 + 2 ln 1/4) = (1/3)(ln 2 + 4 ln 2) = 5/3 ln 2.
    policy = f64([LN2, 0.0, 0.0], [LN2, 0.0, 0.0])
    rewards = f64([LN2, 0.0, 0.0], [1.0, 1.0, 1.0])
    loss = infonca_loss(policy, torch.zeros_like(policy), rewards, beta=1.0, alpha=1.0)
    close(loss, [1.5 * LN2, 5 / 3 * LN2])


def test_infonca_uses_beta_and_alpha() -> None:
    # s = [2 ln2, 0], beta 0.5 -> z = [ln2, 0] -> softmax [2/3, 1/3].
    # r = [2 ln3, 0], alpha 2 -> w = softmax([ln3, 0]) = [3/4, 1/4].
    # loss = -(3/4 ln 2/3 + 1/4 ln 1/3) = 3/4 ln 1.5 + 1/4 ln 3.
    loss = infonca_loss(
        f64([2 * LN2, 0.0]), f64([0.0, 0.0]), f64([2 * LN3, 0.0]), beta=0.5, alpha=2
    )
    close(loss, [0.75 * math.log(1.5) + 0.25 * LN3])


def test_nca_hand_value() -> None:
    # z = [ln3, -ln3] (beta 1), r = [ln3, 0] (alpha 1) -> w = [3/4, 1/4].
    # positive = 3/4 ln sigma(ln3) + 1/4 ln sigma(-ln3) = 3/4 ln(3/4) + 1/4 ln(1/4)
    # negative = mean(ln sigma(-ln3), ln sigma(ln3))  = 1/2 ln(1/4) + 1/2 ln(3/4)
    # loss = -(5/4 ln(3/4) + 3/4 ln(1/4)) = 5/4 ln(4/3) + 3/4 ln 4 = 1.39932336
    loss = nca_loss(f64([LN3, -LN3]), f64([0.0, 0.0]), f64([LN3, 0.0]), beta=1.0, alpha=1.0)
    close(loss, [1.25 * math.log(4 / 3) + 0.75 * math.log(4)])
    assert abs(loss.item() - 1.39932336) < 1e-7


def test_nca_at_reference_is_independent_of_rewards() -> None:
    # z = 0: every log sigma is -ln 2; positive sums labels to 1, negative is a mean -> 2 ln 2.
    zeros = torch.zeros(2, 3, dtype=torch.float64)
    loss = nca_loss(zeros, zeros, f64([1.0, 5.0, 2.0], [0.0, 0.0, 0.0]), beta=0.1, alpha=0.5)
    close(loss, [2 * LN2, 2 * LN2])


def test_dpo_hand_values() -> None:
    # Row 0: policy == ref -> h = 0 -> -ln sigma(0) = ln 2.
    # Row 1: s_c = -1 - (-2) = 1, s_r = -3 - (-2) = -1 -> h = 2; beta 0.5 -> beta h = 1
    #        -> ln(1 + e^-1) = 0.31326169.
    pc, pr, rc, rr = v64(-2.0, -1.0), v64(-2.0, -3.0), v64(-2.0, -2.0), v64(-2.0, -2.0)
    close(dpo_loss(pc[0], pr[0], rc[0], rr[0], beta=0.5), LN2)
    loss = dpo_loss(pc, pr, rc, rr, beta=0.5)
    close(loss, [LN2, math.log1p(math.exp(-1))])
    assert abs(loss[1].item() - 0.31326169) < 1e-8


def test_dpo_soft_label() -> None:
    # beta h = 1, p = 1/2: 1/2 ln(1 + e^-1) + 1/2 ln(1 + e^1) = 1/2 (0.31326169 + 1.31326169)
    args = v64(-1.0), v64(-3.0), v64(-2.0), v64(-2.0)
    close(dpo_loss(*args, beta=0.5, label=0.5), [0.81326169], tol=1e-8)
    # p = 0 flips the preference: equals p = 1 with chosen and rejected swapped.
    swapped = args[1], args[0], args[3], args[2]
    close(dpo_loss(*args, beta=0.5, label=0.0), dpo_loss(*swapped, beta=0.5))
    # a per-example tensor label works too
    pc, pr = v64(-1.0, -1.0), v64(-3.0, -3.0)
    loss = dpo_loss(pc, pr, v64(-2.0, -2.0), v64(-2.0, -2.0), beta=0.5, label=v64(1.0, 0.5))
    close(loss, [0.31326169, 0.81326169], tol=1e-8)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        dpo_loss(*args, beta=0.5, label=1.5)


def test_ipo_hand_values() -> None:
    # tau 0.5 -> target 1 / (2 tau) = 1.  h = 2 -> (2 - 1)^2 = 1;  h = 0 -> (0 - 1)^2 = 1;
    # h = 3 -> 4.
    pc, pr, zero = v64(1.0, 0.0, 2.0), v64(-1.0, 0.0, -1.0), v64(0.0, 0.0, 0.0)
    close(ipo_loss(pc, pr, zero, zero, tau=0.5), [1.0, 1.0, 4.0])
    # p = 1/2, h = 2: 1/2 (2 - 1)^2 + 1/2 (-2 - 1)^2 = 0.5 + 4.5 = 5.
    close(ipo_loss(pc[:1], pr[:1], zero[:1], zero[:1], tau=0.5, label=0.5), [5.0])


def test_ipo_soft_label_is_shifted_target() -> None:
    # p (h - t)^2 + (1 - p)(h + t)^2 = (h - (p - 1/2)/tau)^2 + t^2 - ((p - 1/2)/tau)^2, t=1/(2tau)
    h = torch.linspace(-3, 3, 7, dtype=torch.float64)
    zero = torch.zeros_like(h)
    tau, p = 0.2, 0.8
    t, shift = 1 / (2 * tau), (p - 0.5) / tau
    expected = (h - shift) ** 2 + t**2 - shift**2
    close(ipo_loss(h, zero, zero, zero, tau=tau, label=p), expected, tol=1e-10)


def test_slic_hand_values() -> None:
    # beta 0.5: h = 1 -> 1 - 0.5 = 0.5;  h = 4 -> max(0, -1) = 0;  h = -2 -> 1 + 1 = 2.
    h, zero = v64(1.0, 4.0, -2.0), v64(0.0, 0.0, 0.0)
    close(slic_loss(h, zero, zero, zero, beta=0.5), [0.5, 0.0, 2.0])
    # p = 1/4, h = 1: 1/4 * 0.5 + 3/4 * (1 + 0.5) = 0.125 + 1.125 = 1.25
    close(slic_loss(h[:1], zero[:1], zero[:1], zero[:1], beta=0.5, label=0.25), [1.25])


def test_nca_pair_hand_values() -> None:
    # Row 0: z_w = z_l = 0 -> ln 2 + 1/2 ln 2 + 1/2 ln 2 = 2 ln 2.
    # Row 1: z_w = ln3, z_l = -ln3 -> -ln(3/4) - 1/2 ln(1/4) - 1/2 ln(3/4)
    #        = 1.5 ln(4/3) + ln 2 = 1.12467029
    pc, pr, zero = v64(0.0, LN3), v64(0.0, -LN3), v64(0.0, 0.0)
    loss = nca_pair_loss(pc, pr, zero, zero, beta=1.0)
    close(loss, [2 * LN2, 1.5 * math.log(4 / 3) + LN2])
    assert abs(loss[1].item() - 1.12467029) < 1e-7
    # beta scales z: s = 2 ln3 with beta 1/2 is row 1 again
    close(nca_pair_loss(pc[1:] * 2, pr[1:] * 2, zero[:1], zero[:1], beta=0.5), loss[1:])


# ------------------------------------------------------------------------------- identities


def random_logps(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    policy = -torch.rand(shape, generator=g, dtype=torch.float64) * 50
    ref = -torch.rand(shape, generator=g, dtype=torch.float64) * 50
    return policy, ref


def test_infonca_k2_hard_labels_is_dpo() -> None:
    policy, ref = random_logps((6, 2), seed=0)
    rewards = f64(*[[2.0, 1.0], [1.0, 2.0]] * 3)  # winner alternates between the two columns
    beta = 0.1
    loss = infonca_loss(policy, ref, rewards, beta=beta, alpha=1e-4)
    w = rewards.argmax(-1, keepdim=True)
    lo = 1 - w
    pick = lambda t, i: t.gather(1, i).squeeze(1)  # noqa: E731
    dpo = dpo_loss(pick(policy, w), pick(policy, lo), pick(ref, w), pick(ref, lo), beta=beta)
    close(loss, dpo, tol=1e-10)


def test_infonca_k2_soft_labels_is_soft_dpo() -> None:
    # w = softmax(r / alpha) over two responses = [p, 1 - p] with p = sigma((r1 - r2) / alpha)
    policy, ref = random_logps((5, 2), seed=1)
    rewards = f64([3.0, 1.0], [1.0, 1.5], [2.0, 2.0], [0.0, 4.0], [5.0, 4.0])
    p = torch.sigmoid((rewards[:, 0] - rewards[:, 1]) / 2.0)
    loss = infonca_loss(policy, ref, rewards, beta=0.2, alpha=2.0)
    dpo = dpo_loss(policy[:, 0], policy[:, 1], ref[:, 0], ref[:, 1], beta=0.2, label=p)
    close(loss, dpo, tol=1e-10)


def test_nca_k2_hard_labels_is_nca_pair() -> None:
    policy, ref = random_logps((6, 2), seed=2)
    rewards = f64(*[[7.0, 3.0], [3.0, 7.0]] * 3)
    loss = nca_loss(policy, ref, rewards, beta=0.05, alpha=1e-4)
    w = rewards.argmax(-1, keepdim=True)
    lo = 1 - w
    pick = lambda t, i: t.gather(1, i).squeeze(1)  # noqa: E731
    pair = nca_pair_loss(pick(policy, w), pick(policy, lo), pick(ref, w), pick(ref, lo), beta=0.05)
    close(loss, pair, tol=1e-10)


def test_infonca_is_shift_invariant_and_nca_is_not() -> None:
    policy, ref = random_logps((3, 4), seed=3)
    rewards = f64([1.0, 2.0, 3.0, 4.0], [4.0, 1.0, 1.0, 0.0], [2.0, 5.0, 3.0, 3.0])
    shift = f64([5.0], [-3.0], [10.0])  # one constant per row
    kw = {"beta": 0.1, "alpha": 1.0}
    close(
        infonca_loss(policy + shift, ref, rewards, **kw), infonca_loss(policy, ref, rewards, **kw)
    )
    nca_moved = nca_loss(policy + shift, ref, rewards, **kw) - nca_loss(policy, ref, rewards, **kw)
    assert (nca_moved.abs() > 1e-3).all()


def test_gradient_signs_at_the_reference() -> None:
    # Fresh policy (policy == ref, z = 0): dNCA/dz_i = -(w_i / 2 - 1 / (2K)), negative for the
    # best response (w_i > 1/K). InfoNCA's dL/dz_i = softmax_i(z) - w_i sums to 0 over a row.
    ref = f64([-10.0, -12.0, -9.0, -20.0], [-5.0, -5.0, -7.0, -1.0])
    rewards = f64([1.0, 8.0, 3.0, 2.0], [6.0, 2.0, 9.0, 9.5])
    mask = T([[True] * 4, [True, True, True, False]])  # row 1: best valid is index 2
    for fn in (nca_loss, infonca_loss):
        policy = ref.clone().requires_grad_(True)
        fn(policy, ref, rewards, beta=0.1, alpha=1.0, mask=mask).sum().backward()
        grad = policy.grad
        if fn is nca_loss:
            assert grad[0, 1] < 0 and grad[1, 2] < 0
            # exact value for row 0: w = softmax([1, 8, 3, 2]), beta 0.1
            w = torch.softmax(rewards[0], 0)
            close(grad[0], -0.1 * (w / 2 - 1 / 8), tol=1e-10)
        else:
            close(grad.sum(-1), [0.0, 0.0], tol=1e-12)
            assert grad[1, 3] == 0  # masked entry gets no gradient


@pytest.mark.parametrize("fn", [nca_loss, infonca_loss])
def test_ragged_k_equals_unpadded_rows(fn) -> None:
    policy, ref = random_logps((3, 4), seed=4)
    rewards = f64([3.0, 1.0, 4.0, 1.5], [2.0, 7.0, 1.0, 0.0], [5.0, 9.0, 0.0, 0.0])
    lengths = [4, 3, 2]
    mask = torch.arange(4)[None, :] < T(lengths)[:, None]
    # garbage in the padding, NaN included, must not matter
    pad = ~mask
    policy_padded = policy.masked_fill(pad, float("nan")).requires_grad_(True)
    rewards_padded = rewards.masked_fill(pad, 1e6)
    ref_padded = ref.masked_fill(pad, -1e4)
    kw = {"beta": 0.1, "alpha": 0.5}
    loss = fn(policy_padded, ref_padded, rewards_padded, mask=mask, **kw)
    for row, k in enumerate(lengths):
        sl = slice(row, row + 1), slice(0, k)
        close(loss[row : row + 1], fn(policy[sl], ref[sl], rewards[sl], **kw), tol=1e-10)
    loss.sum().backward()
    assert torch.isfinite(policy_padded.grad).all()
    assert (policy_padded.grad[pad] == 0).all()


def test_nca_negative_term_is_a_mean_over_valid_responses() -> None:
    # One valid response out of 3 at z = 0: w = [1]; loss = -ln 1/2 - (1/1) ln 1/2 = 2 ln 2.
    # If padding counted in the mean it would be ln 2 + (1/3) ln 2.
    zeros = torch.zeros(1, 3, dtype=torch.float64)
    loss = nca_loss(zeros, zeros, zeros, beta=1.0, alpha=1.0, mask=T([[True, False, False]]))
    close(loss, [2 * LN2])


EXTREME_CASES = [
    # |z| = 1e4 with beta 1: s = +-1e4; rewards +-1e3 with alpha 1e-4 -> r / alpha = +-1e7
    (v64(1e4, -1e4, 0.0, 3.0), v64(1e3, -1e3, 0.0, 1e3)),
    (v64(-1e4, 1e4, 1e4, -1e4), v64(-1e3, 1e3, -1e3, 1e3)),
]


@pytest.mark.parametrize("fn", [nca_loss, infonca_loss])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_kwise_extremes_are_finite(fn, dtype) -> None:
    policy = torch.stack([c[0] for c in EXTREME_CASES]).to(dtype).requires_grad_(True)
    rewards = torch.stack([c[1] for c in EXTREME_CASES]).to(dtype)
    mask = T([[True, True, True, False], [True, True, True, True]])
    loss = fn(policy, torch.zeros_like(policy), rewards, beta=1.0, alpha=1e-4, mask=mask)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(policy.grad).all()
    with torch.no_grad():
        w = reward_labels(rewards, mask, alpha=1e-4)
    assert torch.isfinite(w).all()
    close(w.sum(-1), [1.0, 1.0])


@pytest.mark.parametrize("fn", [dpo_loss, slic_loss, nca_pair_loss, ipo_loss])
def test_pair_extremes_are_finite(fn) -> None:
    pc = v64(1e4, -1e4, 5e3).float().requires_grad_(True)
    pr = v64(-1e4, 1e4, -5e3).float()
    zero = torch.zeros(3)
    kw = {"tau": 0.1} if fn is ipo_loss else {"beta": 1.0}
    loss = fn(pc, pr, zero, zero, **kw)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(pc.grad).all()


def test_dpo_at_extreme_margins_takes_the_asymptote() -> None:
    # -ln sigma(x) -> 0 for x -> +inf and -> -x for x -> -inf (no log(0) = inf)
    big, zero = T([1e4, -1e4]), T([0.0, 0.0])
    close(dpo_loss(big, zero, zero, zero, beta=1.0), [0.0, 1e4])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_matches_float64(dtype) -> None:
    policy, ref = random_logps((4, 3), seed=5)
    rewards = f64([1.0, 8.5, 3.0], [2.0, 2.0, 7.0], [9.0, 1.0, 1.0], [4.5, 6.0, 5.0])
    # round the inputs to the low precision first, so only the computation differs
    low = [t.to(dtype) for t in (policy, ref, rewards)]
    exact = [t.to(torch.float64) for t in low]
    for fn in (nca_loss, infonca_loss):
        got = fn(*low, beta=0.1, alpha=1.0)
        want = fn(*exact, beta=0.1, alpha=1.0)
        assert got.dtype == torch.float32  # computed in float32, not in bfloat16
        close(got.double(), want, tol=1e-5)
    pair_low = [t[:, 0] for t in low[:2]] + [t[:, 1] for t in low[:2]]
    pair_exact = [t.double() for t in pair_low]
    order = [0, 2, 1, 3]  # (pc, pr, rc, rr)
    for fn in (dpo_loss, slic_loss, nca_pair_loss):
        got = fn(*[pair_low[i] for i in order], beta=0.1)
        want = fn(*[pair_exact[i] for i in order], beta=0.1)
        close(got.double(), want, tol=1e-5)


# ------------------------------------------------------------------------------- tie-break


def test_tie_break_first() -> None:
    # r = [5, 5, 1], alpha 1e-4: ties split the mass; +0.01 on the first valid response -> one-hot
    r = f64([5.0, 5.0, 1.0])
    close(reward_labels(r, alpha=1e-4), [[0.5, 0.5, 0.0]])
    close(reward_labels(r, alpha=1e-4, tie_break_first=True), [[1.0, 0.0, 0.0]])
    # the first *valid* response gets the bonus: index 0 is padding here
    mask = T([[False, True, True]])
    labels = reward_labels(f64([9.0, 5.0, 5.0]), mask, alpha=1e-4, tie_break_first=True)
    close(labels, [[0.0, 1.0, 0.0]])
    # at alpha = 1 it is only a small bias: w0 / w1 = e^0.01
    labels = reward_labels(r, alpha=1.0, tie_break_first=True)
    close(labels[0, 0] / labels[0, 1], math.exp(0.01))


def test_tie_break_reaches_the_losses() -> None:
    zeros = torch.zeros(1, 3, dtype=torch.float64)
    policy = f64([1.0, -1.0, 0.0])
    r = f64([5.0, 5.0, 1.0])
    plain = infonca_loss(policy, zeros, r, beta=1.0, alpha=1e-4)
    broken = infonca_loss(policy, zeros, r, beta=1.0, alpha=1e-4, tie_break_first=True)
    log_p = torch.log_softmax(policy, -1)
    close(plain, -(log_p[:, 0] + log_p[:, 1]) / 2)
    close(broken, -log_p[:, 0])


# ------------------------------------------------------------------------------- registry


def test_registry_names_and_kinds() -> None:
    offline = {"nca", "infonca", "plackett_luce", "lipo", "dpo", "ipo", "slic", "nca_pair"}
    online = {"online_ipo", "ipo_md", "nash_md_pg", "online_dpo", "online_slic"}
    bmc = {"dpo_bmc", "ipo_bmc", "nca_pair_bmc"}  # token-weighted pair losses
    assert set(LOSSES) == set(LOSS_MODELS) == offline | online | bmc | {"upo"}
    assert {n for n, m in LOSS_MODELS.items() if m.token_weights == "bmc"} == bmc
    kwise = {"nca", "infonca", "plackett_luce", "lipo"}
    assert {n for n, m in LOSS_MODELS.items() if m.kind == "kwise"} == kwise
    assert {n for n, m in LOSS_MODELS.items() if m.ranking} == {"plackett_luce", "lipo"}
    assert {n for n, m in LOSS_MODELS.items() if m.kind == "online"} == online
    for name, model in LOSS_MODELS.items():
        assert loss_config(name).name == name and model.min_k == 2
        if model.kind == "upo":  # the trainer runs it around its preference loss
            continue
        # every YAML param reaches the function (length_norm is handled by kwise_loss, the
        # online mixture weight beta by the sampler)
        accepted = set(inspect.signature(LOSSES[name]).parameters)
        handled = {"name", "length_norm", "delta", "ref_weights"}  # the trainer applies BMC
        handled |= {"beta"} if model.kind == "online" else set()
        assert set(model.model_fields) - handled <= accepted, name
    assert loss_config("nca").params() == {"beta": 0.01, "alpha": 1.0, "tie_break_first": False}
    assert loss_config("dpo").params() == {"beta": 0.1}
    assert loss_config("ipo").params() == {"tau": 0.1, "length_norm": False}


def test_upo_wraps_its_preference_loss_with_the_shared_keys() -> None:
    # UPO's beta (0.1) replaces nca_pair's own default (0.01); nca keeps its tie_break_first
    upo = loss_config("upo", preference="nca_pair")
    assert upo.preference_params() == loss_config("nca_pair", beta=0.1)
    upo = loss_config("upo", preference="nca", alpha=0.5, **{"lambda": 2.0})
    assert upo.lambda_ == 2.0 and upo.params()["lambda"] == 2.0
    assert upo.preference_params() == loss_config("nca", beta=0.1, alpha=0.5)
    assert loss_config("upo", preference="ipo", tau=0.3).preference_params().tau == 0.3


def test_kwise_loss_length_norm_needs_token_counts() -> None:
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="length_norm=True needs n_tokens"):
        kwise_loss(loss_config("ipo", length_norm=True), x, x, T([[1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"needs train\.online: true"):
        kwise_loss(loss_config("online_ipo"), x, x, x)


# ------------------------------------------------------------------------------- entry point


def test_best_worst_pairs() -> None:
    rewards = f64([1.0, 9.0, 3.0, 0.5], [2.0, 2.0, 2.0, 2.0], [4.0, 1.0, 8.0, 8.0], [3, 0, 0, 0])
    mask = T([[True] * 4, [True] * 4, [True, True, True, False], [True, False, False, False]])
    chosen, rejected, has = best_worst_pairs(rewards, mask)
    # row 0: max 9 at 1, min 0.5 at 3; row 1: all tied; row 2: index 3 is padding, so max 8 at 2
    # and min 1 at 1; row 3: a single valid response.
    assert chosen.tolist()[0::2] == [1, 2] and rejected.tolist()[0::2] == [3, 1]
    assert has.tolist() == [True, False, True, False]
    assert chosen.dtype == rejected.dtype == torch.long


def test_kwise_loss_kwise_counts_rows_with_two_valid() -> None:
    policy, ref = random_logps((3, 3), seed=6)
    rewards = f64([1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [1.0, 0.0, 0.0])
    mask = T([[True] * 3, [True, True, False], [True, False, False]])
    out = kwise_loss(loss_config("nca", alpha=0.5), policy, ref, rewards, mask)
    losses, counts = out.losses, out.counts
    assert counts.tolist() == [True, True, False]
    expected = nca_loss(policy, ref, rewards, beta=0.01, alpha=0.5, mask=mask)  # beta: default
    close(losses[:2], expected[:2])
    assert losses[2] == 0


def test_kwise_loss_pair_losses_use_best_and_worst() -> None:
    policy, ref = random_logps((2, 4), seed=7)
    rewards = f64([1.0, 9.0, 3.0, 0.5], [2.0, 2.0, 2.0, 2.0])
    out = kwise_loss(loss_config("dpo", beta=0.3), policy, ref, rewards)
    losses, counts = out.losses, out.counts
    assert counts.tolist() == [True, False]
    close(losses[0], dpo_loss(policy[0, 1], policy[0, 3], ref[0, 1], ref[0, 3], beta=0.3))
    assert losses[1] == 0
    losses = kwise_loss(loss_config("nca_pair"), policy, ref, rewards).losses  # beta 0.01
    close(losses[0], nca_pair_loss(policy[0, 1], policy[0, 3], ref[0, 1], ref[0, 3], beta=0.01))


def test_kwise_loss_ipo_length_norm() -> None:
    # chosen: policy -6 over 3 tokens, ref -9 -> mean log-ratio (-6 + 9) / 3 = 1
    # rejected: policy -8 over 4 tokens, ref -4 -> (-8 + 4) / 4 = -1      -> h = 2
    # tau 0.5 -> (2 - 1)^2 = 1.   Without length_norm: h = 3 - (-4) = 7 -> (7 - 1)^2 = 36.
    policy, ref, rewards = f64([-6.0, -8.0]), f64([-9.0, -4.0]), f64([1.0, 0.0])
    n_tokens = T([[3, 4]])
    normed = loss_config("ipo", tau=0.5, length_norm=True)
    close(kwise_loss(normed, policy, ref, rewards, None, n_tokens).losses, [1.0])
    close(kwise_loss(loss_config("ipo", tau=0.5), policy, ref, rewards).losses, [36.0])


@pytest.mark.parametrize("name", ["dpo", "ipo", "slic", "nca_pair"])
def test_kwise_loss_pair_padding_gives_finite_gradients(name: str) -> None:
    # Rows without a preference point at whatever index argmax gives, padding included (row 2
    # has no valid response at all); their zero loss must not leak NaN into the gradients.
    nan = float("nan")
    policy = f64([-3.0, -5.0, nan], [nan, -2.0, -2.0], [nan, nan, nan]).requires_grad_(True)
    ref = f64([-4.0, -4.0, 0.0], [0.0, -2.0, -2.0], [nan, nan, nan])
    mask = T([[True, True, False], [False, True, True], [False, False, False]])
    rewards = f64([2.0, 1.0, 0.0], [0.0, 1.0, 1.0], [nan, nan, nan])
    out = kwise_loss(loss_config(name), policy, ref, rewards, mask)
    losses, counts = out.losses, out.counts
    assert counts.tolist() == [True, False, False]
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(policy.grad).all()
    assert (losses[1:] == 0).all() and (policy.grad[1:] == 0).all()
    if name != "slic":
        return
    # row 0: h = (-3 + 4) - (-5 + 4) = 2, beta 0.1 -> 1 - 0.2 = 0.8; d/dpolicy = -0.1, +0.1
    close(losses, [0.8, 0.0, 0.0])
    close(policy.grad, [[-0.1, 0.1, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])


def test_rewards_are_targets_not_parameters() -> None:
    policy, ref = random_logps((2, 3), seed=8)
    rewards = f64([1.0, 2.0, 3.0], [0.0, 5.0, 1.0]).requires_grad_(True)
    for fn in (nca_loss, infonca_loss):
        fn(policy.requires_grad_(True), ref, rewards, beta=0.1, alpha=1.0).sum().backward()
    assert rewards.grad is None and policy.grad is not None


# ------------------------------------------------------------------------------- logged rewards


def test_logged_rewards_use_the_losses_own_scale() -> None:
    # best = response 0 (reward 1), worst = response 1: log-ratios -6 + 9 = 3 and -8 + 4 = -4,
    # margin 7. IPO logs tau * log-ratio, DPO beta * log-ratio.
    policy, ref, rewards = f64([-6.0, -8.0]), f64([-9.0, -4.0]), f64([1.0, 0.0])
    ipo = kwise_loss(loss_config("ipo", tau=0.5), policy, ref, rewards)
    close(ipo.chosen_rewards, [1.5])
    close(ipo.rejected_rewards, [-2.0])
    close(ipo.chosen_rewards - ipo.rejected_rewards, [0.5 * 7])
    dpo = kwise_loss(loss_config("dpo", beta=0.3), policy, ref, rewards)
    close(dpo.chosen_rewards, [0.9])
    close(dpo.rejected_rewards, [-1.2])
    assert dpo.has_preference.tolist() == [True]
    assert (dpo.chosen.tolist(), dpo.rejected.tolist()) == ([0], [1])
    # IPO under length_norm logs the per-token means the loss sees: (1, -1) * tau
    normed = loss_config("ipo", tau=0.5, length_norm=True)
    out = kwise_loss(normed, policy, ref, rewards, None, T([[3, 4]]))
    close(out.chosen_rewards, [0.5])
    close(out.rejected_rewards, [-0.5])


def test_logged_rewards_of_kwise_losses_are_best_and_worst() -> None:
    # rewards [2, 9, 5]: best index 1, worst index 0; log-ratios [1, 2, -3], beta 0.5
    policy, ref, rewards = f64([-1.0, -2.0, -6.0]), f64([-2.0, -4.0, -3.0]), f64([2.0, 9.0, 5.0])
    policy.requires_grad_(True)
    out = kwise_loss(loss_config("nca", beta=0.5), policy, ref, rewards)
    close(out.chosen_rewards, [1.0])
    close(out.rejected_rewards, [0.5])
    assert out.losses.requires_grad and not out.chosen_rewards.requires_grad
