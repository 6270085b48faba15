"""Sampling from the token-level geometric mixture of the policy and the reference
(the Nash-MD mixture policy of Munos et al., arXiv 2312.00886).

At every decoding step the next-token distribution is

    log pi_beta(. | x, y<t) = log_softmax((1 - beta) * log pi_theta(. | x, y<t)
                                         + beta * log pi_ref(. | x, y<t))

and the sampling temperature and top-p act on it after the mixing. beta = 0 samples the policy,
beta = 1 the reference (the other model is then not run at all). Each model keeps its own KV
cache, so a step feeds one new token through each model: the cost is linear in the response
length, where a cache-less mixture wrapper re-reads the whole prefix every step (quadratic).
`use_cache=False` is that wrapper, kept for tests and the benchmark. No gradient flows.

Prompts are batched with left padding. Each row draws from its own `torch.Generator`, so a
row's tokens depend only on its prompt and its generator, never on the rest of the batch: a
caller that seeds the generators from its step index (or the prompt's index) redraws exactly
the same tokens after a resume, however the prompts are grouped. Every row takes its
`max_new_tokens` uniforms from its generator up front; each step then draws all rows at once
by inverting their cumulative distributions (no per-row loop), and the only host sync of a
step is the check whether every row has ended.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers import PreTrainedModel

from align.core.transfer import to_device
from align.model.cache import cache_kwargs, output_cache
from align.model.logprobs import left_pad


def geometric_mixture_logprobs(policy_logits: Tensor, ref_logits: Tensor, beta: float) -> Tensor:
    """Per-token geometric mixture: ``log_softmax((1-beta) log_softmax(policy) + beta
    log_softmax(ref))`` over the last (vocabulary) dimension.

    policy_logits, ref_logits: ``[..., V]`` raw logits (any per-position constant cancels).
    Returns float32 (float64 stays float64) log-probabilities ``[..., V]``. beta=0 gives the
    policy's log-probs, beta=1 the reference's."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta is a mixture weight in [0, 1], got {beta}")
    dtype = torch.float64 if policy_logits.dtype == torch.float64 else torch.float32
    log_p = torch.log_softmax(policy_logits.to(dtype), dim=-1)
    log_r = torch.log_softmax(ref_logits.to(dtype), dim=-1)
    return torch.log_softmax((1.0 - beta) * log_p + beta * log_r, dim=-1)


def sampling_logprobs(logprobs: Tensor, temperature: float, top_p: float) -> Tensor:
    """The distribution a token is drawn from: ``log_softmax(logprobs / temperature)`` with the
    tail outside the top-p nucleus set to -inf (the most likely token always stays).

    logprobs: ``[N, V]``. Returns ``[N, V]`` log-probabilities."""
    scaled = torch.log_softmax(logprobs / temperature, dim=-1)
    if top_p >= 1.0:
        return scaled
    sorted_lp, order = scaled.sort(dim=-1, descending=True)
    mass_before = sorted_lp.exp().cumsum(-1) - sorted_lp.exp()  # nucleus mass before each token
    drop = torch.zeros_like(scaled, dtype=torch.bool).scatter(-1, order, mass_before >= top_p)
    return torch.log_softmax(scaled.masked_fill(drop, float("-inf")), dim=-1)


class _Stream:
    """One model decoding a left-padded batch: the next-token logits after each new token.

    With the cache each step runs one token; without it the whole sequence runs again."""

    def __init__(self, model: PreTrainedModel, ids: Tensor, mask: Tensor, use_cache: bool):
        self.model, self.ids, self.mask, self.use_cache = model, ids, mask, use_cache
        self.past = None

    def _forward(self, ids: Tensor, positions: Tensor) -> Tensor:
        out = self.model(
            input_ids=ids,
            attention_mask=self.mask,
            position_ids=positions,
            use_cache=self.use_cache,
            logits_to_keep=1,
            **({} if self.past is None else cache_kwargs(self.past)),
        )
        self.past = output_cache(out) if self.use_cache else None
        return out.logits[:, -1].float()

    def first(self) -> Tensor:
        return self._forward(self.ids, (self.mask.cumsum(-1) - 1).clamp_min(0))

    def advance(self, token: Tensor) -> Tensor:
        """Append `token` [N] and return the logits [N, V] for the position after it."""
        position = self.mask.sum(-1, keepdim=True)  # real tokens so far: the new one's position
        self.mask = torch.cat([self.mask, torch.ones_like(position)], dim=1)
        self.ids = torch.cat([self.ids, token[:, None]], dim=1)
        if self.use_cache:
            return self._forward(token[:, None], position)
        return self._forward(self.ids, (self.mask.cumsum(-1) - 1).clamp_min(0))


def inverse_cdf_draw(logprobs: Tensor, uniforms: Tensor) -> Tensor:
    """One token per row drawn by inverting its cumulative distribution at its own uniform:
    the first index whose cumulative probability exceeds u * total. logprobs [N, V] (tokens
    at -inf are never drawn), uniforms [N] in [0, 1). Returns token ids [N]."""
    cdf = logprobs.exp().double().cumsum(-1)
    target = uniforms.double()[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, target, right=True).squeeze(1).clamp(max=cdf.shape[-1] - 1)


@dataclass
class Rollout:
    """Sampled responses: token ids (the end-of-turn token included where one was drawn),
    whether each ended on its own, and the log-prob of each drawn token under the distribution
    it was drawn from, ``[N, T]`` (0 after a response ended)."""

    tokens: list[list[int]]
    finished: list[bool]
    logps: Tensor


@torch.no_grad()
def sample_mixture(
    policy: PreTrainedModel,
    ref: PreTrainedModel,
    prompts: list[list[int]],
    *,
    beta: float,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    generators: list[torch.Generator],
    temperature: float = 1.0,
    top_p: float = 1.0,
    use_cache: bool = True,
) -> Rollout:
    """Sample one response per prompt (token ids ``[N][<= max_new_tokens]``) from the geometric
    mixture with weight `beta` on the reference; see the module docstring for the formula.

    `generators` (one per prompt, on the models' device): every row takes max_new_tokens
    uniforms from its own (`inverse_cdf_draw` uses one a step, also after the row has ended),
    so its draws depend on nothing else in the batch."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if len(generators) != len(prompts):
        raise ValueError(f"{len(generators)} generators for {len(prompts)} prompts; pass one each")
    device = policy.device
    ids, mask = (to_device(t, device) for t in left_pad(prompts, pad_id))
    uniforms = torch.stack(
        [torch.rand(max_new_tokens, generator=g, device=g.device) for g in generators]
    ).to(device)  # [N, max_new_tokens]
    weighted = [(policy, 1.0 - beta), (ref, beta)]  # a weight-0 model is not run
    streams = [_Stream(m, ids, mask, use_cache) for m, w in weighted if w > 0]
    logits = [s.first() for s in streams]
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    tokens, logps = [], []
    for t in range(max_new_tokens):
        if len(logits) == 1:
            mixed = torch.log_softmax(logits[0], dim=-1)
        else:
            mixed = geometric_mixture_logprobs(logits[0], logits[1], beta)
        dist = sampling_logprobs(mixed, temperature, top_p)
        token = torch.where(done, pad_id, inverse_cdf_draw(dist, uniforms[:, t]))
        logps.append(torch.where(done, 0.0, dist.gather(-1, token[:, None]).squeeze(-1)))
        tokens.append(token)
        done = done | (token == eos_id)
        if done.all():  # the step's one host sync
            break
        logits = [s.advance(token) for s in streams]
    drawn = torch.stack(tokens, dim=1).tolist()
    out = []
    for row in drawn:
        end = row.index(eos_id) + 1 if eos_id in row else len(row)
        out.append(row[:end])
    return Rollout(out, done.tolist(), torch.stack(logps, dim=1).cpu())
