"""The gather helper: response-token log-probs by hand on a 3-token vocabulary."""

from __future__ import annotations

import math

import pytest
import torch

from align.model.logprobs import pack_rows, sequence_logps, token_logps


def test_pack_rows_pads_right_and_marks_responses() -> None:
    ids, attn, resp = pack_rows([([5, 6], [7]), ([5], [8, 9, 1])], pad_id=0)
    assert ids.tolist() == [[5, 6, 7, 0], [5, 8, 9, 1]]
    assert attn.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert resp.tolist() == [[False, False, True, False], [False, True, True, True]]


def test_token_logps_shift_by_one_and_mask_prompt_and_padding() -> None:
    # logits at position t predict token t+1. Vocabulary of 3; uniform logits except where set.
    logits = torch.zeros(1, 4, 3)
    logits[0, 1] = torch.tensor([0.0, math.log(3.0), 0.0])  # p(token 1 | pos 1) = 3/5
    logits[0, 2] = torch.tensor([math.log(4.0), 0.0, 0.0])  # p(token 0 | pos 2) = 4/6
    ids = torch.tensor([[2, 2, 1, 0]])  # prompt [2, 2], response [1, 0]
    resp = torch.tensor([[False, False, True, True]])
    per_token = token_logps(logits, ids, resp)
    # position 0 scores ids[1] (prompt: masked); 1 scores ids[2]=1; 2 scores ids[3]=0
    assert per_token[0, 0] == 0.0
    assert math.isclose(per_token[0, 1].item(), math.log(3 / 5), rel_tol=1e-6)
    assert math.isclose(per_token[0, 2].item(), math.log(4 / 6), rel_tol=1e-6)
    total, count = sequence_logps(logits, ids, resp)
    assert math.isclose(total.item(), math.log(3 / 5) + math.log(4 / 6), rel_tol=1e-6)
    assert count.tolist() == [2]
    mean, _ = sequence_logps(logits, ids, resp, reduction="mean")
    assert math.isclose(mean.item(), total.item() / 2, rel_tol=1e-6)


def test_padding_does_not_change_a_rows_log_prob() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    ids = torch.tensor([[1, 2, 3, 0, 0], [1, 2, 3, 4, 5]])
    resp = torch.tensor([[False, True, True, False, False], [False, True, True, False, False]])
    total, count = sequence_logps(logits, ids, resp)
    # rows share the scored tokens (positions 1-2) and the logits that score them
    logits[1, :2] = logits[0, :2]
    total2, _ = sequence_logps(logits, ids, resp)
    assert math.isclose(total2[0].item(), total2[1].item(), rel_tol=1e-6)
    assert count.tolist() == [2, 2] and total.shape == (2,)


def test_shared_prompt_equals_full_rows_in_value_and_gradient() -> None:
    """Each prompt once + its responses on the KV cache == every (prompt, response) row in full,
    for ragged prompts (left padding) and ragged K."""
    from align.model.loading import load_model, resolve_model
    from align.model.logprobs import model_sequence_logps, shared_prompt_logps

    model = load_model(resolve_model("tiny"), device="cpu")
    groups = [([5, 6, 7, 8], [[9, 10, 3], [11]]), ([5, 6], [[12, 13, 14, 15], [3, 4], [7]])]
    pairs = [(p, r) for p, rs in groups for r in rs]
    full, n_full = model_sequence_logps(model, pairs, pad_id=0)
    grad_full = torch.autograd.grad(full.sum(), model.model.embed_tokens.weight)[0]
    shared, n_shared = shared_prompt_logps(model, groups, pad_id=0)
    grad_shared = torch.autograd.grad(shared.sum(), model.model.embed_tokens.weight)[0]
    assert n_full.tolist() == n_shared.tolist() == [3, 1, 4, 2, 1]
    assert torch.allclose(full, shared, atol=1e-5)
    assert torch.allclose(grad_full, grad_shared, atol=1e-5)


def test_selected_logps_matches_log_softmax_in_value_and_gradient(monkeypatch) -> None:
    """The chunked softmax == gathering from a full log_softmax, across chunk boundaries
    (16-position chunks; T = 37 is not a multiple of 16), on a non-contiguous view, and passes
    gradcheck."""
    from align.model import logprobs
    from align.model.logprobs import selected_logps

    monkeypatch.setitem(logprobs.CHUNK_ELEMENTS, "cpu", 16 * 11)  # 16 positions of 11 logits
    torch.manual_seed(0)
    step = logprobs.CHUNK_ELEMENTS["cpu"] // 11
    assert step == 16 and 37 % step
    logits = (torch.randn(2, 38, 11, dtype=torch.float64) * 3).requires_grad_()
    targets = torch.randint(0, 11, (2, 37))
    weights = torch.randn(2, 37, dtype=torch.float64)
    ours = selected_logps(logits[:, :-1], targets)
    (ours * weights).sum().backward()
    grad_ours, logits.grad = logits.grad.clone(), None
    full = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, targets[..., None]).squeeze(-1)
    (full * weights).sum().backward()
    assert torch.allclose(ours, full, atol=1e-12) and ours.dtype == torch.float64
    assert torch.allclose(grad_ours, logits.grad, atol=1e-12)
    assert grad_ours[:, -1].abs().sum() == 0  # the dropped last position gets no gradient
    small = logits.detach()[:1, :3, :5].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x: selected_logps(x, targets[:1, :3] % 5), (small,))


def test_selected_logps_of_bf16_logits_is_fp32_and_matches_upcast() -> None:
    from align.model.logprobs import selected_logps

    torch.manual_seed(1)
    logits = (torch.randn(3, 20, 50) * 4).bfloat16().requires_grad_()
    targets = torch.randint(0, 50, (3, 20))
    ours = selected_logps(logits, targets)
    ours.sum().backward()
    ref = torch.log_softmax(logits.detach().float(), -1).gather(-1, targets[..., None])[..., 0]
    assert ours.dtype == torch.float32 and torch.allclose(ours, ref, atol=1e-6)
    # d/dz sum_t log p(y_t) = onehot(y_t) - softmax(z_t): each position's gradient sums to 0
    assert logits.grad.dtype == torch.bfloat16
    assert logits.grad.float().sum(-1).abs().max() < 2e-2


def _grads(fn, *tensors):
    out = fn(*tensors)
    (out * torch.linspace(-1, 1, out.numel()).view(out.shape).to(out.dtype)).sum().backward()
    return out.detach(), [t.grad.clone() for t in tensors]


@pytest.mark.parametrize("chunk", [1 << 20, 7])
def test_chunked_head_equals_the_full_projection(
    monkeypatch: pytest.MonkeyPatch, chunk: int
) -> None:
    """head_selected_logps(h, W, y) = log_softmax(h W^T)[y] with the same gradients for h and W,
    whether one chunk holds every position or each chunk a single one."""
    from align.model.logprobs import CHUNK_ELEMENTS, head_selected_logps, selected_logps

    monkeypatch.setitem(CHUNK_ELEMENTS, "cpu", chunk)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 8, generator=g, dtype=torch.float64)
    weight = torch.randn(11, 8, generator=g, dtype=torch.float64)
    targets = torch.randint(0, 11, (3, 5), generator=g)
    ours, (gh, gw) = _grads(
        lambda h, w: head_selected_logps(h, w, targets),
        hidden.clone().requires_grad_(),
        weight.clone().requires_grad_(),
    )
    plain, (ph, pw) = _grads(
        lambda h, w: selected_logps(h @ w.T, targets).float(),
        hidden.clone().requires_grad_(),
        weight.clone().requires_grad_(),
    )
    torch.testing.assert_close(ours, plain, rtol=0, atol=1e-6)
    torch.testing.assert_close(gh, ph, rtol=0, atol=1e-6)
    torch.testing.assert_close(gw, pw, rtol=0, atol=1e-6)


@pytest.mark.parametrize("path", ["full_rows", "shared_prompt"])
def test_the_model_paths_never_build_full_logits_and_match_the_plain_head(
    monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """Through the tiny model: the LM head only ever sees the one last prompt position per
    prompt (shared prompt) or nothing, and the log-probs and the weight gradients equal those
    computed from the model's own [N, T, V] logits."""
    from align.model import logprobs
    from align.model.loading import load_model, resolve_model

    model = load_model(resolve_model("tiny"), device="cpu").train()
    groups = [([5, 6, 7, 8], [[9, 10, 11], [12, 13]]), ([14, 15], [[16, 17, 18, 19]])]
    fn = {
        "full_rows": lambda: logprobs.model_sequence_logps(
            model, [(p, r) for p, rs in groups for r in rs], 0
        )[0],
        "shared_prompt": lambda: logprobs.shared_prompt_logps(model, groups, 0)[0],
    }[path]
    rows_seen: list[int] = []
    hook = model.lm_head.register_forward_hook(lambda m, i, o: rows_seen.append(o.shape[1]))
    chunked = fn()
    chunked.sum().backward()
    hook.remove()
    g_chunked = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    assert set(rows_seen) <= {0, 1}
    monkeypatch.setattr(logprobs, "_whole_head", lambda m: None)
    plain = fn()
    plain.sum().backward()
    torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(g_chunked[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
