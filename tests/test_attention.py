"""`train.attention: matmul` (align/attention.py) against torch's scaled-dot-product attention,
and training with it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from align.model.attention import _GroupedAttention, matmul_attention


class _Module(torch.nn.Module):
    """What transformers passes as `module`: only its presence matters here."""


def _qkv(b: int, h: int, hk: int, t: int, s: int, d: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    make = lambda *shape: torch.randn(*shape, generator=g, dtype=dtype)  # noqa: E731
    return make(b, h, t, d), make(b, hk, s, d), make(b, hk, s, d)


def _ref(q, k, v, mask, scale):
    """torch SDPA on keys/values repeated per query head -> [B, T, H, D]."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    return out.transpose(1, 2)


def test_equals_sdpa_with_padding_and_grouped_heads() -> None:
    # 6 query heads on 2 key/value heads; row 1 has two padded keys at the front (left padding)
    q, k, v = _qkv(b=2, h=6, hk=2, t=3, s=5, d=4)
    mask = torch.ones(2, 1, 3, 5, dtype=torch.bool).tril(2)
    mask[1, :, :, :2] = False
    out, weights = matmul_attention(_Module(), q, k, v, mask, scaling=0.5)
    assert weights is None and out.shape == (2, 3, 6, 4)
    torch.testing.assert_close(out, _ref(q, k, v, mask, 0.5))


def test_no_mask_is_causal_aligned_to_the_last_key() -> None:
    # 2 new queries on 5 keys (3 cached): query i sees keys 0 .. 3 + i
    q, k, v = _qkv(b=1, h=2, hk=1, t=2, s=5, d=4)
    expected = _ref(q, k, v, torch.ones(2, 5, dtype=torch.bool).tril(3), 4**-0.5)
    torch.testing.assert_close(matmul_attention(_Module(), q, k, v, None)[0], expected)


def test_gradients_match_finite_differences_with_a_fully_masked_row() -> None:
    q, k, v = _qkv(b=1, h=4, hk=2, t=3, s=4, d=2)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    keep = torch.ones(1, 1, 1, 3, 4, dtype=torch.bool).tril(1)
    keep[..., 0, :] = False  # a padded query that sees no key: output 0, no gradient
    grouped = q.reshape(1, 2, 6, 2)
    assert torch.autograd.gradcheck(
        lambda q_, k_, v_: _GroupedAttention.apply(q_.reshape(1, 2, 6, 2), k_, v_, keep, 0.7),
        (q, k, v),
    )
    out = _GroupedAttention.apply(grouped, k, v, keep, 0.7).reshape(1, 4, 3, 2)
    assert torch.isfinite(out).all() and (out[:, :, 0] == 0).all() and (out[:, :, 1:] != 0).all()


def test_bf16_gives_bf16_output_close_to_fp64() -> None:
    q, k, v = _qkv(b=2, h=4, hk=2, t=8, s=8, d=16)
    mask = torch.ones(8, 8, dtype=torch.bool).tril()
    exact = _ref(q, k, v, mask, 0.25)
    low = matmul_attention(_Module(), q.bfloat16(), k.bfloat16(), v.bfloat16(), None, scaling=0.25)
    assert low[0].dtype == torch.bfloat16
    torch.testing.assert_close(low[0].double(), exact, atol=3e-2, rtol=3e-2)


def test_dropout_is_refused_with_the_setting_to_use() -> None:
    q, k, v = _qkv(b=1, h=2, hk=1, t=2, s=2, d=4)
    with pytest.raises(ValueError, match=r"train\.attention: sdpa"):
        matmul_attention(_Module(), q, k, v, None, dropout=0.1)


def test_model_log_probs_and_gradients_equal_sdpa() -> None:
    """The tiny model (4 query heads on 2 key/value heads) through the shared-prompt path, with
    ragged prompts (left padding) and ragged responses: same log-probs and weight gradients."""
    from align.model.loading import load_model, resolve_model
    from align.model.logprobs import shared_prompt_token_logps

    groups = [([5, 6, 7], [[8, 9, 10, 11], [12, 13]]), ([14, 15, 16, 17, 18], [[19], [20, 21]])]
    results = {}
    for attention in ("sdpa", "matmul"):
        torch.manual_seed(0)
        model = load_model(resolve_model("tiny"), attention=attention, device="cpu").train()
        logps, _ = shared_prompt_token_logps(model, groups, pad_id=0)
        logps.sum().backward()
        grads = [p.grad for p in model.model.layers[0].self_attn.parameters()]
        results[attention] = (logps.detach(), grads)
    (lp_a, g_a), (lp_b, g_b) = results["sdpa"], results["matmul"]
    torch.testing.assert_close(lp_b, lp_a, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_a, g_b, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)


def test_decoding_on_a_kv_cache_matches_sdpa() -> None:
    """Online training samples from the trained policy: one query at a time on a KV cache,
    left-padded prompts of different lengths; every step's logits agree."""
    from align.model.loading import load_model, resolve_model
    from align.model.logprobs import left_pad

    ids, mask = left_pad([[5, 6, 7, 8, 9], [10, 11]], pad_id=0)
    scores = {}
    for attention in ("sdpa", "matmul"):
        model = load_model(resolve_model("tiny"), attention=attention, device="cpu")
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
        scores[attention] = torch.stack(out.logits)  # [steps, batch, vocab]
    assert scores["matmul"].shape[0] == 6
    torch.testing.assert_close(scores["matmul"], scores["sdpa"], atol=1e-5, rtol=1e-5)


def test_training_with_matmul_attention_follows_the_sdpa_trajectory(project) -> None:
    """The offline trainer (quickstart config, tiny model, fp32): 4 NCA steps with each attention
    give the same per-step losses and final weights, and both actually train."""
    from pathlib import Path

    from safetensors.torch import load_file

    from align.model.loading import resolve_model
    from align.train.trainer import Trainer
    from tests.test_trainer import _cfg, _log, _records

    logs, weights = {}, {}
    for attention in ("sdpa", "matmul"):
        cfg = _cfg(
            f"train.attention={attention}",
            "train.precision=fp32",
            "train.learning_rate=3e-3",
            "train.max_steps=4",
            "train.batch_size=3",
        )
        out = project / attention
        Trainer(cfg, Path(resolve_model("tiny")), _records(cfg), out, "h").train()
        logs[attention] = [r["loss"] for r in _log(out)]
        weights[attention] = load_file(out / "model" / "model.safetensors")
    assert logs["matmul"] == pytest.approx(logs["sdpa"], abs=1e-5)
    assert logs["sdpa"][-1] < logs["sdpa"][0] - 0.1
    a, b = weights["sdpa"], weights["matmul"]
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
