"""align.train.bmc and align.rewrite.masks: hand-made diffs, weights by hand, the clip, no
gradient through the weights."""

from __future__ import annotations

import math

import pytest
import torch

from align.rewrite.masks import ENGLISH_STOPWORDS, bmc_diff_masks, stopword_token_ids
from align.train.bmc import (
    bmc_token_weights,
    bmc_weighted_logps,
    weighted_sequence_logps,
)

LN = math.log


def logs(*probs: float) -> torch.Tensor:
    return torch.tensor([LN(p) for p in probs], dtype=torch.float64)


# ------------------------------------------------------------------------------- diff masks


def test_diff_masks_replace() -> None:
    # rejected 10 11 12 13 14
    # chosen   10 21 12 13 15 16
    # opcodes: equal [10], replace 11 -> 21, equal [12 13], replace 14 -> 15 16
    chosen, rejected = [10, 21, 12, 13, 15, 16], [10, 11, 12, 13, 14]
    assert bmc_diff_masks(chosen, rejected, set()) == ([0, 1, 0, 0, 1, 1], [0, 1, 0, 0, 1])
    # 15 is a stop word: never marked, even inside a replaced span
    assert bmc_diff_masks(chosen, rejected, {15}) == ([0, 1, 0, 0, 0, 1], [0, 1, 0, 0, 1])


def test_diff_masks_insert_and_delete() -> None:
    # insert: only the chosen side has new tokens
    assert bmc_diff_masks([1, 9, 2, 3], [1, 2, 3], set()) == ([0, 1, 0, 0], [0, 0, 0])
    # delete: only the rejected side loses tokens
    assert bmc_diff_masks([1, 3], [1, 2, 3], set()) == ([0, 0], [0, 1, 0])
    # identical responses: nothing marked
    assert bmc_diff_masks([4, 5, 6], [4, 5, 6], set()) == ([0, 0, 0], [0, 0, 0])


def test_diff_masks_never_mark_stop_words() -> None:
    # rejected 7 9 7 7, chosen 8 7 8 -> insert [8], equal [7], replace 9 7 7 -> 8.
    # 7 is a stop word: the rejected 7s inside the replaced span stay 0.
    chosen, rejected = [8, 7, 8], [7, 9, 7, 7]
    assert bmc_diff_masks(chosen, rejected, set()) == ([1, 0, 1], [0, 1, 1, 1])
    assert bmc_diff_masks(chosen, rejected, {7}) == ([1, 0, 1], [0, 1, 0, 0])


# ------------------------------------------------------------------------------- stop words


class FakeTokenizer:
    """Maps known strings to ids; anything else splits into one id per character."""

    unk_token_id = None

    def __init__(self, vocab: dict[str, list[int]]) -> None:
        self.vocab = vocab

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        assert add_special_tokens is False
        return self.vocab.get(text, [1000 + ord(c) for c in text])


def test_stopword_ids_keep_single_token_forms() -> None:
    tok = FakeTokenizer(
        {
            "the": [5],
            " the": [6],
            "The": [7],
            " The": [8, 9],  # two tokens: skipped
            "cat": [11],  # not a stop word: never asked for
        }
    )
    ids = stopword_token_ids(tok, words=["the", "cat-free"])
    # "cat-free"/"Cat-free" split into characters -> multi-token -> skipped
    assert ids == {5, 6, 7}


def test_stopword_ids_capitalise_words_not_contraction_pieces() -> None:
    tok = FakeTokenizer({"a": [1], "A": [2], "t": [3], "T": [4], "don": [5], "Don": [6]})
    # "A" is the article at a sentence start; "T" is a content letter ("T-shirt").
    assert stopword_token_ids(tok, words=["a", "t", "don"]) == {1, 2, 3, 5, 6}


def test_stopword_ids_with_a_real_hf_tokenizer() -> None:
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    vocab = {"[UNK]": 0, "the": 1, "Ġthe": 2, "The": 3, "Ġand": 4, "cat": 5, "Ġcat": 6}
    core = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")
    ids = stopword_token_ids(hf, words=["the", "and"])
    # "the" -> 1, " the" -> 2, "The" -> 3, " and" -> 4; "and", "And", " The", " And" are
    # unknown -> [UNK], which is one token but not a stop word.
    assert ids == {1, 2, 3, 4}


def test_stopword_list_is_lowercase_function_words() -> None:
    assert len(ENGLISH_STOPWORDS) == len(set(ENGLISH_STOPWORDS)) > 100
    assert all(w == w.lower() and w.isalpha() for w in ENGLISH_STOPWORDS)
    assert {"the", "a", "and", "of", "is", "not"} <= set(ENGLISH_STOPWORDS)


# ------------------------------------------------------------------------------- weights


def test_token_weights_by_hand() -> None:
    # p = [1, 1/2, 1/4, 1/100] -> 1/p = [1, 2, 4, 100]; delta 3 clips to [1, 2, 3, 3]
    token_logps = logs(1.0, 0.5, 0.25, 0.01)
    all_changed = torch.ones(4, dtype=torch.bool)
    weights = bmc_token_weights(token_logps, all_changed, delta=3.0)
    torch.testing.assert_close(weights, torch.tensor([2.0, 3.0, 4.0, 4.0], dtype=torch.float64))
    # unchanged tokens keep weight 1
    some = torch.tensor([0, 1, 0, 1])
    weights = bmc_token_weights(token_logps, some, delta=3.0)
    torch.testing.assert_close(weights, torch.tensor([1.0, 3.0, 1.0, 4.0], dtype=torch.float64))


def test_token_weights_clip_at_delta_for_extreme_logps() -> None:
    # 1/p = e^10000 overflows to inf; the clip still gives exactly 1 + delta
    token_logps = torch.tensor([[-1e4, -80.0, 0.0]], dtype=torch.bfloat16)
    weights = bmc_token_weights(token_logps, torch.ones(1, 3), delta=2.5)
    torch.testing.assert_close(weights, torch.tensor([[3.5, 3.5, 2.0]]))
    # garbage in unchanged (e.g. padding) positions does not matter
    token_logps = torch.tensor([float("nan"), -1.0])
    weights = bmc_token_weights(token_logps, torch.tensor([False, True]), delta=3.0)
    torch.testing.assert_close(weights, torch.tensor([1.0, 1.0 + math.e]))  # 1/p = e < 3
    with pytest.raises(ValueError, match="delta must be >= 1"):
        bmc_token_weights(token_logps, torch.tensor([False, True]), delta=0.5)


def test_no_gradient_through_the_weights() -> None:
    # d/dl sum(w * l) must be w (the weight is a constant), not w + l * dw/dl.
    token_logps = logs(0.5, 0.25, 0.8).requires_grad_(True)
    diff = torch.tensor([1, 1, 0])
    mask = torch.tensor([True, True, True])
    weights = bmc_token_weights(token_logps, diff, delta=10.0)
    assert not weights.requires_grad
    weighted_sequence_logps(token_logps, weights, mask).backward()
    torch.testing.assert_close(token_logps.grad, torch.tensor([3.0, 5.0, 1.0], dtype=torch.float64))


def test_weighted_sequence_logps_masks_padding() -> None:
    # [B=1, K=2, T=3]: second sequence has one padded position holding NaN
    token_logps = torch.tensor([[[-1.0, -2.0, -3.0], [-4.0, -5.0, float("nan")]]])
    weights = torch.tensor([[[1.0, 2.0, 1.0], [3.0, 1.0, 1.0]]])
    mask = torch.tensor([[[True, True, True], [True, True, False]]])
    # -1 - 4 - 3 = -8 ;  -12 - 5 = -17
    out = weighted_sequence_logps(token_logps, weights, mask)
    torch.testing.assert_close(out, torch.tensor([[-8.0, -17.0]]))
    torch.testing.assert_close(
        weighted_sequence_logps(token_logps, None, mask), torch.tensor([[-6.0, -9.0]])
    )


def test_ref_weights_option() -> None:
    # policy p = [1/2, 1/4], reference p = [1/4, 1/2]; only token 1 changed; delta 10.
    # policy weights [1, 1 + 4] -> ln(1/2) + 5 ln(1/4)
    # "reference": ref weights [1, 1 + 2] -> ln(1/4) + 3 ln(1/2)
    # "policy":    ref weights [1, 5]     -> ln(1/4) + 5 ln(1/2)
    policy, ref = logs(0.5, 0.25), logs(0.25, 0.5)
    diff, mask = torch.tensor([0, 1]), torch.tensor([True, True])
    pol_seq, ref_seq = bmc_weighted_logps(policy, ref, diff, mask, delta=10.0)
    assert abs(pol_seq.item() - (LN(0.5) + 5 * LN(0.25))) < 1e-12
    assert abs(ref_seq.item() - (LN(0.25) + 3 * LN(0.5))) < 1e-12
    _, ref_seq = bmc_weighted_logps(policy, ref, diff, mask, delta=10.0, ref_weights="policy")
    assert abs(ref_seq.item() - (LN(0.25) + 5 * LN(0.5))) < 1e-12
    with pytest.raises(ValueError, match="ref_weights"):
        bmc_weighted_logps(policy, ref, diff, mask, delta=10.0, ref_weights="mean")  # type: ignore[arg-type]


def test_nothing_changed_gives_plain_sums() -> None:
    """With an empty diff mask every weight is 1: BMC pair losses are plain pair losses."""
    g = torch.Generator().manual_seed(0)
    shape = (3, 2, 5)  # [B, chosen/rejected, T]
    policy = torch.log(torch.rand(shape, generator=g, dtype=torch.float64))
    ref = torch.log(torch.rand(shape, generator=g, dtype=torch.float64))
    mask = torch.ones(shape, dtype=torch.bool)
    nothing = torch.zeros(shape, dtype=torch.bool)
    pol_seq, ref_seq = bmc_weighted_logps(policy, ref, nothing, mask, delta=2.0)
    torch.testing.assert_close(pol_seq, policy.sum(-1))
    torch.testing.assert_close(ref_seq, ref.sum(-1))
    # a changed token raises the chosen sum's weight on it, so the sums differ
    changed = nothing.clone()
    changed[:, 0, 2] = True
    pol_w, _ = bmc_weighted_logps(policy, ref, changed, mask, delta=2.0)
    assert not torch.allclose(pol_w[:, 0], policy[:, 0].sum(-1))
