"""Geometric-mixture sampling: the formula, its limits, the KV cache, left padding."""

from __future__ import annotations

import math

import pytest
import torch

from align.generate.mixture import geometric_mixture_logprobs, sample_mixture, sampling_logprobs
from align.model.tiny import build_tiny_model, build_tiny_tokenizer

TOK = build_tiny_tokenizer()
POLICY = build_tiny_model(TOK, seed=0).eval()
REF = build_tiny_model(TOK, seed=1).eval()
# prompts of different lengths, so the batch is left-padded
PROMPTS = [
    TOK("Tom has 7 apples", add_special_tokens=False).input_ids,
    TOK("the cat", add_special_tokens=False).input_ids,
    TOK("How many books does Ann have now? Answer", add_special_tokens=False).input_ids,
]


def _sample(beta: float, seed: int = 3, **kw):
    settings = dict(max_new_tokens=10, temperature=0.9, top_p=0.95) | kw
    return sample_mixture(
        POLICY,
        REF,
        PROMPTS,
        beta=beta,
        eos_id=TOK.eos_token_id,
        pad_id=TOK.pad_token_id,
        generators=_generators(seed),
        **settings,
    )


def _generators(seed: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed * 100 + i) for i in range(len(PROMPTS))]


@torch.no_grad()
def _last_logits(model, ids: list[int]) -> torch.Tensor:
    """Next-token logits of one unpadded sequence, no cache: the direct computation."""
    return model(torch.tensor([ids]), use_cache=False).logits[0, -1].float()


def _nucleus(logp: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Temperature then top-p written out plainly: keep the most likely tokens until their mass
    reaches top_p, renormalise."""
    probs = torch.softmax(logp / temperature, dim=-1)
    kept = torch.zeros_like(probs)
    mass = 0.0
    for i in probs.argsort(descending=True).tolist():
        kept[i] = probs[i]
        mass += probs[i].item()
        if mass >= top_p:
            break
    return kept / kept.sum()


def _sample_alone(model, seed: int, steps: int, temperature: float, top_p: float):
    """Sample each prompt alone from one model, unpadded and without a cache, with the same
    per-prompt generators: the row's `steps` uniforms drawn first, token t the first index
    whose cumulative probability exceeds uniform t times the total."""
    rows = []
    for prompt, gen in zip(PROMPTS, _generators(seed), strict=True):
        uniforms = torch.rand(steps, generator=gen).tolist()
        row: list[int] = []
        while len(row) < steps and TOK.eos_token_id not in row:
            logp = torch.log_softmax(_last_logits(model, prompt + row), -1)
            cdf = _nucleus(logp, temperature, top_p).double().cumsum(0)
            row.append(int((cdf <= uniforms[len(row)] * cdf[-1]).sum()))
        rows.append(row)
    return rows


def test_mixture_formula_by_hand() -> None:
    # policy probs (1/2, 1/4, 1/4), reference (1/4, 1/4, 1/2); beta 1/2 gives sqrt(p r)
    # = (0.35355, 0.25, 0.35355), normalised by 0.95711
    policy = torch.tensor([[math.log(2.0), 0.0, 0.0]]) + 5.0  # constants cancel
    ref = torch.tensor([[0.0, 0.0, math.log(2.0)]])
    mixed = geometric_mixture_logprobs(policy, ref, 0.5).exp()
    assert mixed[0].tolist() == pytest.approx([0.369398, 0.261204, 0.369398], abs=1e-6)
    assert geometric_mixture_logprobs(policy, ref, 0.0).exp()[0].tolist() == pytest.approx(
        [0.5, 0.25, 0.25], abs=1e-7
    )
    assert geometric_mixture_logprobs(policy, ref, 1.0).exp()[0].tolist() == pytest.approx(
        [0.25, 0.25, 0.5], abs=1e-7
    )
    with pytest.raises(ValueError, match=r"beta is a mixture weight in \[0, 1\], got 1.5"):
        geometric_mixture_logprobs(policy, ref, 1.5)


def test_top_p_keeps_the_nucleus_and_temperature_sharpens() -> None:
    logp = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    # 0.5 + 0.3 = 0.8 < 0.85, so the third token is needed; the fourth is dropped
    kept = sampling_logprobs(logp, 1.0, 0.85).exp()[0]
    assert kept.tolist() == pytest.approx([0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0], abs=1e-6)
    sharp = sampling_logprobs(logp, 0.5, 1.0).exp()[0]
    squares = torch.tensor([0.25, 0.09, 0.0225, 0.0025])
    assert sharp.tolist() == pytest.approx((squares / squares.sum()).tolist(), abs=1e-6)


@pytest.mark.parametrize(("beta", "model"), [(0.0, POLICY), (1.0, REF)])
def test_beta_0_and_1_sample_the_policy_and_the_reference_alone(beta, model) -> None:
    rollout = _sample(beta, seed=11)
    alone = _sample_alone(model, seed=11, steps=10, temperature=0.9, top_p=0.95)
    assert rollout.tokens == alone
    other = _sample_alone(REF if model is POLICY else POLICY, 11, 10, 0.9, 0.95)
    assert rollout.tokens != other  # the two models really differ: the check can fail


def test_each_step_follows_the_mixture_formula() -> None:
    """For 0 < beta < 1 the log-prob of every drawn token equals the formula computed directly:
    full unpadded forward passes of both models, no cache."""
    beta, temperature, top_p = 0.3, 0.9, 0.95
    rollout = _sample(beta)
    checked = 0
    for row, (prompt, tokens) in enumerate(zip(PROMPTS, rollout.tokens, strict=True)):
        for t, token in enumerate(tokens):
            lp = torch.log_softmax(_last_logits(POLICY, prompt + tokens[:t]), -1)
            lr = torch.log_softmax(_last_logits(REF, prompt + tokens[:t]), -1)
            mixed = torch.log_softmax((1 - beta) * lp + beta * lr, -1)
            expected = _nucleus(mixed, temperature, top_p)[token].log().item()
            assert rollout.logps[row, t].item() == pytest.approx(expected, abs=1e-4)
            checked += 1
    assert checked == sum(len(t) for t in rollout.tokens) >= 20
    assert rollout.logps[:, 0].tolist() != _sample(0.0).logps[:, 0].tolist()


def test_cached_and_uncached_decoding_draw_identical_tokens() -> None:
    cached, uncached = (
        _sample(0.5, max_new_tokens=16),
        _sample(0.5, max_new_tokens=16, use_cache=False),
    )
    assert cached.tokens == uncached.tokens
    assert cached.finished == uncached.finished
    assert torch.allclose(cached.logps, uncached.logps, atol=1e-5)
    assert all(len(t) == 16 or t[-1] == TOK.eos_token_id for t in cached.tokens)


def test_a_row_draws_the_same_tokens_whatever_its_batch() -> None:
    batched = _sample(0.5, seed=5)
    alone = sample_mixture(
        POLICY,
        REF,
        PROMPTS[1:2],
        beta=0.5,
        max_new_tokens=10,
        temperature=0.9,
        top_p=0.95,
        eos_id=TOK.eos_token_id,
        pad_id=TOK.pad_token_id,
        generators=_generators(5)[1:2],
    )
    assert alone.tokens == batched.tokens[1:2]


def test_a_response_stops_at_its_end_token() -> None:
    """The tiny model rarely draws its end token: force it with a huge logit bias on the
    reference at beta 1 and check the response ends there and is marked finished."""
    bias = torch.zeros(len(TOK))
    bias[TOK.eos_token_id] = 100.0
    handle = REF.lm_head.register_forward_hook(lambda m, i, out: out + bias)
    try:
        rollout = _sample(1.0)
    finally:
        handle.remove()
    assert rollout.tokens == [[TOK.eos_token_id]] * len(PROMPTS)
    assert rollout.finished == [True] * len(PROMPTS)


def test_each_step_draws_every_row_at_once_with_one_host_read() -> None:
    """No per-row loop inside a decoding step: 3 or 6 prompts cost the same torch calls per
    step (the rows' uniforms are drawn up front, one call per row), and a step reads one value
    back to the host (whether every row has ended)."""
    from tests.host_reads import LibraryCalls

    def calls(prompts: list[list[int]]) -> tuple[int, int, int]:
        with LibraryCalls() as seen:
            out = sample_mixture(
                POLICY,
                REF,
                prompts,
                beta=0.5,
                max_new_tokens=6,
                eos_id=-1,  # never ends: every row runs all 6 steps
                pad_id=TOK.pad_token_id,
                generators=[torch.Generator().manual_seed(i) for i in range(len(prompts))],
            )
        assert [len(t) for t in out.tokens] == [6] * len(prompts)
        return seen.by_file["generate/mixture.py"], sum(seen.reads.values()), len(prompts)

    (small, reads_small, n_small), (big, reads_big, n_big) = calls(PROMPTS), calls(PROMPTS * 2)
    assert big - small == n_big - n_small  # the up-front torch.rand per row, nothing per step
    # one `done.all()` per step, then the tokens, the finished flags and the log-probs
    assert reads_small == reads_big == 6 + 3
