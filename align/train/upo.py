"""UPO: a preference loss plus an advantage-weighted auxiliary-reward term and its value head.

Badrinath, Agarwal, Xu, "Unified Preference Optimization" (v1 "Hybrid Preference
Optimization"), arXiv 2405.17956, objective of the ICLR-2025 version:

    L = L_pref
        + gamma * mean_j[ -exp(lam * (R_j - sg[V(x_j)])) * log pi(y_j | x_j) / |y_j| ]
        + c_V   * mean_j[ L2_tau(R_j - V(x_j)) ]

``L_pref`` is any registered loss (align/train/losses.py). ``R`` is the designer's auxiliary reward
of each dataset response (chosen and rejected alike), computed offline. ``V`` is a small value
head on the detached hidden state of the last prompt token, trained by expectile regression, so
the value loss never reaches the language model and the actor term never reaches the value head.
The actor term is off for the first ``aux_warmup_steps`` so the value head learns first.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from align.core.transfer import to_device

__all__ = [
    "UPOLoss",
    "ValueHead",
    "expectile_loss",
    "last_prompt_hidden",
    "prompt_hidden",
    "upo_aux_loss",
    "upo_loss",
]


class ValueHead(nn.Module):
    """``V(x)``: 3-layer MLP (hidden = model hidden size, ReLU, dropout) -> one scalar.

    Input ``[B, H]`` hidden states of the last prompt token, detached here so no gradient
    reaches the language model. Output ``[B]`` in the head's dtype (float32 unless cast).
    """

    def __init__(self, hidden_size: int, *, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden_size, hidden_size),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, hidden_size),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, 1),
        )

    def forward(self, hidden: Tensor) -> Tensor:
        x = hidden.detach().to(self.net[0].weight.dtype)
        return self.net(x).squeeze(-1)


def last_prompt_hidden(hidden_states: Tensor, last_prompt_index: Tensor) -> Tensor:
    """Pick ``hidden_states[b, last_prompt_index[b]]``: ``[B, T, H]``, ``[B]`` -> ``[B, H]``.

    The caller computes the index for its padding side (right padding: prompt length - 1).
    """
    rows = torch.arange(hidden_states.shape[0], device=hidden_states.device)
    return hidden_states[rows, last_prompt_index.long()]


def expectile_loss(u: Tensor, tau: float) -> Tensor:
    """Expectile regression ``|tau - 1(u < 0)| * u^2`` per element (``u = R - V``).

    tau=0.5 is half the squared error (fits the mean); tau > 0.5 weighs under-estimates more,
    so V settles above the mean (the tau-expectile). Same shape as ``u``.
    """
    if not 0.0 < tau < 1.0:
        raise ValueError(f"expectile tau must be in (0, 1), got {tau}")
    weight = torch.where(u < 0, 1.0 - tau, tau)
    return weight * u.square()


def upo_aux_loss(
    mean_logps: Tensor,
    aux_rewards: Tensor,
    values: Tensor,
    *,
    lam: float,
    max_weight: float | None = None,
) -> Tensor:
    """Advantage-weighted log-likelihood ``-exp(lam * (R - sg[V])) * mean_logps`` per example.

    mean_logps: ``[B]`` per-token mean log-prob of each response under the policy (the paper
    length-normalises). aux_rewards, values: ``[B]``. The weight is a constant for autograd: no
    gradient reaches the value head or the rewards through this term. ``max_weight`` clips the
    weight (off by default, as in the paper, whose rewards lie in [0, 1]). Returns ``[B]``.
    """
    with torch.no_grad():
        advantage = aux_rewards.detach().float() - values.detach().float()
        weight = torch.exp(lam * advantage)
        if max_weight is not None:
            weight = weight.clamp(max=max_weight)
    return -weight * mean_logps


class UPOLoss(NamedTuple):
    """Scalar terms of the UPO objective; ``total`` is the one to backpropagate."""

    total: Tensor
    pref: Tensor
    actor: Tensor  # detached; included in total only once warm-up is over
    value: Tensor
    actor_on: bool


def upo_loss(
    pref_loss: Tensor,
    mean_logps: Tensor,
    aux_rewards: Tensor,
    values: Tensor,
    *,
    step: int,
    gamma: float,
    lam: float,
    value_coef: float,
    expectile: float,
    aux_warmup_steps: int,
    max_weight: float | None,
) -> UPOLoss:
    """``pref + gamma * actor + value_coef * value``, with the actor term off while warming up.

    pref_loss: the preference loss, a scalar or per-example losses (averaged here).
    mean_logps, aux_rewards, values: ``[N]`` over the dataset responses of the batch (chosen
    and rejected alike). ``step`` is the optimiser step; the actor term joins the total from
    ``step >= aux_warmup_steps``. ``max_weight`` None: no clip. The settings and their
    defaults are ``train.loss`` (align/config/losses.py, UPOParams).
    """
    pref = pref_loss.mean() if pref_loss.dim() > 0 else pref_loss
    actor = upo_aux_loss(mean_logps, aux_rewards, values, lam=lam, max_weight=max_weight).mean()
    value = expectile_loss(aux_rewards.detach() - values, tau=expectile).mean()
    actor_on = step >= aux_warmup_steps
    total = pref + value_coef * value
    if actor_on:
        total = total + gamma * actor
    return UPOLoss(total=total, pref=pref, actor=actor.detach(), value=value, actor_on=actor_on)


@torch.no_grad()
def prompt_hidden(model, prompts: list[list[int]], pad_id: int) -> Tensor:
    """Final-layer hidden state of each prompt's last token, ``[B, H]``, without gradient
    (the value head's input): the prompts run right-padded through ``model``."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, : len(p)], attn[i, : len(p)] = torch.tensor(p), 1
    device = next(model.parameters()).device
    out = model(
        input_ids=to_device(ids, device),
        attention_mask=to_device(attn, device),
        output_hidden_states=True,
        use_cache=False,
        logits_to_keep=1,
    )
    last = to_device(torch.tensor([len(p) - 1 for p in prompts]), device)
    return last_prompt_hidden(out.hidden_states[-1], last)
