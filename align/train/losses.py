"""Preference and reward losses over per-sequence log-probabilities.

Every loss is a plain function: tensors in, per-example losses ``[B]`` out; the caller reduces.
Inputs are sequence log-probabilities of the policy and of the frozen reference (summed over the
response tokens unless the caller passes means). ``s = policy - ref`` is the log-ratio and
``z = beta * s`` the scaled implicit reward.

- K-wise losses (``nca``, ``infonca``; the listwise ``plackett_luce``, ``lipo``) take ``[B, K]``
  tensors plus an optional bool ``mask`` ``[B, K]`` of valid responses, so K may differ per
  prompt. Masked entries take no part in any
  softmax or mean, whatever values they hold.
- Pair losses (``dpo``, ``ipo``, ``slic``, ``nca_pair``) take four ``[B]`` tensors: policy and
  reference log-probs of the chosen and of the rejected response.

The reward temperature ``alpha``
    We follow the NCA paper: labels are ``softmax(r / alpha)``. Small alpha gives one-hot labels
    on the best response, large alpha gives uniform labels; the policy tilt it implies is
    ``mu * exp(r / (alpha * beta))``. The official NCA code (thu-ml/Noise-Contrastive-Alignment)
    calls its knob ``temperature_alpha`` and divides the rewards by it as well. With its default
    1e-4 and UltraFeedback scores that differ by at least a fraction of a point, the scaled scores
    differ by thousands, so its released reward-setting runs train on labels that are one-hot
    except for exact ties (which its +0.01 tie-break on the first response then resolves; see
    ``tie_break_first``). A comment in that code calls the knob the reciprocal of the paper's
    alpha, but the code divides by it just as the paper's formula does. To reproduce those runs
    set ``alpha: 1.0e-4`` and ``tie_break_first: true``; our default alpha of 1.0 gives soft
    labels on 1-10 scores.

Precision: bfloat16/float16 inputs are computed in float32 (the tensors are ``[B, K]``, so this
costs nothing) and the losses come back in float32; float64 stays float64.

``kwise_loss`` is the single entry point for the trainer: it takes the typed parameters of
``train.loss`` (align/config/losses.py, where the defaults and their reasons are), looks up the
function in ``LOSSES``, applies the pairing rule for pair losses on K-wise data, reports which
rows count and returns the implicit rewards the trainer logs. ``online_loss`` is the online
trainer's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from align.config.losses import IPOParams, LossParams
from align.data.pairing import best_worst_pairs
from align.train.upo import upo_loss

__all__ = [
    "LOSSES",
    "LossOutput",
    "counting_rows",
    "dpo_loss",
    "infonca_loss",
    "ipo_loss",
    "kwise_loss",
    "lipo_loss",
    "nash_md_pg_loss",
    "nca_loss",
    "nca_pair_loss",
    "online_loss",
    "plackett_luce_loss",
    "reward_labels",
    "slic_loss",
]

# Added to the first valid response's reward by ``tie_break_first`` (value from the official code).
TIE_BREAK_BONUS = 0.01


# ---------------------------------------------------------------------------------------------
# helpers


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _fill(dtype: torch.dtype) -> float:
    # Far below any real logit but finite, so log_softmax stays finite and 0 * fill == 0;
    # -inf would turn the masked terms into 0 * -inf = NaN.
    return torch.finfo(dtype).min / 4


def _prepare_kwise(
    policy_logps: Tensor, ref_logps: Tensor, rewards: Tensor, mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Check shapes; return (log-ratio, rewards, mask) with masked entries zeroed."""
    if policy_logps.dim() != 2:
        raise ValueError(f"expected [B, K] log-probs, got shape {tuple(policy_logps.shape)}")
    for name, t in (("ref_logps", ref_logps), ("rewards", rewards), ("mask", mask)):
        if t is not None and t.shape != policy_logps.shape:
            raise ValueError(
                f"{name} has shape {tuple(t.shape)}; expected {tuple(policy_logps.shape)}"
            )
    mask = torch.ones_like(policy_logps, dtype=torch.bool) if mask is None else mask.bool()
    dtype = _compute_dtype(policy_logps.dtype)
    # Zero the padding before any arithmetic: garbage there (even NaN) must not reach the
    # forward value or the gradient.
    log_ratio = torch.where(mask, policy_logps.to(dtype) - ref_logps.to(dtype), 0.0)
    rewards = torch.where(mask, rewards.detach().to(dtype), 0.0)
    return log_ratio, rewards, mask


def _pair_margin(
    policy_chosen: Tensor, policy_rejected: Tensor, ref_chosen: Tensor, ref_rejected: Tensor
) -> Tensor:
    dtype = _compute_dtype(policy_chosen.dtype)
    return (policy_chosen.to(dtype) - ref_chosen.to(dtype)) - (
        policy_rejected.to(dtype) - ref_rejected.to(dtype)
    )


def _label(label: float | Tensor, like: Tensor) -> float | Tensor:
    if isinstance(label, Tensor):
        return label.detach().to(like.dtype)
    if not 0.0 <= label <= 1.0:
        raise ValueError(f"label is a preference probability in [0, 1], got {label}")
    return float(label)


# ---------------------------------------------------------------------------------------------
# K-wise losses


def _labels(rewards: Tensor, mask: Tensor, alpha: float, tie_break_first: bool) -> Tensor:
    # rewards already float, detached and zero at masked entries (_prepare_kwise).
    if tie_break_first:
        first = mask.to(torch.uint8).argmax(-1)  # index of the first valid response
        bump = F.one_hot(first, rewards.shape[-1]).to(rewards.dtype) * mask
        rewards = rewards + TIE_BREAK_BONUS * bump
    scaled = (rewards / alpha).masked_fill(~mask, _fill(rewards.dtype))
    return torch.where(mask, torch.softmax(scaled, dim=-1), 0.0)


def reward_labels(
    rewards: Tensor, mask: Tensor | None = None, *, alpha: float, tie_break_first: bool = False
) -> Tensor:
    """Soft labels ``w = softmax(r / alpha)`` over the valid responses of each row.

    rewards, mask: ``[B, K]``. Returns ``[B, K]`` float, zero at masked entries, rows summing to
    1 (a row with no valid response is all zero). No gradient flows into the rewards.

    ``tie_break_first`` adds 0.01 to the first valid response's reward before scaling, as the
    official NCA code does so that its A0 (the top-scored answer) stays the argmax under ties.
    It only acts as a tie-break when alpha is small; at alpha=1 it is a small bias.
    """
    dtype = _compute_dtype(rewards.dtype) if rewards.is_floating_point() else torch.float32
    floats = rewards.to(dtype)
    _, floats, mask = _prepare_kwise(floats, floats, floats, mask)
    return _labels(floats, mask, alpha, tie_break_first)


def infonca_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    rewards: Tensor,
    *,
    beta: float,
    alpha: float,
    mask: Tensor | None = None,
    tie_break_first: bool = False,
) -> Tensor:
    """InfoNCA: K-way cross-entropy from reward labels to the model's implicit-reward softmax.

    ``loss = -sum_i w_i * log_softmax_i(z)`` with ``w = softmax(r / alpha)`` and
    ``z = beta * (policy_logps - ref_logps)``, both over the valid responses only.

    policy_logps, ref_logps, rewards, mask: ``[B, K]``. Returns ``[B]``. A row with one valid
    response has loss 0. With K=2 and alpha -> 0 this is DPO.

    Chen et al., "Noise Contrastive Alignment of Language Models with Explicit Rewards",
    arXiv 2402.05369 (NeurIPS 2024), the InfoNCA objective.
    """
    log_ratio, rewards, mask = _prepare_kwise(policy_logps, ref_logps, rewards, mask)
    w = _labels(rewards, mask, alpha, tie_break_first)
    logits = (beta * log_ratio).masked_fill(~mask, _fill(log_ratio.dtype))
    log_p = torch.log_softmax(logits, dim=-1)
    return -torch.where(mask, w * log_p, 0.0).sum(-1)


def nca_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    rewards: Tensor,
    *,
    beta: float,
    alpha: float,
    mask: Tensor | None = None,
    tie_break_first: bool = False,
) -> Tensor:
    """NCA: each response classified as "from the reward-tilted policy" against "from mu".

    ``loss = -sum_i w_i * log sigmoid(z_i) - (1/K) * sum_i log sigmoid(-z_i)`` with
    ``w = softmax(r / alpha)`` and ``z = beta * (policy_logps - ref_logps)``; K is the number of
    valid responses of the row, so the second term is a mean over them.

    policy_logps, ref_logps, rewards, mask: ``[B, K]``. Returns ``[B]``. With K=2 and alpha -> 0
    this is ``nca_pair_loss``.

    Chen et al., "Noise Contrastive Alignment of Language Models with Explicit Rewards",
    arXiv 2402.05369 (NeurIPS 2024), the NCA objective.
    """
    log_ratio, rewards, mask = _prepare_kwise(policy_logps, ref_logps, rewards, mask)
    w = _labels(rewards, mask, alpha, tie_break_first)
    z = beta * log_ratio
    n_valid = mask.sum(-1).clamp_min(1)
    positive = torch.where(mask, w * F.logsigmoid(z), 0.0).sum(-1)
    negative = torch.where(mask, F.logsigmoid(-z), 0.0).sum(-1) / n_valid
    return -(positive + negative)


# ---------------------------------------------------------------------------------------------
# listwise losses: the ranking of the K rewards, ties carrying no order


def _beats(rewards: Tensor, mask: Tensor) -> Tensor:
    """``[B, K, K]`` bool: valid response i has a strictly higher reward than valid j."""
    valid = mask[:, :, None] & mask[:, None, :]
    return valid & (rewards[:, :, None] > rewards[:, None, :])


def plackett_luce_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    rewards: Tensor,
    *,
    beta: float,
    mask: Tensor | None = None,
) -> Tensor:
    """Plackett-Luce negative log-likelihood of the reward ranking under the implicit rewards.

    ``loss = -sum_i [z_i - log(exp(z_i) + sum_{j: r_j < r_i} exp(z_j))]`` over the valid
    responses i that beat at least one other, ``z = beta * (policy_logps - ref_logps)``. Without
    ties this is the Plackett-Luce likelihood of the ranking (each position's response against
    all those ranked below it); tied responses are not ordered against each other, so a row whose
    rewards all tie has loss 0. With K=2 and r_1 > r_2 this is DPO.

    policy_logps, ref_logps, rewards, mask: ``[B, K]``. Returns ``[B]``.

    Rafailov et al., "Direct Preference Optimization", arXiv 2305.18290, Appendix A.3.
    """
    log_ratio, rewards, mask = _prepare_kwise(policy_logps, ref_logps, rewards, mask)
    z = beta * log_ratio
    beats = _beats(rewards, mask)
    eye = torch.eye(z.shape[-1], dtype=torch.bool, device=z.device)
    # row i of `field`: response i itself and every response it beats
    field = beats | (eye & mask[:, :, None])
    logits = z[:, None, :].expand_as(field).masked_fill(~field, _fill(z.dtype))
    log_p = z - torch.logsumexp(logits, dim=-1)
    return -torch.where(beats.any(-1), log_p, 0.0).sum(-1)


def _ranks(z: Tensor, rewards: Tensor, mask: Tensor) -> Tensor:
    """``[B, K]`` 1-based position of each response when sorted by z descending, ties in z
    broken by reward descending, then by index; masked responses come last."""
    low = _fill(z.dtype)
    by_reward = torch.sort(rewards.masked_fill(~mask, low), stable=True, dim=-1, descending=True)[1]
    z_sorted = z.masked_fill(~mask, low).gather(-1, by_reward)
    order = by_reward.gather(-1, torch.sort(z_sorted, stable=True, dim=-1, descending=True)[1])
    positions = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    return torch.empty_like(z).scatter_(-1, order, positions.expand_as(z))


def lipo_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    rewards: Tensor,
    *,
    beta: float,
    normalize: bool = True,
    mask: Tensor | None = None,
) -> Tensor:
    """LiPO-lambda: pairwise logistic loss over every ordered pair, weighted by LambdaRank.

    ``loss = -sum_{r_i > r_j} delta_ij * log sigmoid(z_i - z_j)`` with
    ``delta_ij = |2^r_i - 2^r_j| * |1/log2(1 + rank_i) - 1/log2(1 + rank_j)|``, ``rank`` the
    position under z (ties in z by reward), ``z = beta * (policy_logps - ref_logps)``; the weights
    carry no gradient. ``normalize`` divides each row's weights by their sum, so a row weighs as
    one DPO pair (K=2 is then exactly DPO) and the reward scale cancels; the paper sums them raw.
    Tied responses form no pair.

    policy_logps, ref_logps, rewards, mask: ``[B, K]``. Returns ``[B]``.

    Liu et al., "LiPO: Listwise Preference Optimization through Learning-to-Rank",
    arXiv 2402.01878.
    """
    log_ratio, rewards, mask = _prepare_kwise(policy_logps, ref_logps, rewards, mask)
    z = beta * log_ratio
    pairs = _beats(rewards, mask)
    with torch.no_grad():
        top = rewards.masked_fill(~mask, _fill(rewards.dtype)).amax(-1, keepdim=True)
        # 2^r_i - 2^r_j = 2^top * (2^(r_i - top) - 2^(r_j - top)): no overflow at any scale
        gain = torch.exp2(torch.where(mask, rewards - top, 0.0))
        discount = 1.0 / torch.log2(1.0 + _ranks(z, rewards, mask))
        delta = (gain[:, :, None] - gain[:, None, :]).abs()
        delta = delta * (discount[:, :, None] - discount[:, None, :]).abs()
        delta = torch.where(pairs, delta, 0.0)
        if normalize:
            delta = delta / delta.sum((-2, -1), keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)
        else:
            delta = delta * torch.exp2(top)[:, :, None]
    logistic = F.logsigmoid(z[:, :, None] - z[:, None, :])
    return -torch.where(pairs, delta * logistic, 0.0).sum((-2, -1))


# ---------------------------------------------------------------------------------------------
# pair losses: h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected), all [B]


def dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    beta: float,
    label: float | Tensor = 1.0,
) -> Tensor:
    """DPO, with an optional soft label.

    ``loss = -p * log sigmoid(beta * h) - (1 - p) * log sigmoid(-beta * h)``, where
    ``p = label`` is the probability that the chosen response is preferred (1 is plain DPO,
    0.5 a tie). Inputs ``[B]``, ``label`` a float or ``[B]``. Returns ``[B]``.

    Rafailov et al., "Direct Preference Optimization", arXiv 2305.18290, Eq. 7.
    """
    h = _pair_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    p = _label(label, h)
    return -(p * F.logsigmoid(beta * h) + (1 - p) * F.logsigmoid(-beta * h))


def ipo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    tau: float,
    label: float | Tensor = 1.0,
) -> Tensor:
    """IPO, with an optional preference probability.

    ``loss = p * (h - 1/(2 tau))^2 + (1 - p) * (-h - 1/(2 tau))^2`` with ``p = label``; p=1 is
    the paper's offline loss, p=0.5 regresses h to 0. Uses whatever log-probs it is given: for
    TRL's length-normalised convention pass per-token means (``kwise_loss(..., length_norm=True)``
    does this). Inputs ``[B]``, ``label`` a float or ``[B]``. Returns ``[B]``.

    Azar et al., "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", arXiv 2310.12036, Eq. 17; soft p as in Calandriello et al., arXiv 2403.08635.
    """
    h = _pair_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    p = _label(label, h)
    target = 1.0 / (2.0 * tau)
    return p * (h - target) ** 2 + (1 - p) * (h + target) ** 2


def slic_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    beta: float,
    label: float | Tensor = 1.0,
) -> Tensor:
    """SLiC hinge on the log-ratio margin (TRL's ``hinge``), with an optional soft label.

    ``loss = p * max(0, 1 - beta * h) + (1 - p) * max(0, 1 + beta * h)``; the margin is 1/beta.
    Inputs ``[B]``. Returns ``[B]``.

    Zhao et al., "SLiC-HF: Sequence Likelihood Calibration with Human Feedback",
    arXiv 2305.10425 (calibration loss); hinge form as in Liu et al. (RSO), arXiv 2309.06657.
    """
    h = _pair_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    p = _label(label, h)
    return p * torch.relu(1 - beta * h) + (1 - p) * torch.relu(1 + beta * h)


def nca_pair_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    beta: float,
) -> Tensor:
    """NCA for a preference pair.

    ``loss = -log sigmoid(z_w) - 1/2 log sigmoid(-z_w) - 1/2 log sigmoid(-z_l)`` with
    ``z_w = beta * (policy_chosen - ref_chosen)``, ``z_l = beta * (policy_rejected -
    ref_rejected)``. Inputs ``[B]``. Returns ``[B]``.

    Chen et al., arXiv 2402.05369, NCA in the preference setting (K=2, hard labels).
    """
    dtype = _compute_dtype(policy_chosen.dtype)
    z_w = beta * (policy_chosen.to(dtype) - ref_chosen.to(dtype))
    z_l = beta * (policy_rejected.to(dtype) - ref_rejected.to(dtype))
    return -F.logsigmoid(z_w) - 0.5 * F.logsigmoid(-z_w) - 0.5 * F.logsigmoid(-z_l)


# ---------------------------------------------------------------------------------------------
# online losses: pairs sampled during training, labelled p = P(y > y')


def nash_md_pg_loss(
    policy_logps: Tensor, ref_logps: Tensor, *, tau: float, label: float | Tensor
) -> Tensor:
    """Nash-MD-PG surrogate for one policy sample y against an opponent y' from the mixture.

    ``loss = -sg[p - 1/2 - tau * (log pi(y) - log ref(y))] * log pi(y)``, whose gradient is
    minus the policy-gradient estimator
    ``grad log pi(y) [P(y > y') - 1/2 - tau log(pi(y)/ref(y))]``: the 1/2 is a control
    variate, the tau term the KL regulariser (sequence level, not TRL's per-token
    approximation). policy_logps, ref_logps: ``[B]`` summed log-probs of y; label
    ``p``: float or ``[B]``. Returns ``[B]``.

    Munos et al., "Nash Learning from Human Feedback", arXiv 2312.00886, section 7.
    """
    dtype = _compute_dtype(policy_logps.dtype)
    policy = policy_logps.to(dtype)
    p = _label(label, policy)
    advantage = (p - 0.5 - tau * (policy - ref_logps.to(dtype))).detach()
    return -advantage * policy


def _online_dpo(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, tau: float, label) -> Tensor:
    return dpo_loss(pc, pr, rc, rr, beta=tau, label=label)  # -log sigmoid(tau h), tau the KL


def _online_slic(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor, *, tau: float, label) -> Tensor:
    return slic_loss(pc, pr, rc, rr, beta=tau, label=label)  # max(0, 1 - tau h), tau the KL


# ---------------------------------------------------------------------------------------------
# registry: YAML name -> loss function (the parameters are align/config/losses.py's models)

LOSSES: dict[str, Callable[..., Tensor]] = {
    "nca": nca_loss,
    "infonca": infonca_loss,
    "plackett_luce": plackett_luce_loss,
    "lipo": lipo_loss,
    "dpo": dpo_loss,
    "ipo": ipo_loss,
    "slic": slic_loss,
    "nca_pair": nca_pair_loss,
    # BMC: the pair loss on diff-mask-weighted log-probs (the trainer weights them, bmc.py)
    "dpo_bmc": dpo_loss,
    "ipo_bmc": ipo_loss,
    "nca_pair_bmc": nca_pair_loss,
    "online_ipo": ipo_loss,
    "ipo_md": ipo_loss,
    "nash_md_pg": nash_md_pg_loss,
    "online_dpo": _online_dpo,
    "online_slic": _online_slic,
    # the trainer runs it around its preference loss (upo.py)
    "upo": upo_loss,
}


def _scale(params: LossParams) -> tuple[str, float]:
    """The loss's scale of the log-ratio and its keyword: tau for IPO, beta for the others."""
    return ("tau", params.tau) if isinstance(params, IPOParams) else ("beta", params.beta)


@dataclass(frozen=True)
class LossOutput:
    """What `kwise_loss` returns, all ``[B]``. ``losses`` is 0 where ``counts`` is False, so
    the caller reduces with ``losses.sum() / counts.sum().clamp_min(1)``.

    The logged figures are detached and describe the best (``chosen``) against the worst
    (``rejected``) response of each row (``best_worst_pairs``): ``chosen_rewards`` and
    ``rejected_rewards`` are the implicit rewards ``scale * (policy - ref)`` with the loss's own
    scale (beta, or tau for IPO) on the log-probs the loss saw (per-token means under
    ``length_norm``); they mean nothing where ``has_preference`` is False.
    """

    losses: Tensor
    counts: Tensor  # bool: rows that take part in the loss
    chosen_rewards: Tensor
    rejected_rewards: Tensor
    has_preference: Tensor  # bool: rows whose valid rewards are not all equal
    chosen: Tensor  # long: index of the chosen response
    rejected: Tensor  # long: index of the rejected response


def _pick(t: Tensor, idx: Tensor) -> Tensor:
    return t.gather(-1, idx.unsqueeze(-1)).squeeze(-1)


def counting_rows(params: LossParams, rewards: Tensor, mask: Tensor) -> Tensor:
    """``[B]`` bool: the rows that take part in the loss (`kwise_loss`'s ``counts``), from the
    data alone: a kwise row needs ``min_k`` valid responses (a listwise one also a preference),
    a pair row a preference. rewards, mask: ``[B, K]``."""
    mask = mask.bool()
    has_preference = best_worst_pairs(rewards, mask)[2]
    if params.kind != "kwise":
        return has_preference
    enough = mask.sum(-1) >= params.min_k
    return enough & has_preference if params.ranking else enough


def kwise_loss(
    params: LossParams,
    policy_logps: Tensor,
    ref_logps: Tensor,
    rewards: Tensor,
    mask: Tensor | None = None,
    n_tokens: Tensor | None = None,
) -> LossOutput:
    """Any offline loss on K-wise data; the trainer's one entry point.

    params: the loss's validated parameters (``train.loss``; for UPO its preference loss's).
    policy_logps, ref_logps, rewards, mask, n_tokens: ``[B, K]`` (n_tokens: completion-token
    counts of each sequence).

    - kwise losses run on all valid responses; a row counts if it has >= ``min_k`` of them
      (and, for the listwise losses, which read only the reward order, a preference).
    - pair losses run on ``best_worst_pairs``; a row counts if it has a preference. Preference
      data is K=2 with rewards such as ``[1, 0]``.
    - ``length_norm`` (ipo): divide each sequence log-ratio by its token count first, TRL's
      ``ipo`` convention; the scale of 1/(2 tau) depends on it.
    """
    if params.kind == "online":
        raise ValueError(f"loss {params.name!r} samples its own pairs: it needs train.online: true")
    if params.kind == "upo":
        raise ValueError("loss 'upo' wraps a preference loss: the trainer runs it (upo.py)")
    fn, (key, scale) = LOSSES[params.name], _scale(params)
    mask = torch.ones_like(policy_logps, dtype=torch.bool) if mask is None else mask.bool()
    dtype = _compute_dtype(policy_logps.dtype)
    policy = torch.where(mask, policy_logps.to(dtype), 0.0)
    ref = torch.where(mask, ref_logps.to(dtype), 0.0)
    chosen, rejected, has_preference = best_worst_pairs(rewards, mask)
    if params.kind == "kwise":
        losses = fn(policy_logps, ref_logps, rewards, mask=mask, **params.params())
    else:
        if isinstance(params, IPOParams) and params.length_norm:
            if n_tokens is None:
                raise ValueError(
                    f"loss {params.name!r}: length_norm=True needs n_tokens (tokens per sequence)"
                )
            lengths = torch.where(mask, n_tokens, 1).clamp_min(1).to(policy.dtype)
            policy, ref = policy / lengths, ref / lengths
        losses = fn(
            _pick(policy, chosen),
            _pick(policy, rejected),
            _pick(ref, chosen),
            _pick(ref, rejected),
            **{key: scale},
        )
    counts = counting_rows(params, rewards, mask)
    log_ratio = (policy - ref).detach()
    return LossOutput(
        torch.where(counts, losses, 0.0),
        counts,
        scale * _pick(log_ratio, chosen),
        scale * _pick(log_ratio, rejected),
        has_preference,
        chosen,
        rejected,
    )


def online_loss(
    params: LossParams, policy_logps: Tensor, ref_logps: Tensor, label: Tensor
) -> Tensor:
    """An online loss on sampled pairs; the online trainer's one entry point.

    policy_logps, ref_logps: ``[B, 2]`` summed log-probs of (y, y'); label ``[B]`` = P(y > y').
    ``beta`` (the mixture weight) only steers sampling and is not used here. Contrastive losses
    use the soft-label form ``p l(y, y') + (1 - p) l(y', y)``; ``nash_md_pg`` uses y alone (its
    opponent enters through p). Returns ``[B]``.
    """
    if params.kind != "online":
        raise ValueError(f"loss {params.name!r} is not an online loss")
    fn = LOSSES[params.name]
    if params.name == "nash_md_pg":
        return fn(policy_logps[:, 0], ref_logps[:, 0], label=label, tau=params.tau)
    return fn(
        policy_logps[:, 0],
        policy_logps[:, 1],
        ref_logps[:, 0],
        ref_logps[:, 1],
        label=label,
        tau=params.tau,
    )
