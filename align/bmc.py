"""BMC token weights: confidence-weighted DPO on the tokens a targeted rewrite changed.

Jiang et al., "Bridging and Modeling Correlations in Pairwise Data for Direct Preference
Optimization", arXiv 2408.07471 (ICLR 2025); official code YJiangcm/BMC.

Pipeline, with the cost where it belongs:

1. Once per dataset: ``stopword_token_ids(tokenizer)``, then ``bmc_diff_masks`` for every pair
   (a ``difflib`` diff over token ids). Store the masks with the tokenized data.
2. Every step: ``bmc_weighted_logps`` turns per-token log-probs and the diff masks into weighted
   sequence log-probs, and ``bmc_dpo_loss`` (or any pair loss) consumes them.

A changed token t gets weight ``1 + min(1 / p_t, delta)`` (``p_t`` the model's probability of
the token, no gradient through it); every other token keeps weight 1.

``ref_weights`` decides whose confidence weights the reference term:

- ``"reference"`` (default, the official code): each model's log-probs are weighted by that
  model's own confidence, because its forward pass computes the weights from whichever model it
  runs.
- ``"policy"`` (the paper's text): the reference log-probs are weighted by the policy's
  confidence too. The reference term carries no gradient, so the choice only shifts the margin
  inside the sigmoid.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from align.losses import dpo_loss

__all__ = [
    "ENGLISH_STOPWORDS",
    "bmc_batch_logps",
    "bmc_diff_masks",
    "bmc_dpo_loss",
    "bmc_token_weights",
    "bmc_weighted_logps",
    "pad_rows",
    "stopword_token_ids",
    "weighted_sequence_logps",
]

# English function words: pronouns, determiners, prepositions, conjunctions, auxiliaries and
# the pieces tokenizers split contractions into. Edits confined to these rarely decide which
# response is better, so they are never up-weighted. Negations ("no", "not", "nor") stay in
# the list because the paper's filter (NLTK's list) has them.
ENGLISH_STOPWORDS: tuple[str, ...] = (
    # pronouns, possessives, demonstratives, interrogatives
    "i", "me", "my", "mine", "myself", "we", "us", "our", "ours", "ourselves",
    "you", "your", "yours", "yourself", "yourselves", "he", "him", "his", "himself",
    "she", "her", "hers", "herself", "it", "its", "itself", "they", "them", "their",
    "theirs", "themselves", "this", "that", "these", "those", "what", "which", "who",
    "whom", "whose",
    # auxiliaries, copulas, modals
    "am", "is", "are", "was", "were", "be", "been", "being", "have", "has", "had",
    "having", "do", "does", "did", "doing", "will", "would", "shall", "should", "can",
    "could", "may", "might", "must",
    # articles, determiners, quantifiers, negation
    "a", "an", "the", "some", "any", "each", "every", "either", "neither", "few",
    "many", "much", "more", "most", "other", "another", "such", "both", "all", "own",
    "same", "no", "nor", "not", "only",
    # conjunctions and subordinators
    "and", "but", "or", "if", "because", "as", "since", "until", "unless", "while",
    "whether", "although", "though", "so", "than", "then", "yet", "once",
    # prepositions and particles
    "of", "at", "by", "for", "with", "without", "within", "about", "against", "among",
    "between", "into", "onto", "upon", "through", "during", "before", "after", "above",
    "below", "to", "from", "up", "down", "in", "out", "on", "off", "over", "under",
    # adverbs of place, time and degree
    "here", "there", "when", "where", "why", "how", "again", "further", "also", "very",
    "too", "just", "now",
    # contraction pieces as tokenizers split them ("don't" -> "don" + "'" + "t")
    "s", "t", "d", "ll", "m", "re", "ve", "don", "doesn", "didn", "isn", "aren",
    "wasn", "weren", "hasn", "haven", "hadn", "won", "wouldn", "couldn", "shouldn",
)  # fmt: skip


def stopword_token_ids(tokenizer: Any, words: Iterable[str] = ENGLISH_STOPWORDS) -> set[int]:
    """Token ids of the stop words (and their capitalised forms) that are a single token.

    The paper's filter, with our own word list in place of NLTK's (no NLTK dependency).

    Each form is tried with and without a leading space, since BPE vocabularies hold " the" and
    "the" as different tokens. Multi-token words are skipped: a piece of a word cannot be told
    apart from the same piece inside a content word. ``tokenizer`` needs
    ``encode(text, add_special_tokens=False)`` returning ids (HF tokenizers) or an object with
    ``.ids`` (``tokenizers.Tokenizer``); its ``unk_token_id``, if any, is never returned.
    """
    forms = set(words)
    # Capitalise words, not contraction pieces: "A" and "I" are stop words, "T" and "S" are not.
    forms |= {w.capitalize() for w in forms if len(w) > 1 or w in ("a", "i")}
    # A word the vocabulary lacks may come back as the lone unknown token; that is not a match.
    unknown = getattr(tokenizer, "unk_token_id", None)
    ids: set[int] = set()
    for form in sorted(forms):
        for text in (form, " " + form):
            encoded = tokenizer.encode(text, add_special_tokens=False)
            token_ids = list(getattr(encoded, "ids", encoded))
            if len(token_ids) == 1 and token_ids[0] != unknown:
                ids.add(int(token_ids[0]))
    return ids


def bmc_diff_masks(
    chosen_ids: Sequence[int],
    rejected_ids: Sequence[int],
    stopword_ids: set[int],
    *,
    autojunk: bool = True,
) -> tuple[list[int], list[int]]:
    """Mark the tokens that differ between the pseudo-winner and the loser.

    ``difflib.SequenceMatcher(a=rejected_ids, b=chosen_ids)``: chosen positions inside
    ``replace``/``insert`` opcodes and rejected positions inside ``replace``/``delete`` opcodes
    get 1, except stop-word ids, which always get 0. Returns ``(chosen_mask, rejected_mask)``,
    lists of 0/1 as long as the inputs. Pass the response ids whose per-token log-probs the
    masks will weight. ``autojunk=True`` is difflib's default, which the official code keeps
    (for sequences of 200+ tokens very frequent ids cannot anchor a match).
    """
    matcher = difflib.SequenceMatcher(None, list(rejected_ids), list(chosen_ids), autojunk=autojunk)
    chosen_mask = [0] * len(chosen_ids)
    rejected_mask = [0] * len(rejected_ids)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag in ("replace", "delete"):
            for i in range(i1, i2):
                rejected_mask[i] = int(rejected_ids[i] not in stopword_ids)
        if tag in ("replace", "insert"):
            for j in range(j1, j2):
                chosen_mask[j] = int(chosen_ids[j] not in stopword_ids)
    return chosen_mask, rejected_mask


def bmc_token_weights(token_logps: Tensor, diff_mask: Tensor, *, delta: float) -> Tensor:
    """Per-token weights ``1 + m_t * min(1 / p_t, delta)``, computed without gradient.

    token_logps: ``[..., T]`` log p_t of the response tokens (``[B, T]`` or ``[B, K, T]``);
    diff_mask: same shape, 0/1 or bool. ``delta >= 1`` caps the weight of a changed token at
    ``1 + delta``; an unchanged token has weight 1, a changed one at least 2. Returns a tensor
    of the same shape (float32 for half-precision inputs) that never requires grad.
    """
    if delta < 1:
        raise ValueError(f"delta must be >= 1 (changed tokens weigh at least 2), got {delta}")
    if token_logps.shape != diff_mask.shape:
        raise ValueError(
            f"diff_mask shape {tuple(diff_mask.shape)} != token_logps {tuple(token_logps.shape)}"
        )
    with torch.no_grad():
        logps = token_logps.detach()
        if logps.dtype in (torch.float16, torch.bfloat16):
            logps = logps.float()
        inverse_p = torch.exp(-logps).clamp(max=delta)  # exp overflow -> inf -> clipped to delta
        return torch.where(diff_mask.bool(), 1.0 + inverse_p, 1.0)


def weighted_sequence_logps(token_logps: Tensor, weights: Tensor | None, mask: Tensor) -> Tensor:
    """``sum_t mask_t * weights_t * token_logps_t`` over the last dimension.

    token_logps, weights, mask: ``[..., T]`` (weights None means all 1; mask marks completion
    tokens). Returns ``[...]``. Padding never reaches the sum, even if it holds NaN.
    """
    terms = token_logps if weights is None else token_logps * weights
    return torch.where(mask.bool(), terms, 0.0).sum(-1)


def bmc_weighted_logps(
    policy_token_logps: Tensor,
    ref_token_logps: Tensor,
    diff_mask: Tensor,
    mask: Tensor,
    *,
    delta: float,
    ref_weights: Literal["policy", "reference"] = "reference",
) -> tuple[Tensor, Tensor]:
    """BMC-weighted sequence log-probs of the policy and of the reference.

    All inputs ``[..., T]`` (mask: completion tokens, diff_mask: from ``bmc_diff_masks``).
    Returns ``(policy_seq, ref_seq)``, each ``[...]``. The policy term is weighted by the
    policy's confidence; the reference term by ``ref_weights`` (see the module docstring).
    Any pair loss can consume the result; the official code length-normalises after
    weighting for IPO.
    """
    if ref_weights not in ("policy", "reference"):
        raise ValueError(f"ref_weights must be 'policy' or 'reference', got {ref_weights!r}")
    policy_w = bmc_token_weights(policy_token_logps, diff_mask, delta=delta)
    if ref_weights == "policy":
        ref_w = policy_w
    else:
        ref_w = bmc_token_weights(ref_token_logps, diff_mask, delta=delta)
    return (
        weighted_sequence_logps(policy_token_logps, policy_w, mask),
        weighted_sequence_logps(ref_token_logps, ref_w, mask),
    )


def bmc_dpo_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    beta: float,
    label: float | Tensor = 1.0,
) -> Tensor:
    """DPO-BMC: ``dpo_loss`` on BMC-weighted sequence log-probs.

    ``loss = -log sigmoid(beta * [(sum lambda^pi l^pi - sum lambda^ref l^ref)_w - (...)_l])``.
    Inputs ``[B]``, the outputs of ``bmc_weighted_logps`` for the pseudo-winner and the loser.
    Returns ``[B]``. Jiang et al., arXiv 2408.07471, Eqs. 5-7.
    """
    return dpo_loss(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta=beta, label=label
    )


def pad_rows(rows: Sequence[Sequence[float]], width: int, like: Tensor) -> Tensor:
    """Right-pad per-response lists (diff masks, per-token log-probs) into ``[N, width]`` with
    zeros, on ``like``'s device in float64."""
    out = torch.zeros(len(rows), width, dtype=torch.float64, device=like.device)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.float64)
    return out


def bmc_batch_logps(
    token_logps: Tensor,
    response_mask: Tensor,
    diff_masks: Sequence[Sequence[int]],
    ref_token_logps: Sequence[Sequence[float]],
    *,
    delta: float,
    ref_weights: Literal["policy", "reference"] = "reference",
) -> tuple[Tensor, Tensor]:
    """The trainer's BMC step: stored diff masks and reference per-token log-probs (one list
    per response, as the rewrite stage wrote them) plus the policy's per-token log-probs
    ``[N, R]`` and response mask ``[N, R]`` -> weighted sequence log-probs
    ``(policy [N], reference [N])`` via ``bmc_weighted_logps``."""
    width = token_logps.shape[1]
    masks = pad_rows(diff_masks, width, token_logps)
    ref = pad_rows(ref_token_logps, width, token_logps)
    return bmc_weighted_logps(
        token_logps.double(), ref, masks, response_mask, delta=delta, ref_weights=ref_weights
    )
